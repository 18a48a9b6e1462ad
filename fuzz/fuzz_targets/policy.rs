//! A pushed policy version (manifest JSON and a safetensors weights file, as `LoadPolicy` and
//! the cluster's artifact store carry them): the input is the manifest, a NUL, the weights.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (manifest, weights) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let files: nudge_policy::PolicyFiles = [(nudge_policy::version::WEIGHTS.to_string(), weights.to_vec())].into();
    if let Ok(pv) = nudge_policy::PolicyVersion::from_parts(manifest, &files) {
        // Whatever validates must encode again.
        pv.encode().expect("a valid version encodes");
    }
});
