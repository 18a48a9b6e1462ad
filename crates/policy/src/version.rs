//! The versioned policy format: `manifest.json` (version, parent, schema, exploration, reward
//! file hash, training window, off-policy figures, sha256 of every file) and
//! `policy.safetensors` (f64 tensors). The optimizer writes versions into a registry directory,
//! `<registry>/<version>/`, and pushes the same bytes to servers; both sides read them through
//! `PolicyVersion::from_parts`, which checks everything before anything can serve.
use crate::features::FeatureSchema;
use crate::model::{RewardModel, Trunk};
use crate::policy::{Exploration, Policy};
use crate::PolicyError;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The manifest format this code reads and writes; others are refused.
pub const FORMAT: u32 = 1;
/// The manifest's file name in a version directory.
pub const MANIFEST: &str = "manifest.json";
/// The weights' file name in a version directory.
pub const WEIGHTS: &str = "policy.safetensors";

/// `manifest.json` of a policy version: what it is, where it came from and what it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyManifest {
    /// Always [`FORMAT`].
    pub format: u32,
    /// Its name, also its directory name in a registry (see `check_version_name`).
    pub version: String,
    /// The version it was trained from, if any.
    #[serde(default)]
    pub parent: Option<String>,
    /// When the optimizer made it.
    pub created_unix_ms: u64,
    /// The feature names it reads.
    pub schema: FeatureSchema,
    /// How it explores.
    pub exploration: Exploration,
    /// sha256 of the reward file the policy was trained for.
    #[serde(default)]
    pub reward_sha256: Option<String>,
    /// Decisions and outcomes the policy was trained on (times, counts).
    #[serde(default)]
    pub training_window: Option<serde_json::Value>,
    /// Off-policy estimates that let it through the gate.
    #[serde(default)]
    pub ope: Option<serde_json::Value>,
    /// File name → sha256 (hex).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// A policy version's files by name (weights, extras), as carried by `PublishPolicy` and
/// written beside the manifest.
pub type PolicyFiles = HashMap<String, Vec<u8>>;

/// A version as one set of named files — `manifest.json` beside its other files, as in a
/// registry directory — for stores that hold files by name (the cluster's artifact store).
pub fn to_file_set(manifest: Vec<u8>, files: PolicyFiles) -> BTreeMap<String, Vec<u8>> {
    let mut all: BTreeMap<String, Vec<u8>> = files.into_iter().collect();
    all.insert(MANIFEST.to_string(), manifest);
    all
}

/// The manifest and files of a set written by [`to_file_set`] (an empty manifest if it has
/// none, which validation then refuses).
pub fn from_file_set(mut all: BTreeMap<String, Vec<u8>>) -> (Vec<u8>, PolicyFiles) {
    let manifest = all.remove(MANIFEST).unwrap_or_default();
    (manifest, all.into_iter().collect())
}

/// A validated policy version: its manifest and the policy built from its files.
#[derive(Debug, Clone)]
pub struct PolicyVersion {
    /// What the manifest says.
    pub manifest: PolicyManifest,
    /// The servable policy.
    pub policy: Policy,
}

/// Lower-case hex sha256, as the manifest's `files` map records it.
pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Version names become directory names: keep them boring.
pub fn check_version_name(v: &str) -> Result<(), PolicyError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('.')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::invalid(
            "manifest.version",
            format!("{v:?}: 1–64 characters of [A-Za-z0-9._-], not starting with '.'"),
        ))
    }
}

fn tensor_f64(st: &safetensors::SafeTensors<'_>, name: &str) -> Result<(Vec<usize>, Vec<f64>), PolicyError> {
    let what = format!("{WEIGHTS}: tensor `{name}`");
    let v = st.tensor(name).map_err(|_| PolicyError::invalid(&what, "missing"))?;
    if v.dtype() != safetensors::Dtype::F64 {
        return Err(PolicyError::invalid(
            &what,
            format!("dtype {:?}, expected F64", v.dtype()),
        ));
    }
    let vals: Vec<f64> = v
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    if vals.iter().any(|x| !x.is_finite()) {
        return Err(PolicyError::invalid(&what, "NaN or infinite values"));
    }
    Ok((v.shape().to_vec(), vals))
}

