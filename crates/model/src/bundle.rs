//! A model bundle: one directory holding an encoder (HF layout), the heads trained on it and a
//! manifest that names them, their labels and thresholds, and the sha256 of every file. Every
//! file is checked before anything is built from it, so a half-copied or tampered bundle is
//! refused at load and whatever was serving keeps serving.
use crate::encoder::{Pooling, ENCODER_FILES};
use crate::error::LoadError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The manifest's file name inside a bundle directory.
pub const MANIFEST: &str = "manifest.json";
/// The manifest format this code reads and writes; others are refused at load.
pub const FORMAT: u32 = 1;

/// `manifest.json`: what a bundle is (name, version), how to run its encoder, which heads it
/// has, and the checksum of every file it loads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: u32,
    /// The name requests address the model by (`model` field), e.g. `default`.
    pub name: String,
    /// The bundle's version, reported in every answer.
    pub version: String,
    /// The encoder and how its output is pooled.
    pub encoder: EncoderSpec,
    /// The classification heads on top of the pooled vector.
    #[serde(default)]
    pub heads: HeadsSpec,
    /// Relative path → sha256 (hex) of every file the bundle loads.
    pub files: BTreeMap<String, String>,
    /// Figures measured when the bundle was made (eval accuracy, data hashes...). Informational.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

/// How to build and run the bundle's encoder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EncoderSpec {
    /// Directory (relative to the bundle) with config.json, tokenizer.json, model.safetensors.
    pub dir: String,
    /// How token vectors become one vector per text.
    pub pooling: Pooling,
    /// L2-normalise pooled vectors before the heads (and in returned embeddings).
    #[serde(default = "yes")]
    pub normalize: bool,
    /// Text put before every input, e.g. e5's `query: `.
    #[serde(default)]
    pub text_prefix: String,
    /// Cap on tokens per text; the model's own maximum applies when lower.
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// The arithmetic the encoder's dense layers run in. `int8` quantizes the f32 weights when
    /// the bundle is loaded (the files stay f32, so one set of files serves both).
    #[serde(default)]
    pub precision: Precision,
    /// Name of the fetched encoder (under `models/encoders/`) that `nudge models fetch` links
    /// into `dir`; absent when the bundle carries its own encoder files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// How the encoder's dense layers compute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 weights and activations: what the encoder was trained in.
    #[default]
    F32,
    /// 8-bit weights (a scale per output), 7-bit activations (a scale and a zero point per
    /// token, its few outliers in f32), exact 32-bit sums: a quarter of the weight bytes and two
    /// to three times the speed of f32 (see `encoder::int8`).
    Int8,
}

/// A name that is not one of [`Precision`]'s.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a precision (f32 or int8)")]
pub struct UnknownPrecision(pub String);

impl std::str::FromStr for Precision {
    type Err = UnknownPrecision;

    /// Parses the manifest's names (`f32`, `int8`), for flags and benchmark options.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Precision::F32, Precision::Int8]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownPrecision(s.to_string()))
    }
}

impl Precision {
    /// The name manifests and answers use.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

fn yes() -> bool {
    true
}

/// The bundle's heads; a bundle without heads only embeds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HeadsSpec {
    /// safetensors file with `<head>.weight` `[labels, hidden]` and `<head>.bias` `[labels]`.
    #[serde(default)]
    pub file: Option<String>,
    /// The intent head (with its out-of-scope rule), if any.
    #[serde(default)]
    pub intent: Option<IntentSpec>,
    /// The sentiment head, if any.
    #[serde(default)]
    pub sentiment: Option<ClassifierSpec>,
}

/// The intent head: its labels in output order and the out-of-scope rule's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IntentSpec {
    /// Labels in the head's output order.
    pub labels: Vec<String>,
    /// Below this top in-scope probability a text is out of scope.
    #[serde(default)]
    pub oos_threshold: f32,
    /// A label that itself means out of scope (CLINC150's `oos`), if the head has one.
    #[serde(default)]
    pub oos_label: Option<String>,
}

/// A plain classification head (sentiment): its labels in output order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassifierSpec {
    /// Labels in the head's output order.
    pub labels: Vec<String>,
}

