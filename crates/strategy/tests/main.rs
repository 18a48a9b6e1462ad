//! The strategy engine's tests through its public API on real files.
//!
//! One test binary with a module per subject: each test binary links the whole crate and its
//! dependencies, and one link is cheaper than one per file.
mod engine;
mod linking;
