//! The optimizer: outcomes in, better policies out.
pub mod ledger;
pub mod learn;
pub mod ope;
pub mod replay;
pub mod reward;
pub mod service;
