//! Password files in Mosquitto's format: one `user:hash` line per user.
//!
//! Three hash formats are read (the first two exactly as Mosquitto's `password_mosq.c` decodes
//! them, so a Mosquitto password file works unchanged):
//!
//! - `$6$SALT$HASH`: `HASH = SHA-512(password ‖ salt)`, written by `mosquitto_passwd` 1.6 and
//!   by `mosquitto_passwd -H sha512`;
//! - `$7$ITERATIONS$SALT$HASH`: `HASH = PBKDF2-HMAC-SHA512(password, salt, ITERATIONS, 64)`,
//!   written by `mosquitto_passwd` 2.0 (101 iterations) and 2.1 (1,000);
//! - `$argon2id$v=19$m=M,t=T,p=P$SALT$HASH`: the PHC string of argon2id (RFC 9106), written
//!   by `rallymq passwd` and by Mosquitto 2.1 when built with libargon2.
//!
//! In the first two, SALT and HASH are standard base64 with padding, HASH decodes to 64 bytes.
//!
//! Blank lines and lines starting with `#` are kept as they are and otherwise ignored, as
//! Mosquitto ignores them. Any other line that is not `user:hash` in one of these formats
//! makes the whole file an error naming the line (as `mosquitto_passwd` refuses to edit a
//! "corrupt password file"), and so does a user named twice. Errors never quote the line: a
//! plain-text password might be on it.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::LazyLock;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::Refusal;
use crate::Error;

/// Length of the salts `rallymq passwd -H sha512[-pbkdf2]` writes: `mosquitto_passwd`'s
/// (Mosquitto 2.0 reads 12 or 64 bytes, 1.6 only 12).
const MOSQUITTO_SALT_LEN: usize = 12;
/// PBKDF2 iterations `rallymq passwd -H sha512-pbkdf2` writes: Mosquitto 2.1's default
/// (2.0 wrote 101). Mosquitto verifies on its one network thread, so more would stall it.
const PBKDF2_ITERATIONS: u32 = 1_000;
/// A SHA-512 output.
const SHA512_LEN: usize = 64;

/// How `rallymq passwd` hashes a new password (`-H`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HashScheme {
    /// argon2id with the `argon2` crate's default cost (19 MiB, 2 passes, 1 lane: OWASP's
    /// first recommendation), as a PHC string. Mosquitto 2.0 cannot read it.
    #[default]
    Argon2id,
    /// Mosquitto 2.0's default `$7$` (PBKDF2-HMAC-SHA512, 1,000 iterations), for a file that
    /// Mosquitto 2.0 must read too.
    Sha512Pbkdf2,
    /// Mosquitto 1.6's `$6$` (one salted SHA-512): weak, for Mosquitto 1.6 only.
    Sha512,
}

impl HashScheme {
    /// The scheme of a `mosquitto_passwd -H` name (`sha512-pbkdf2`, `sha512`) or `argon2id`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "argon2id" => Some(Self::Argon2id),
            "sha512-pbkdf2" => Some(Self::Sha512Pbkdf2),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }
}

/// A password file: its users' hashes, and its other lines (comments, blank lines) in order,
/// so that editing one user writes every other line back as it was.
///
/// ```
/// use rallymq_broker::{HashScheme, PasswordFile};
///
/// let mut file = PasswordFile::default();
/// file.set_password("alice", b"correct horse", HashScheme::Sha512Pbkdf2)?;
/// assert!(file.verify("alice", b"correct horse").is_ok());
/// assert!(file.verify("alice", b"battery staple").is_err());
/// assert!(file.to_string().starts_with("alice:$7$1000$"));
/// # Ok::<(), rallymq_broker::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct PasswordFile {
    lines: Vec<Line>,
}

#[derive(Clone)]
enum Line {
    /// A comment or a blank line, kept verbatim.
    Other(String),
    User(Entry),
}

#[derive(Clone)]
struct Entry {
    user: String,
    /// The hash as written in the file, so that an untouched line is written back unchanged.
    text: String,
    hash: StoredHash,
}

