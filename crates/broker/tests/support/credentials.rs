//! Credentials for authentication tests: password files and HS256 tokens, in a temporary
//! directory removed when the test ends.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rallymq_broker::{AuthConfig, HashScheme, JwtConfig, PasswordFile};

/// 32 bytes: the shortest HS256 secret the broker takes (RFC 7518 §3.2).
pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A directory removed when the test ends.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rallymq-auth-{name}-{}",
            rallymq_test_support::run_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a password file with argon2id lines, as `rallymq passwd` does.
pub fn write_passwords(path: &Path, users: &[(&str, &str)]) {
    let mut file = PasswordFile::default();
    for (user, password) in users {
        file.set_password(user, password.as_bytes(), HashScheme::Argon2id)
            .unwrap();
    }
    file.save(path).unwrap();
}

/// Authentication by the password file at `path` only.
pub fn passwords_only(path: &Path) -> AuthConfig {
    let mut auth = AuthConfig::default();
    auth.password_file = Some(path.to_owned());
    auth
}

/// Authentication by HS256 tokens signed with [`SECRET`] (written to `dir`).
pub fn jwt_auth(dir: &TempDir) -> AuthConfig {
    let key = dir.path("jwt.key");
    std::fs::write(&key, SECRET).unwrap();
    let mut auth = AuthConfig::default();
    auth.jwt = Some(JwtConfig::new(key));
    auth
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with `claims`, signed with [`SECRET`].
pub fn hs256_token(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}
