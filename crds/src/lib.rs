//! CRD types for nftpol. The admin network policy CRDs
//! (AdminNetworkPolicy / BaselineAdminNetworkPolicy) land here in a later
//! issue; the crate exists now so the workspace layout is final.
