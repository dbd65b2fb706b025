//! Kernel tests (root only), filled in below.
