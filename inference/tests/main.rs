//! The serving crate's tests through its real interfaces: a server in process on loopback ports,
//! gRPC clients, real files.
//!
//! One test binary with a module per subject, for the reason the root crate's end-to-end tests
//! give (each binary links the whole service); each test enters its module's
//! [`nudge_testkit::suite`], so modules run one after another as separate binaries did.
mod common;

mod admin;
mod conversations;
mod decide;
mod grpc;
mod reload;
