//! How long-running jobs report progress without knowing who watches: the CLI draws a bar,
//! tests and libraries pass [`Silent`].

/// Receives progress from training, fine-tuning and embedding passes. Every method has a
/// do-nothing default.
pub trait Progress: Sync {
    /// A phase begins (`embedding`, `training`) with `total` units of work.
    fn start(&self, _phase: &str, _total: u64) {}
    /// `n` more units are done.
    fn advance(&self, _n: u64) {}
    /// A short status (current epoch and loss) for the live display.
    fn status(&self, _message: &str) {}
    /// A line worth keeping in the output or the logs (one per epoch).
    fn line(&self, _line: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