#[derive(Clone)]
enum StoredHash {
    Sha512 {
        salt: Vec<u8>,
        hash: [u8; SHA512_LEN],
    },
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: [u8; SHA512_LEN],
    },
    /// Checked at load (parameters, salt, output), verified by the `argon2` crate.
    Argon2id(String),
}

impl fmt::Debug for PasswordFile {
    /// The user names only: hashes stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users().collect::<Vec<_>>())
            .finish()
    }
}

impl PasswordFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = fs::read_to_string(path).map_err(|source| Error::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| Error::PasswordFile {
            path: path.to_owned(),
            line,
            reason,
        })
    }

    /// Parses a password file's text; an error gives the 1-based line number and what is wrong.
    pub(crate) fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut lines = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim().is_empty() || line.starts_with('#') {
                lines.push(Line::Other(line.to_owned()));
                continue;
            }
            let number = index + 1;
            let Some((user, text)) = line.split_once(':') else {
                return Err((number, "no ':' between a user name and a hash".into()));
            };
            // Mosquitto trims blanks around both fields.
            let (user, text) = (user.trim(), text.trim());
            if user.is_empty() {
                return Err((number, "empty user name".into()));
            }
            let hash = StoredHash::parse(text).map_err(|reason| (number, reason))?;
            let entry = Entry {
                user: user.to_owned(),
                text: text.to_owned(),
                hash,
            };
            if lines
                .iter()
                .any(|known| matches!(known, Line::User(known) if known.user == entry.user))
            {
                return Err((number, format!("user {:?} is already named above", user)));
            }
            lines.push(Line::User(entry));
        }
        Ok(Self { lines })
    }

    /// The user names, in file order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|line| match line {
            Line::User(entry) => Some(entry.user.as_str()),
            Line::Other(_) => None,
        })
    }

    fn entry(&self, user: &str) -> Option<&Entry> {
        self.lines.iter().find_map(|line| match line {
            Line::User(entry) if entry.user == user => Some(entry),
            _ => None,
        })
    }

    /// Checks `password` for `user`. Takes as long for an unknown user as for a known one
    /// (an argon2id hash at the default cost), so that the time does not tell which users
    /// exist. Both failures give the same CONNACK code; they differ for the log.
    pub fn verify(&self, user: &str, password: &[u8]) -> Result<(), Refusal> {
        match self.entry(user) {
            Some(entry) if entry.hash.matches(password) => Ok(()),
            Some(_) => Err(Refusal::WrongPassword),
            None => {
                spend_a_verification(password);
                Err(Refusal::UnknownUser)
            }
        }
    }

    /// Adds `user`, or replaces their hash in place, hashing `password` with `scheme`.
    pub fn set_password(
        &mut self,
        user: &str,
        password: &[u8],
        scheme: HashScheme,
    ) -> Result<(), Error> {
        check_user_name(user)?;
        let text = scheme.hash(password)?;
        let hash = StoredHash::parse(&text).map_err(|reason| Error::PasswordHash { reason })?;
        let entry = Entry {
            user: user.to_owned(),
            text,
            hash,
        };
        match self
            .lines
            .iter_mut()
            .find(|line| matches!(line, Line::User(known) if known.user == user))
        {
            Some(line) => *line = Line::User(entry),
            None => self.lines.push(Line::User(entry)),
        }
        Ok(())
    }

    /// Removes `user`; false if they were not in the file.
    pub fn remove(&mut self, user: &str) -> bool {
        let before = self.lines.len();
        self.lines
            .retain(|line| !matches!(line, Line::User(known) if known.user == user));
        self.lines.len() != before
    }

    /// Writes the file to `path`, replacing it whole: the text goes to a temporary file in the
    /// same directory, which is then renamed over `path`, so a broker reloading it never reads
    /// half a file. A new file is readable by its owner only (mode 0600, as recent
    /// `mosquitto_passwd` creates it); a replaced one keeps its mode and, where allowed, its
    /// owner and group.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let write_error = |source| Error::WriteFile {
            path: path.to_owned(),
            source,
        };
        let existing = fs::metadata(path).ok();
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let temporary = directory.join(format!(".{name}.rallymq-{}", std::process::id()));
        let result = (|| {
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&temporary)?;
            file.write_all(self.to_string().as_bytes())?;
            if let Some(existing) = &existing {
                file.set_permissions(existing.permissions())?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::MetadataExt;
                    // Best effort: only root may give a file away; otherwise it stays ours.
                    let _ = std::os::unix::fs::fchown(
                        &file,
                        Some(existing.uid()),
                        Some(existing.gid()),
                    );
                }
            }
            file.sync_all()?;
            fs::rename(&temporary, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        result.map_err(write_error)
    }
}