fn matrix(st: &safetensors::SafeTensors<'_>, name: &str) -> Result<Array2<f64>, PolicyError> {
    let (shape, v) = tensor_f64(st, name)?;
    match shape[..] {
        [r, c] => Array2::from_shape_vec((r, c), v).map_err(|e| PolicyError::invalid(name, e.to_string())),
        _ => Err(PolicyError::invalid(
            format!("{WEIGHTS}: tensor `{name}`"),
            format!("shape {shape:?}, expected 2-D"),
        )),
    }
}

fn vector(st: &safetensors::SafeTensors<'_>, name: &str) -> Result<Array1<f64>, PolicyError> {
    let (shape, v) = tensor_f64(st, name)?;
    match shape[..] {
        [_] => Ok(Array1::from(v)),
        _ => Err(PolicyError::invalid(
            format!("{WEIGHTS}: tensor `{name}`"),
            format!("shape {shape:?}, expected 1-D"),
        )),
    }
}

impl PolicyVersion {
    /// Parses and validates a version from its manifest and file bytes (as pushed over gRPC or
    /// read from a registry directory). Every checksum, shape and number is checked.
    pub fn from_parts(manifest: &[u8], files: &PolicyFiles) -> Result<Self, PolicyError> {
        let manifest: PolicyManifest =
            serde_json::from_slice(manifest).map_err(|e| PolicyError::invalid(MANIFEST, e.to_string()))?;
        if manifest.format != FORMAT {
            return Err(PolicyError::invalid(
                "manifest.format",
                format!("{} (this build reads {FORMAT})", manifest.format),
            ));
        }
        check_version_name(&manifest.version)?;
        if !manifest.files.contains_key(WEIGHTS) {
            return Err(PolicyError::invalid(
                "manifest.files",
                format!("does not name {WEIGHTS}"),
            ));
        }
        for (name, sha) in &manifest.files {
            let bytes = files
                .get(name)
                .ok_or_else(|| PolicyError::invalid(name.as_str(), "named in the manifest but not supplied"))?;
            let actual = sha256_hex(bytes);
            if &actual != sha {
                return Err(PolicyError::invalid(
                    name.as_str(),
                    format!("sha256 mismatch: manifest says {sha}, file has {actual}"),
                ));
            }
        }
        let bytes = &files[WEIGHTS];
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| PolicyError::invalid(WEIGHTS, format!("not a safetensors file: {e}")))?;
        let mut layers = Vec::new();
        while st.tensor(&format!("trunk.{}.weight", layers.len())).is_ok() {
            let i = layers.len();
            layers.push((
                matrix(&st, &format!("trunk.{i}.weight"))?,
                vector(&st, &format!("trunk.{i}.bias"))?,
            ));
        }
        let model = RewardModel {
            theta: vector(&st, "theta")?,
            cov: matrix(&st, "cov")?,
            cov_chol: matrix(&st, "cov_chol")?,
            trunk: (!layers.is_empty()).then_some(Trunk { layers }),
        };
        let projection = if st.tensor("projection").is_ok() {
            Some(matrix(&st, "projection")?)
        } else {
            None
        };
        let policy = Policy {
            schema: manifest.schema.clone(),
            model,
            exploration: manifest.exploration.clone(),
            projection,
        };
        policy.validate()?;
        Ok(Self { manifest, policy })
    }

    /// Reads `<dir>/manifest.json` and the files it names.
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let mp = dir.join(MANIFEST);
        let manifest = std::fs::read(&mp).map_err(|e| PolicyError::io(&mp, e))?;
        let names: PolicyManifest = serde_json::from_slice(&manifest)
            .map_err(|e| PolicyError::invalid(mp.display().to_string(), e.to_string()))?;
        let mut files = HashMap::new();
        for name in names.files.keys() {
            if name.contains('/') || name.starts_with('.') {
                return Err(PolicyError::invalid(
                    "manifest.files",
                    format!("bad file name {name:?}"),
                ));
            }
            let p = dir.join(name);
            files.insert(name.clone(), std::fs::read(&p).map_err(|e| PolicyError::io(&p, e))?);
        }
        Self::from_parts(&manifest, &files)
    }

    /// Serialises the version: manifest bytes (with file checksums filled in) and files.
    pub fn encode(&self) -> Result<(Vec<u8>, PolicyFiles), PolicyError> {
        let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f64>)> = BTreeMap::new();
        let m = &self.policy.model;
        tensors.insert("theta".into(), (vec![m.theta.len()], m.theta.to_vec()));
        let mat = |a: &Array2<f64>| (vec![a.nrows(), a.ncols()], a.iter().copied().collect::<Vec<f64>>());
        tensors.insert("cov".into(), mat(&m.cov));
        tensors.insert("cov_chol".into(), mat(&m.cov_chol));
        if let Some(t) = &m.trunk {
            for (i, (w, b)) in t.layers.iter().enumerate() {
                tensors.insert(format!("trunk.{i}.weight"), mat(w));
                tensors.insert(format!("trunk.{i}.bias"), (vec![b.len()], b.to_vec()));
            }
        }
        if let Some(p) = &self.policy.projection {
            tensors.insert("projection".into(), mat(p));
        }
        let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(k, (s, v))| (k, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        let views = raw
            .iter()
            .map(|(k, s, b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F64, s.clone(), b).map(|v| (k.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PolicyError::invalid(WEIGHTS, e.to_string()))?;
        let weights = safetensors::serialize(views, None).map_err(|e| PolicyError::invalid(WEIGHTS, e.to_string()))?;
        let mut manifest = self.manifest.clone();
        manifest.schema = self.policy.schema.clone();
        manifest.exploration = self.policy.exploration.clone();
        manifest.files = [(WEIGHTS.to_string(), sha256_hex(&weights))].into();
        let mbytes = serde_json::to_vec_pretty(&manifest).map_err(|e| PolicyError::invalid(MANIFEST, e.to_string()))?;
        Ok((mbytes, [(WEIGHTS.to_string(), weights)].into()))
    }

    /// Writes the version to `<registry>/<version>/` through a staging directory and a rename,
    /// so a reader sees a whole version or none. Refuses to overwrite an existing version.
    pub fn write(&self, registry: &Path) -> Result<PathBuf, PolicyError> {
        check_version_name(&self.manifest.version)?;
        let (manifest, files) = self.encode()?;
        write_parts(registry, &self.manifest.version, &manifest, &files)
    }
}

/// Writes already-encoded parts (as received) to `<registry>/<version>/`, atomically.
pub fn write_parts(
    registry: &Path,
    version: &str,
    manifest: &[u8],
    files: &PolicyFiles,
) -> Result<PathBuf, PolicyError> {
    check_version_name(version)?;
    std::fs::create_dir_all(registry).map_err(|e| PolicyError::io(registry, e))?;
    let dst = registry.join(version);
    if dst.exists() {
        return Err(PolicyError::invalid(
            "manifest.version",
            format!("{version} already exists in {}", registry.display()),
        ));
    }
    let stage = registry.join(format!(".staging-{version}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).map_err(|e| PolicyError::io(&stage, e))?;
    let write = |name: &str, bytes: &[u8]| -> Result<(), PolicyError> {
        use std::io::Write;
        let p = stage.join(name);
        let mut f = std::fs::File::create(&p).map_err(|e| PolicyError::io(&p, e))?;
        f.write_all(bytes).map_err(|e| PolicyError::io(&p, e))?;
        f.sync_all().map_err(|e| PolicyError::io(&p, e))
    };
    for (name, bytes) in files {
        write(name, bytes)?;
    }
    write(MANIFEST, manifest)?;
    std::fs::rename(&stage, &dst).map_err(|e| PolicyError::io(&dst, e))?;
    if let Ok(d) = std::fs::File::open(registry) {
        let _ = d.sync_all();
    }
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version() -> PolicyVersion {
        let schema = FeatureSchema {
            context: vec!["seg=a".into()],
            offer: vec!["offer=x".into()],
            allow_none: true,
        };
        PolicyVersion {
            manifest: PolicyManifest {
                format: FORMAT,
                version: "v1".into(),
                parent: None,
                created_unix_ms: 1,
                schema: schema.clone(),
                exploration: Exploration::EpsilonGreedy { epsilon: 0.1 },
                reward_sha256: None,
                training_window: None,
                ope: None,
                files: BTreeMap::new(),
            },
            policy: Policy {
                schema,
                model: RewardModel::prior(4, 1.0),
                exploration: Exploration::EpsilonGreedy { epsilon: 0.1 },
                projection: None,
            },
        }
    }

    #[test]
    fn round_trips_through_a_registry_and_refuses_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let v = version();
        let path = v.write(dir.path()).unwrap();
        let back = PolicyVersion::load(&path).unwrap();
        assert_eq!(back.policy, v.policy);
        assert!(v.write(dir.path()).is_err(), "versions are immutable");

        let (m, mut files) = v.encode().unwrap();
        files.get_mut(WEIGHTS).unwrap()[100] ^= 1;
        let err = PolicyVersion::from_parts(&m, &files).unwrap_err().to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");

        // A model whose size does not match the schema.
        let mut bad = version();
        bad.policy.model = RewardModel::prior(5, 1.0);
        let (m, files) = bad.encode().unwrap();
        let err = PolicyVersion::from_parts(&m, &files).unwrap_err().to_string();
        assert!(err.contains("schema makes 4"), "{err}");

        let mut bad = version();
        bad.manifest.version = "../evil".into();
        assert!(bad.write(dir.path()).is_err());

        // Neural-linear: the trunk round-trips, and a trunk whose output does not fit the
        // Bayesian layer ([1, h] = 3 + 1 values for a 3-unit layer) is refused.
        let mut nl = version();
        nl.manifest.version = "v2".into();
        let trunk = Trunk {
            layers: vec![
                (
                    Array2::from_elem((5, 4), 0.1),
                    Array1::from(vec![0.0, 0.1, 0.2, 0.3, 0.4]),
                ),
                (Array2::from_elem((3, 5), -0.2), Array1::from(vec![1.0, 0.0, -1.0])),
            ],
        };
        nl.policy.model = RewardModel::prior(4, 1.0);
        nl.policy.model.trunk = Some(trunk.clone());
        let back = PolicyVersion::load(&nl.write(dir.path()).unwrap()).unwrap();
        assert_eq!(back.policy.model.trunk.as_ref(), Some(&trunk));
        let f = back.policy.model.features(&[1.0, 1.0, 1.0, 1.0]);
        // Layer 1 gives 0.4..0.8 (sum 3), layer 2 relu(-0.6 + [1, 0, -1]) = [0.4, 0, 0].
        for (a, b) in f.iter().zip([1.0, 0.4, 0.0, 0.0]) {
            assert!((a - b).abs() < 1e-12, "{f}");
        }
        nl.policy.model = RewardModel::prior(3, 1.0);
        nl.policy.model.trunk = Some(trunk);
        let (m, files) = nl.encode().unwrap();
        let err = PolicyVersion::from_parts(&m, &files).unwrap_err().to_string();
        assert!(err.contains("trunk output size"), "{err}");
    }
}
