//! Times one encoder pass of the default model for a few batch shapes (a developer's probe;
//! the service figures come from `cargo bench --bench load`).
fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/bundles/default");
    let m = nudge_inference::NluModel::load_cpu(&dir).expect("default bundle");
    let ids = m
        .tokenize("How long do transfers take? I sent money to a friend")
        .unwrap()
        .ids;
    for b in [1usize, 4, 16, 32] {
        let seqs: Vec<&[u32]> = (0..b).map(|_| ids.as_slice()).collect();
        m.run(&seqs).unwrap();
        let n = 20;
        let t = std::time::Instant::now();
        for _ in 0..n {
            m.run(&seqs).unwrap();
        }
        let per = t.elapsed().as_secs_f64() / n as f64;
        println!(
            "batch {b:>2} × {} tokens: {:.2} ms/pass, {:.0} texts/s",
            ids.len(),
            per * 1e3,
            b as f64 / per
        );
    }
}
