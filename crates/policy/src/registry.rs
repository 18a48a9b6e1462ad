//! A policy registry: one directory per immutable version and a `SERVING` file naming the one
//! in service. The server's store, the optimizer and `replay` all read and write registries
//! through this type, so "what is serving" has one meaning everywhere — and an operator's
//! rollback (which moves `SERVING` back) is what every later reader sees.
use crate::version::{check_version_name, write_parts, PolicyFiles, PolicyVersion, MANIFEST};
use crate::PolicyError;
use std::path::{Path, PathBuf};

/// The file naming the serving version.
pub const SERVING: &str = "SERVING";
/// What registries written before `SERVING` existed used (read, never written).
const LEGACY_LATEST: &str = "LATEST";

/// A registry directory.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    /// Opens (creating if needed) the registry at `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, PolicyError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| PolicyError::io(&dir, e))?;
        Ok(Self { dir })
    }

    /// Opens an existing registry without creating anything (readers such as `replay`).
    pub fn existing(dir: impl Into<PathBuf>) -> Result<Self, PolicyError> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(PolicyError::invalid(
                dir.display().to_string(),
                "no policy registry here",
            ));
        }
        Ok(Self { dir })
    }

    /// The registry's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name of the serving version, if one was ever set.
    pub fn serving_name(&self) -> Result<Option<String>, PolicyError> {
        for f in [SERVING, LEGACY_LATEST] {
            let p = self.dir.join(f);
            match std::fs::read_to_string(&p) {
                Ok(v) => {
                    let v = v.trim().to_string();
                    check_version_name(&v)?;
                    return Ok(Some(v));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(PolicyError::io(&p, e)),
            }
        }
        Ok(None)
    }

    /// The serving version, loaded and validated.
    pub fn serving(&self) -> Result<Option<PolicyVersion>, PolicyError> {
        self.serving_name()?.map(|v| self.load(&v)).transpose()
    }

    /// Loads and validates one stored version.
    pub fn load(&self, version: &str) -> Result<PolicyVersion, PolicyError> {
        check_version_name(version)?;
        let dir = self.dir.join(version);
        if !dir.is_dir() {
            return Err(PolicyError::invalid(
                "version",
                format!("{version} is not in this registry (never loaded here)"),
            ));
        }
        PolicyVersion::load(&dir)
    }

    /// Stores a version (refusing an existing name with other contents: versions are immutable).
    pub fn publish(&self, pv: &PolicyVersion) -> Result<(), PolicyError> {
        let (manifest, files) = pv.encode()?;
        self.store_parts(&pv.manifest.version, &manifest, &files)
    }

    /// Validates pushed bytes as a version and stores them (idempotent for identical bytes).
    pub fn store_encoded(&self, manifest: &[u8], files: &PolicyFiles) -> Result<PolicyVersion, PolicyError> {
        let pv = PolicyVersion::from_parts(manifest, files)?;
        self.store_parts(&pv.manifest.version, manifest, files)?;
        Ok(pv)
    }

    fn store_parts(&self, version: &str, manifest: &[u8], files: &PolicyFiles) -> Result<(), PolicyError> {
        check_version_name(version)?;
        let dir = self.dir.join(version);
        if dir.exists() {
            let same = std::fs::read(dir.join(MANIFEST)).is_ok_and(|m| m == manifest);
            if same {
                return Ok(());
            }
            return Err(PolicyError::invalid(
                "manifest.version",
                format!("{version} exists here with different contents; versions are immutable"),
            ));
        }
        write_parts(&self.dir, version, manifest, files).map(|_| ())
    }

    /// Points `SERVING` at a stored version (atomically: write then rename).
    pub fn set_serving(&self, version: &str) -> Result<(), PolicyError> {
        check_version_name(version)?;
        if !self.dir.join(version).is_dir() {
            return Err(PolicyError::invalid(
                "version",
                format!("{version} is not in this registry (never loaded here)"),
            ));
        }
        let tmp = self.dir.join(format!(".{SERVING}.tmp"));
        std::fs::write(&tmp, version).map_err(|e| PolicyError::io(&tmp, e))?;
        let dst = self.dir.join(SERVING);
        std::fs::rename(&tmp, &dst).map_err(|e| PolicyError::io(&dst, e))
    }

    /// Serves an earlier stored version: loads and validates it, then moves `SERVING`.
    pub fn rollback(&self, version: &str) -> Result<PolicyVersion, PolicyError> {
        let pv = self.load(version)?;
        self.set_serving(version)?;
        Ok(pv)
    }

    /// Stored version names, sorted (`v2` before `v10`).
    pub fn versions(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort_by_key(|n| (version_number(n), n.clone()));
        v
    }

    /// `v<n+1>` after the highest `v<n>` stored.
    pub fn next_version(&self) -> String {
        let n = self
            .versions()
            .iter()
            .filter_map(|v| version_number(v))
            .max()
            .unwrap_or(0);
        format!("v{}", n + 1)
    }
}