impl fmt::Display for PasswordFile {
    /// The file's text: every line as read, users' lines as `user:hash`, each ending in `\n`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            match line {
                Line::Other(text) => writeln!(f, "{text}")?,
                Line::User(entry) => writeln!(f, "{}:{}", entry.user, entry.text)?,
            }
        }
        Ok(())
    }
}

/// A user name that reads back as itself: Mosquitto splits the line at the first `:`, trims
/// blanks, and takes a line starting with `#` for a comment.
fn check_user_name(user: &str) -> Result<(), Error> {
    let reason = if user.is_empty() {
        "a user name must not be empty"
    } else if user.contains(':') {
        "a user name must not contain the ':' character"
    } else if user.contains(['\n', '\r']) {
        "a user name must not contain a line break"
    } else if user.starts_with('#') {
        "a user name must not start with '#' (the line would be a comment)"
    } else if user.trim() != user {
        "a user name must not start or end with blanks"
    } else if user.len() > usize::from(u16::MAX) {
        "a user name must be at most 65,535 bytes (MQTT's limit)"
    } else {
        return Ok(());
    };
    Err(Error::UserName {
        reason: reason.into(),
    })
}

impl HashScheme {
    /// The hash of `password` as the file stores it, with a fresh random salt.
    fn hash(self, password: &[u8]) -> Result<String, Error> {
        let salt = || {
            let mut salt = [0u8; MOSQUITTO_SALT_LEN];
            getrandom::fill(&mut salt).map_err(|e| Error::PasswordHash {
                reason: format!("no random salt: {e}"),
            })?;
            Ok::<_, Error>(salt)
        };
        Ok(match self {
            Self::Argon2id => Argon2::default()
                .hash_password(password)
                .map_err(|e| Error::PasswordHash {
                    reason: e.to_string(),
                })?
                .to_string(),
            Self::Sha512Pbkdf2 => {
                let salt = salt()?;
                let hash = pbkdf2_sha512(password, &salt, PBKDF2_ITERATIONS);
                format!(
                    "$7${PBKDF2_ITERATIONS}${}${}",
                    STANDARD.encode(salt),
                    STANDARD.encode(hash)
                )
            }
            Self::Sha512 => {
                let salt = salt()?;
                let hash = sha512_salted(password, &salt);
                format!("$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
        })
    }
}

impl StoredHash {
    /// Decodes the hash field of a line; the error says what is wrong without quoting it.
    fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("$6$") {
            let Some((salt, hash)) = rest.split_once('$') else {
                return Err("a $6$ hash needs a salt and a hash separated by '$'".into());
            };
            Ok(Self::Sha512 {
                salt: decode_salt(salt)?,
                hash: decode_sha512(hash)?,
            })
        } else if let Some(rest) = text.strip_prefix("$7$") {
            let mut fields = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(
                    "a $7$ hash needs iterations, a salt and a hash separated by '$'".into(),
                );
            };
            let iterations = iterations
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or("the iteration count of a $7$ hash is not a positive number")?;
            Ok(Self::Pbkdf2Sha512 {
                iterations,
                salt: decode_salt(salt)?,
                hash: decode_sha512(hash)?,
            })
        } else if text.starts_with("$argon2id$") {
            let phc = PasswordHash::new(text).map_err(|e| format!("bad argon2id hash: {e}"))?;
            Params::try_from(&phc).map_err(|e| format!("bad argon2id parameters: {e}"))?;
            if phc.salt.is_none() || phc.hash.is_none() {
                return Err("an argon2id hash needs a salt and a hash".into());
            }
            Ok(Self::Argon2id(text.to_owned()))
        } else if text.starts_with('$') {
            Err("unknown hash format (known: $6$, $7$, $argon2id$)".into())
        } else {
            Err("not a hash (a plain-text password? hash it with `rallymq passwd`)".into())
        }
    }

