//! The catalog file operators edit (TOML naming a products CSV).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("catalog.toml");
    std::fs::write(&path, data).expect("write");
    let _ = nudge_strategy::Catalog::load(&path);
});
