//! An NLU bundle's manifest (what `ModelAdmin.ReloadModel` and start-up read first).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("manifest.json"), data).expect("write");
    let _ = nudge_model::Manifest::read(dir.path());
});