    fn matches(&self, password: &[u8]) -> bool {
        match self {
            Self::Sha512 { salt, hash } => sha512_salted(password, salt).ct_eq(hash).into(),
            Self::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => pbkdf2_sha512(password, salt, *iterations)
                .ct_eq(hash)
                .into(),
            // Parsed at load, so a failure here is a wrong password. The crate compares in
            // constant time (`phc::Output`'s `PartialEq`).
            Self::Argon2id(text) => PasswordHash::new(text)
                .is_ok_and(|phc| Argon2::default().verify_password(password, &phc).is_ok()),
        }
    }
}

fn decode_salt(text: &str) -> Result<Vec<u8>, String> {
    match STANDARD.decode(text) {
        Ok(salt) if !salt.is_empty() => Ok(salt),
        Ok(_) => Err("empty salt".into()),
        Err(_) => Err("the salt is not base64".into()),
    }
}

fn decode_sha512(text: &str) -> Result<[u8; SHA512_LEN], String> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| "the hash is not base64".to_owned())?;
    <[u8; SHA512_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| format!("the hash is {} bytes, not 64", bytes.len()))
}

/// Mosquitto's `$6$`: SHA-512 over the password, then the salt.
fn sha512_salted(password: &[u8], salt: &[u8]) -> [u8; SHA512_LEN] {
    let mut digest = Sha512::new();
    digest.update(password);
    digest.update(salt);
    digest.finalize().into()
}

/// Mosquitto's `$7$`: PBKDF2-HMAC-SHA512 with a 64-byte output.
fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; SHA512_LEN] {
    let mut hash = [0u8; SHA512_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut hash);
    hash
}

