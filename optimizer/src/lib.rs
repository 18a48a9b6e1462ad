//! The optimizer: outcomes in, better policies out.
pub mod reward;
