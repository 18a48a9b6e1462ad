//! The optimizer: outcomes in, better policies out.
pub mod learn;
pub mod ledger;
pub mod neural;
pub mod obd;
pub mod ope;
pub mod replay;
pub mod reward;
pub mod service;
