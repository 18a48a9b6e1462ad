//! The end-to-end tests: real processes, real files, gRPC on loopback, the shipped default model.
//!
//! They are one test binary with a module per subject, not a binary per file: every binary links
//! the whole service (about 150 MB with line tables), and on CI's two cores building eleven of
//! them took 4 min 27 s against 1 min 20 s for this one.
//!
//! One binary would also run every test beside every other, and these tests start servers, NATS,
//! Chromium and training runs whose timeouts assume the machine is theirs. So each test first
//! enters its module's suite ([`nudge_testkit::suite`]): a module's tests run in parallel with
//! each other, as they did in their own binary, and never beside another module's.
//!
//! The GPU machine runs the `gpu` module alone (`benches/gpu.sh`: `e2e-test gpu::`).
#[path = "../inference/tests/common/mod.rs"]
mod common;
#[path = "support/cluster.rs"]
mod support;

mod cli;
mod cluster;
mod console;
mod default_model;
mod finetune;
mod gpu;
mod learning_loop;
mod obd;
mod rl;
mod shop;
mod train;