/// Does the work of checking a password against an argon2id hash at the default cost.
fn spend_a_verification(password: &[u8]) {
    // The salt is fixed: nothing is stored or compared, only the time is spent.
    static ARGON2: LazyLock<Argon2<'static>> =
        LazyLock::new(|| Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default()));
    let mut output = [0u8; 32];
    let _ = ARGON2.hash_password_into(password, b"rallymq unknown user", &mut output);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines written by `mosquitto_passwd` 2.0.11 (`-b`, and `-H sha512 -b`), passwords
    /// "secret" and "hunter2".
    const MOSQUITTO_7: &str = "alice:$7$101$i62onZt+Px/dUNNB$h1vX1EayV42mt++qyl33kdaq2efRb91IpSR7rclJpR2qbEA/c0ZF8Xd76HIFqQpFFigl76Dp+X+ISb8jtq34Ig==";
    const MOSQUITTO_6: &str = "bob:$6$LDjA2XoTeCkC8cdH$BFkDVxEl4q1hUOAXb/w97smmX7B2y4hB8bi0KzYgLPd3kuSXClxnc3aHHbkmJUvcJPj00y2GfPkfArKNcKhd9A==";

    fn file(text: &str) -> PasswordFile {
        PasswordFile::parse(text).expect("valid password file")
    }

    #[test]
    fn mosquitto_pbkdf2_line_verifies() {
        let file = file(MOSQUITTO_7);
        assert_eq!(file.verify("alice", b"secret"), Ok(()));
        assert_eq!(file.verify("alice", b"Secret"), Err(Refusal::WrongPassword));
        assert_eq!(file.verify("alice", b""), Err(Refusal::WrongPassword));
    }

    #[test]
    fn mosquitto_sha512_line_verifies() {
        let file = file(MOSQUITTO_6);
        assert_eq!(file.verify("bob", b"hunter2"), Ok(()));
        assert_eq!(file.verify("bob", b"hunter3"), Err(Refusal::WrongPassword));
    }

    #[test]
    fn sha512_is_the_hash_of_password_then_salt() {
        // The line built from the format's definition, not through `HashScheme`.
        let salt = b"0123456789ab";
        let line = format!(
            "u:$6${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(Sha512::digest([b"pw".as_slice(), salt].concat()))
        );
        assert_eq!(file(&line).verify("u", b"pw"), Ok(()));
    }

    #[test]
    fn pbkdf2_matches_rfc_test_vector_shape() {
        // PBKDF2-HMAC-SHA512, "password"/"salt", 1 iteration: the widely published vector
        // (e.g. in the `pbkdf2` crate's and Python's hashlib tests).
        let expected = "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce";
        let hash = pbkdf2_sha512(b"password", b"salt", 1);
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn unknown_user_is_told_apart_from_a_wrong_password() {
        let file = file(MOSQUITTO_7);
        assert_eq!(file.verify("mallory", b"secret"), Err(Refusal::UnknownUser));
        assert_eq!(file.verify("alice", b"nope"), Err(Refusal::WrongPassword));
        // Both are the same CONNACK code.
        assert_eq!(
            Refusal::UnknownUser.reason_code(),
            Refusal::WrongPassword.reason_code()
        );
    }

    #[test]
    fn every_scheme_round_trips_through_the_file_text() {
        for scheme in [
            HashScheme::Argon2id,
            HashScheme::Sha512Pbkdf2,
            HashScheme::Sha512,
        ] {
            let mut file = PasswordFile::default();
            file.set_password("carol", b"pa:ss word", scheme).unwrap();
            let reread = PasswordFile::parse(&file.to_string()).expect("our own output parses");
            assert_eq!(reread.verify("carol", b"pa:ss word"), Ok(()), "{scheme:?}");
            assert_eq!(
                reread.verify("carol", b"pa:ss wore"),
                Err(Refusal::WrongPassword),
                "{scheme:?}"
            );
        }
    }

    #[test]
    fn argon2id_lines_are_phc_strings_with_the_crates_default_cost() {
        let mut file = PasswordFile::default();
        file.set_password("dave", b"pw", HashScheme::Argon2id)
            .unwrap();
        let text = file.to_string();
        assert!(
            text.starts_with("dave:$argon2id$v=19$m=19456,t=2,p=1$"),
            "{text}"
        );
    }

    #[test]
    fn two_hashes_of_one_password_differ_by_their_salt() {
        let mut file = PasswordFile::default();
        file.set_password("a", b"same", HashScheme::Sha512).unwrap();
        let first = file.to_string();
        file.set_password("a", b"same", HashScheme::Sha512).unwrap();
        assert_ne!(first, file.to_string());
    }

    #[test]
    fn editing_keeps_other_lines_and_their_order() {
        let text = format!("# users\n{MOSQUITTO_7}\n\n{MOSQUITTO_6}\n# end\n");
        let mut file = file(&text);
        file.set_password("alice", b"new", HashScheme::Sha512Pbkdf2)
            .unwrap();
        file.set_password("erin", b"x", HashScheme::Sha512).unwrap();
        let written = file.to_string();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines[0], "# users");
        assert!(lines[1].starts_with("alice:$7$1000$"));
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], MOSQUITTO_6);
        assert_eq!(lines[4], "# end");
        assert!(lines[5].starts_with("erin:$6$"));
        assert_eq!(lines.len(), 6);
        let reread = PasswordFile::parse(&written).unwrap();
        assert_eq!(reread.verify("alice", b"new"), Ok(()));
        assert_eq!(reread.verify("bob", b"hunter2"), Ok(()));

        assert!(file.remove("alice"));
        assert!(!file.remove("alice"));
        assert_eq!(file.users().collect::<Vec<_>>(), ["bob", "erin"]);
        assert!(file.to_string().starts_with("# users\n\nbob:"));
    }

    #[test]
    fn blanks_around_fields_and_crlf_are_tolerated_as_mosquitto_does() {
        let line = MOSQUITTO_6.replacen(':', " : ", 1);
        let file = file(&format!("{line}  \r\n"));
        assert_eq!(file.verify("bob", b"hunter2"), Ok(()));
    }

    #[test]
    fn broken_lines_are_errors_that_name_the_line_and_not_its_text() {
        let cases = [
            ("alice:plaintext-password", "not a hash"),
            ("no colon here", "no ':'"),
            (":$6$abc$def", "empty user name"),
            ("u:$5$abc$def", "unknown hash format"),
            ("u:$6$onlysalt", "salt and a hash"),
            ("u:$6$!!!$AAAA", "salt is not base64"),
            ("u:$6$c2FsdA==$AAAA", "not 64"),
            ("u:$7$0$c2FsdA==$AAAA", "positive number"),
            ("u:$7$ten$c2FsdA==$AAAA", "positive number"),
            ("u:$7$10$c2FsdA==", "iterations, a salt and a hash"),
            ("u:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ", "argon2id"),
            ("u:$argon2id$garbage", "argon2id"),
        ];
        for (line, expected) in cases {
            let text = format!("# first\n{line}\n");
            let (number, reason) = match PasswordFile::parse(&text) {
                Ok(_) => panic!("{line:?} was accepted"),
                Err(error) => error,
            };
            assert_eq!(number, 2, "{line:?}");
            assert!(reason.contains(expected), "{line:?}: {reason}");
            let secret = line.split_once(':').map_or(line, |(_, rest)| rest);
            assert!(!reason.contains(secret), "{line:?} quoted in {reason}");
        }
    }

    #[test]
    fn a_user_named_twice_is_an_error() {
        let text = format!("{MOSQUITTO_6}\n{}\n", MOSQUITTO_6);
        assert_eq!(PasswordFile::parse(&text).err().map(|e| e.0), Some(2));
    }

    #[test]
    fn user_names_that_would_not_read_back_are_refused() {
        let mut file = PasswordFile::default();
        for user in ["", "a:b", "#admin", " alice", "bob ", "x\ny"] {
            let error = file
                .set_password(user, b"pw", HashScheme::Sha512)
                .expect_err(user);
            assert!(matches!(error, Error::UserName { .. }), "{user:?}");
        }
        assert_eq!(file.users().count(), 0);
    }

    #[test]
    fn debug_output_shows_users_not_hashes() {
        let shown = format!("{:?}", file(MOSQUITTO_7));
        assert!(shown.contains("alice"));
        assert!(!shown.contains("i62onZt"), "{shown}");
    }

    #[cfg(unix)]
    #[test]
    fn save_creates_mode_0600_and_keeps_an_existing_files_mode() {
        use std::os::unix::fs::PermissionsExt;
        let directory = std::env::temp_dir().join(format!("rallymq-pw-{}", std::process::id()));
        fs::create_dir_all(&directory).unwrap();
        let path = directory.join("passwd");
        let _ = fs::remove_file(&path);
        let mut file = PasswordFile::default();
        file.set_password("alice", b"pw", HashScheme::Sha512)
            .unwrap();
        file.save(&path).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        file.set_password("bob", b"pw", HashScheme::Sha512).unwrap();
        file.save(&path).unwrap();
        assert_eq!(mode(&path), 0o640);
        let reread = PasswordFile::load(&path).unwrap();
        assert_eq!(reread.users().collect::<Vec<_>>(), ["alice", "bob"]);
        // No temporary file is left beside it.
        assert_eq!(fs::read_dir(&directory).unwrap().count(), 1);
        fs::remove_dir_all(&directory).unwrap();
    }
}