impl Registry {
    /// The next version name above both this registry's versions and `taken` (a name another
    /// process claimed first).
    pub fn next_version_above(&self, taken: &str) -> String {
        let mine = version_number(&self.next_version()).unwrap_or(1);
        let theirs = version_number(taken).map_or(0, |n| n + 1);
        format!("v{}", mine.max(theirs))
    }
}

fn version_number(v: &str) -> Option<u64> {
    v.strip_prefix('v')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{PolicyManifest, FORMAT};
    use crate::{Exploration, FeatureSchema, Policy, RewardModel};

    fn version(name: &str, prior_var: f64) -> PolicyVersion {
        let schema = FeatureSchema {
            context: vec!["seg=a".into()],
            offer: vec!["offer=x".into()],
            allow_none: true,
        };
        PolicyVersion {
            manifest: PolicyManifest {
                format: FORMAT,
                version: name.into(),
                parent: None,
                created_unix_ms: 1,
                schema: schema.clone(),
                exploration: Exploration::EpsilonGreedy { epsilon: 0.0 },
                reward_sha256: None,
                training_window: None,
                ope: None,
                files: Default::default(),
            },
            policy: Policy {
                model: RewardModel::prior(schema.dim(), prior_var),
                schema,
                exploration: Exploration::EpsilonGreedy { epsilon: 0.0 },
                projection: None,
            },
        }
    }

    #[test]
    fn publish_serve_roll_back_and_list() {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::open(d.path().join("reg")).unwrap();
        assert_eq!(r.serving_name().unwrap(), None);
        assert_eq!(r.next_version(), "v1");
        for (i, n) in ["v1", "v2", "v10"].iter().enumerate() {
            r.publish(&version(n, 1.0 + i as f64)).unwrap();
        }
        assert_eq!(r.versions(), vec!["v1", "v2", "v10"]);
        assert_eq!(r.next_version(), "v11");
        // Publishing does not serve; serving needs a stored version.
        assert_eq!(r.serving_name().unwrap(), None);
        assert!(r.set_serving("v3").is_err());
        r.set_serving("v10").unwrap();
        assert_eq!(r.serving().unwrap().unwrap().manifest.version, "v10");
        let back = r.rollback("v2").unwrap();
        assert_eq!(back.manifest.version, "v2");
        // A second handle (another process) sees the rollback.
        let again = Registry::existing(d.path().join("reg")).unwrap();
        assert_eq!(again.serving_name().unwrap().as_deref(), Some("v2"));
    }

    #[test]
    fn versions_are_immutable_but_identical_re_pushes_are_fine() {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::open(d.path()).unwrap();
        let v1 = version("v1", 1.0);
        r.publish(&v1).unwrap();
        r.publish(&v1).unwrap();
        let (m, f) = v1.encode().unwrap();
        assert_eq!(r.store_encoded(&m, &f).unwrap().manifest.version, "v1");
        let err = r.publish(&version("v1", 5.0)).unwrap_err().to_string();
        assert!(err.contains("immutable"), "{err}");
        assert!(r.load("../etc").is_err());
        assert!(r.rollback("v9").is_err());
    }

    #[test]
    fn a_registry_from_before_serving_existed_reads_its_latest_file() {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::open(d.path()).unwrap();
        r.publish(&version("v1", 1.0)).unwrap();
        std::fs::write(d.path().join("LATEST"), "v1\n").unwrap();
        assert_eq!(r.serving_name().unwrap().as_deref(), Some("v1"));
        r.publish(&version("v2", 2.0)).unwrap();
        r.set_serving("v2").unwrap();
        assert_eq!(r.serving_name().unwrap().as_deref(), Some("v2"), "SERVING wins");
    }
}