impl Manifest {
    /// Reads and validates `dir/manifest.json` (format, names, labels, thresholds); the files it
    /// lists are checked when they are read ([`read_verified`]).
    pub fn read(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join(MANIFEST);
        let bytes = std::fs::read(&path).map_err(|e| LoadError::io(&path, e))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|source| LoadError::Json {
            path: path.clone(),
            source,
        })?;
        m.validate(&path)?;
        Ok(m)
    }

    fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let bad = |r: String| Err(LoadError::invalid(path, r));
        if self.format != FORMAT {
            return bad(format!(
                "format {} is not supported (this server reads {FORMAT})",
                self.format
            ));
        }
        if self.name.trim().is_empty() || self.version.trim().is_empty() {
            return bad("name and version must not be empty".into());
        }
        for rel in self.files.keys() {
            let p = Path::new(rel);
            if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return bad(format!("files: `{rel}` must be a relative path inside the bundle"));
            }
        }
        let mut needed: Vec<String> = ENCODER_FILES
            .iter()
            .map(|f| format!("{}/{}", self.encoder.dir.trim_end_matches('/'), f))
            .collect();
        if let Some(f) = &self.heads.file {
            needed.push(f.clone());
        }
        for n in needed {
            if !self.files.contains_key(&n) {
                return bad(format!("files: no sha256 for `{n}`, which the bundle loads"));
            }
        }
        if (self.heads.intent.is_some() || self.heads.sentiment.is_some()) && self.heads.file.is_none() {
            return bad("heads.file is required when heads are declared".into());
        }
        if let Some(i) = &self.heads.intent {
            check_labels(path, "heads.intent.labels", &i.labels)?;
            if !(0.0..=1.0).contains(&i.oos_threshold) {
                return bad(format!(
                    "heads.intent.oos_threshold {} is outside [0, 1]",
                    i.oos_threshold
                ));
            }
            if let Some(o) = &i.oos_label {
                if !i.labels.contains(o) {
                    return bad(format!("heads.intent.oos_label `{o}` is not one of the labels"));
                }
            }
        }
        if let Some(s) = &self.heads.sentiment {
            check_labels(path, "heads.sentiment.labels", &s.labels)?;
        }
        Ok(())
    }

    /// Where `rel` comes from when the bundle takes it from a fetched encoder: its path under the
    /// models root (`encoders/<source>/<file>`), which `nudge models fetch` fills on every
    /// machine. `None` for files the bundle carries itself. Such files are pinned by their sha256
    /// like any other, so a machine with a different fetch refuses the bundle rather than serve
    /// other weights.
    pub fn fetched_from(&self, rel: &str) -> Option<PathBuf> {
        let source = self.encoder.source.as_deref()?;
        let file = rel
            .strip_prefix(self.encoder.dir.trim_end_matches('/'))?
            .strip_prefix('/')?;
        ENCODER_FILES
            .contains(&file)
            .then(|| Path::new("encoders").join(source).join(file))
    }

    /// Writes the manifest with `files` filled from what is on disk now.
    pub fn write_with_checksums(&mut self, dir: &Path, files: &[&str]) -> Result<(), LoadError> {
        self.files.clear();
        for rel in files {
            let p = dir.join(rel);
            let bytes = std::fs::read(&p).map_err(|e| LoadError::io(&p, e))?;
            self.files.insert(rel.to_string(), sha256_hex(&bytes));
        }
        let path = dir.join(MANIFEST);
        let json = serde_json::to_vec_pretty(self).map_err(|source| LoadError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &json)
    }
}

fn check_labels(path: &Path, field: &str, labels: &[String]) -> Result<(), LoadError> {
    if labels.len() < 2 {
        return Err(LoadError::invalid(path, format!("{field}: needs at least two labels")));
    }
    let mut seen = std::collections::HashSet::new();
    for l in labels {
        if l.trim().is_empty() || !seen.insert(l) {
            return Err(LoadError::invalid(path, format!("{field}: `{l}` is empty or repeated")));
        }
    }
    Ok(())
}

/// Lower-case hex sha256, as the manifest's `files` map records it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads `dir/rel` and checks it against the manifest's sha256.
pub fn read_verified(dir: &Path, manifest: &Manifest, rel: &str) -> Result<(PathBuf, Vec<u8>), LoadError> {
    let path = dir.join(rel);
    let expected = manifest
        .files
        .get(rel)
        .ok_or_else(|| LoadError::invalid(dir.join(MANIFEST), format!("files: no sha256 for `{rel}`")))?;
    let bytes = std::fs::read(&path).map_err(|e| LoadError::io(&path, e))?;
    let actual = sha256_hex(&bytes);
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(LoadError::Checksum {
            path,
            expected: expected.clone(),
            actual,
        });
    }
    Ok((path, bytes))
}

