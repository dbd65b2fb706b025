//! Reading manifest files and directories from disk (the I/O edge in front
//! of `policy_compiler::manifest`, which parses text).
