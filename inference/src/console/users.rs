//! Who may use the console: operators from a users file, their passwords as argon2id hashes
//! (never the passwords), and sign-ins kept in memory as random session tokens that expire when
//! idle. A role says what a session may do: a viewer reads, an editor changes.
use super::ApiError;
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a signed-in operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// Also edits rules and rolls versions back.
    Editor,
}

impl Role {
    /// The name the users file and the change log use.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
        }
    }
}

/// One `[[user]]` of the users file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// argon2id PHC string (`nudge console hash-password` prints one).
    pub password_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<User>,
}

/// Hashes `password` for the users file (argon2id, random salt).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// Why the users file was refused.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// It could not be read.
    #[error("console.users_file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// It says something wrong.
    #[error("console.users_file {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What.
        reason: String,
    },
}

/// The operators, read once at start.
pub(crate) struct Users {
    by_name: HashMap<String, User>,
}

impl Users {
    pub(crate) fn load(path: &Path) -> Result<Self, UsersError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
            path: p.clone(),
            source,
        })?;
        let file: UsersFile = toml::from_str(&text).map_err(|e| UsersError::Invalid {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        let mut by_name = HashMap::new();
        for u in file.user {
            let bad = |reason: String| UsersError::Invalid {
                path: p.clone(),
                reason,
            };
            if u.name.trim().is_empty() || u.name.len() > 64 {
                return Err(bad("user.name: 1–64 characters".into()));
            }
            PasswordHash::new(&u.password_hash)
                .map_err(|e| bad(format!("user `{}`.password_hash: not a PHC string ({e})", u.name)))?;
            if by_name.contains_key(&u.name) {
                return Err(bad(format!("user `{}` appears twice", u.name)));
            }
            by_name.insert(u.name.clone(), u);
        }
        if by_name.is_empty() {
            return Err(UsersError::Invalid {
                path: p,
                reason: "no [[user]]: nobody could sign in".into(),
            });
        }
        Ok(Self { by_name })
    }

    /// The user if `password` is theirs. Blocking (argon2 is slow on purpose).
    pub(crate) fn verify(&self, name: &str, password: &str) -> Option<User> {
        let u = self.by_name.get(name)?;
        let hash = PasswordHash::new(&u.password_hash).ok()?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .ok()
            .map(|()| u.clone())
    }
}

/// A signed-in operator.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub user: String,
    pub role: Role,
    last_seen: Instant,
}

impl Session {
    /// Editors only.
    pub(crate) fn may_edit(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Editor => Ok(()),
            Role::Viewer => Err(ApiError::Forbidden(format!(
                "{} is a viewer: changes need an editor",
                self.user
            ))),
        }
    }
}

/// Sign-ins by token.
pub(crate) struct Sessions {
    idle: Duration,
    by_token: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub(crate) fn new(idle: Duration) -> Self {
        Self {
            idle,
            by_token: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn idle(&self) -> Duration {
        self.idle
    }

    /// A new session for `user`; returns its token (256 random bits, hex).
    pub(crate) fn open(&self, user: &User) -> Result<String, ApiError> {
        let token = hex::encode(rand::rng().random::<[u8; 32]>());
        let mut m = self.by_token.lock().map_err(|_| ApiError::poisoned())?;
        let idle = self.idle;
        m.retain(|_, s| s.last_seen.elapsed() < idle);
        m.insert(
            token.clone(),
            Session {
                user: user.name.clone(),
                role: user.role,
                last_seen: Instant::now(),
            },
        );
        Ok(token)
    }

    /// The session of `token`, if it has not expired; using it keeps it alive.
    pub(crate) fn get(&self, token: &str) -> Result<Session, ApiError> {
        let mut m = self.by_token.lock().map_err(|_| ApiError::poisoned())?;
        match m.get_mut(token) {
            Some(s) if s.last_seen.elapsed() < self.idle => {
                s.last_seen = Instant::now();
                Ok(s.clone())
            }
            Some(_) => {
                m.remove(token);
                Err(ApiError::Unauthorized)
            }
            None => Err(ApiError::Unauthorized),
        }
    }

    pub(crate) fn close(&self, token: &str) {
        if let Ok(mut m) = self.by_token.lock() {
            m.remove(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("users.toml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn passwords_verify_only_against_their_hash_and_bad_files_are_refused() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let (_d, p) = write(&format!(
            "[[user]]\nname = \"ana\"\nrole = \"editor\"\npassword_hash = \"{hash}\"\n"
        ));
        let users = Users::load(&p).unwrap();
        assert_eq!(users.verify("ana", "correct horse").map(|u| u.role), Some(Role::Editor));
        assert!(users.verify("ana", "correct horse ").is_none());
        assert!(users.verify("bob", "correct horse").is_none());
        for (text, needle) in [
            ("", "no [[user]]"),
            (
                "[[user]]\nname = \"x\"\nrole = \"editor\"\npassword_hash = \"hunter2\"\n",
                "not a PHC string",
            ),
            (
                "[[user]]\nname = \"x\"\nrole = \"admin\"\npassword_hash = \"h\"\n",
                "admin",
            ),
        ] {
            let (_d, p) = write(text);
            let err = Users::load(&p).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("console.users_file") && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn sessions_expire_when_idle_and_viewers_may_not_edit() {
        let s = Sessions::new(Duration::from_millis(50));
        let ana = User {
            name: "ana".into(),
            role: Role::Viewer,
            password_hash: String::new(),
        };
        let t = s.open(&ana).unwrap();
        let got = s.get(&t).unwrap();
        assert!(matches!(got.may_edit(), Err(ApiError::Forbidden(_))));
        assert!(matches!(s.get("not a token"), Err(ApiError::Unauthorized)));
        std::thread::sleep(Duration::from_millis(80));
        assert!(matches!(s.get(&t), Err(ApiError::Unauthorized)));
        let t2 = s.open(&ana).unwrap();
        assert_ne!(t, t2);
        s.close(&t2);
        assert!(matches!(s.get(&t2), Err(ApiError::Unauthorized)));
    }
}