/// Write to a temporary file in the same directory, fsync, then rename: readers see the old
/// file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| LoadError::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| LoadError::io(path, e))?;
    // Model files are meant to be read by the service account too, not only their writer.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| LoadError::io(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| LoadError::io(path, e))?;
    tmp.persist(path).map_err(|e| LoadError::io(path, e.error))?;
    Ok(())
}

/// Serialises named f32 tensors (name → (shape, values)) as safetensors bytes, names sorted so
/// the same tensors always give the same file (and sha256).
pub fn f32_safetensors(path: &Path, tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Result<Vec<u8>, LoadError> {
    f32_safetensors_with_metadata(path, tensors, None)
}

/// As `f32_safetensors`, with string metadata in the header.
pub fn f32_safetensors_with_metadata(
    path: &Path,
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>, LoadError> {
    let bytes: Vec<(&String, &Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (shape, v))| (k, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, shape, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, (*shape).clone(), b)
                .map(|v| ((*k).clone(), v))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| LoadError::invalid(path, format!("building safetensors: {e}")))?;
    safetensors::serialize(views, metadata)
        .map_err(|e| LoadError::invalid(path, format!("serialising safetensors: {e}")))
}

/// Writes the bundle at `src` as a new version at `out` whose encoder runs in `precision`;
/// same files (hard-linked), new manifest. The version defaults to `<old>-<precision>`. The
/// source's recorded metrics are dropped: they were measured in the old arithmetic.
pub fn with_precision(
    src: &Path,
    out: &Path,
    precision: Precision,
    version: Option<String>,
) -> Result<Manifest, LoadError> {
    let mut m = Manifest::read(src)?;
    if m.encoder.precision == precision && version.is_none() {
        return Err(LoadError::invalid(
            src.join(MANIFEST),
            format!("encoder.precision is {} already", precision.name()),
        ));
    }
    m.version = version.unwrap_or_else(|| format!("{}-{}", m.version, precision.name()));
    m.encoder.precision = precision;
    m.metrics.clear();
    m.validate(&out.join(MANIFEST))?;
    stage_copy(src, out, &m)?;
    Ok(m)
}

/// Writes `manifest` as a new bundle at `out` whose files are `src`'s (hard-linked where the
/// file system allows, copied otherwise), each checked against the manifest's sha256 first.
/// Built in a staging directory beside `out` and renamed into place, so `out` is either absent
/// or complete. `out` must not exist yet: a bundle version is never changed in place.
pub fn stage_copy(src: &Path, out: &Path, manifest: &Manifest) -> Result<(), LoadError> {
    if out.exists() {
        return Err(LoadError::invalid(
            out,
            "exists already; a new bundle version goes to a new directory",
        ));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| LoadError::io(parent, e))?;
    let stage = tempfile::Builder::new()
        .prefix(".bundle-stage-")
        .tempdir_in(parent)
        .map_err(|e| LoadError::io(parent, e))?;
    for rel in manifest.files.keys() {
        let (from, bytes) = read_verified(src, manifest, rel)?;
        let to = stage.path().join(rel);
        if let Some(d) = to.parent() {
            std::fs::create_dir_all(d).map_err(|e| LoadError::io(d, e))?;
        }
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::write(&to, &bytes).map_err(|e| LoadError::io(&to, e))?;
        }
    }
    let json = serde_json::to_vec_pretty(manifest).map_err(|source| LoadError::Json {
        path: out.join(MANIFEST),
        source,
    })?;
    write_atomic(&stage.path().join(MANIFEST), &json)?;
    let staged = stage.keep();
    std::fs::rename(&staged, out).map_err(|e| LoadError::io(out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_encoder_files_of_a_fetched_encoder_come_from_the_fetch() {
        let json = serde_json::json!({
            "format": 1, "name": "m", "version": "1",
            "encoder": {"dir": "encoder/", "pooling": "mean", "source": "e5"},
            "files": {}
        });
        let mut m: Manifest = serde_json::from_value(json).unwrap();
        assert_eq!(
            m.fetched_from("encoder/model.safetensors"),
            Some(Path::new("encoders/e5/model.safetensors").to_path_buf())
        );
        assert_eq!(m.fetched_from("heads.safetensors"), None);
        assert_eq!(m.fetched_from("encoderx/config.json"), None);
        assert_eq!(m.fetched_from("encoder/extra.bin"), None);
        m.encoder.source = None;
        assert_eq!(m.fetched_from("encoder/model.safetensors"), None);
    }
}
