//! `rallymq passwd`, run as a program: the files it writes verify with the broker's own
//! reader, keep other users' lines, and (with Mosquitto's hashes) let mosquitto_pub log in to
//! a real Mosquitto.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rallymq_broker::{PasswordFile, Refusal};
use rallymq_test_support::{Mosquitto, run_id};

const BIN: &str = env!("CARGO_BIN_EXE_rallymq");

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("rallymq-passwd-{}", run_id()));
        fs::create_dir_all(&path).expect("a temporary directory");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn passwd(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the rallymq binary runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("stdin is written");
    child.wait_with_output().expect("rallymq passwd exits")
}

fn ok(args: &[&str]) {
    let output = passwd(args, "");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn failure(args: &[&str], stdin: &str) -> (i32, String) {
    let output = passwd(args, stdin);
    assert!(!output.status.success(), "{args:?} succeeded");
    (
        output.status.code().expect("an exit code"),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn load(path: &Path) -> PasswordFile {
    PasswordFile::load(path).expect("the written file parses")
}

#[test]
fn batch_mode_creates_adds_updates_and_deletes() {
    let dir = TempDir::new();
    let path = dir.0.join("passwd");
    let file = path.to_str().unwrap();
    ok(&["-c", "-b", file, "alice", "first"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert!(
        fs::read_to_string(&path)
            .unwrap()
            .starts_with("alice:$argon2id$v=19$")
    );
    assert_eq!(load(&path).verify("alice", b"first"), Ok(()));

    // Comments and other users stay where they are while alice changes and bob is added.
    let mut text = fs::read_to_string(&path).unwrap();
    text.insert_str(0, "# managed by hand\n");
    text.push_str("# end of list\n");
    fs::write(&path, &text).unwrap();
    ok(&["-b", file, "bob", "bobs password"]);
    ok(&["-b", file, "alice", "second"]);
    let written = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines[0], "# managed by hand");
    assert!(lines[1].starts_with("alice:"));
    assert_eq!(lines[2], "# end of list");
    assert!(lines[3].starts_with("bob:"));
    let passwords = load(&path);
    assert_eq!(passwords.verify("alice", b"second"), Ok(()));
    assert_eq!(
        passwords.verify("alice", b"first"),
        Err(Refusal::WrongPassword)
    );
    assert_eq!(passwords.verify("bob", b"bobs password"), Ok(()));

    ok(&["-D", file, "alice"]);
    assert_eq!(load(&path).users().collect::<Vec<_>>(), ["bob"]);
    let (code, stderr) = failure(&["-D", file, "alice"], "");
    assert_eq!(code, 1);
    assert_eq!(stderr, "Warning: User alice not found in password file.\n");

    // -c replaces the whole file.
    ok(&["-c", "-b", file, "carol", "pw"]);
    assert_eq!(load(&path).users().collect::<Vec<_>>(), ["carol"]);
}

#[test]
fn without_b_the_password_is_asked_twice() {
    let dir = TempDir::new();
    let path = dir.0.join("passwd");
    let file = path.to_str().unwrap();
    let output = passwd(&["-c", file, "alice"], "typed secret\ntyped secret\n");
    assert!(output.status.success(), "{output:?}");
    let prompts = String::from_utf8_lossy(&output.stdout);
    assert!(prompts.contains("Password: ") && prompts.contains("Reenter password: "));
    assert!(!prompts.contains("typed secret"), "{prompts}");
    assert_eq!(load(&path).verify("alice", b"typed secret"), Ok(()));

    let (_, stderr) = failure(&[file, "alice"], "one\ntwo\n");
    assert_eq!(stderr, "Error: Passwords do not match.\n");
    let (_, stderr) = failure(&[file, "alice"], "\n");
    assert_eq!(stderr, "Error: Empty password.\n");
    // The file is untouched by the failures.
    assert_eq!(load(&path).verify("alice", b"typed secret"), Ok(()));
}

#[test]
fn mistakes_are_reported_as_mosquitto_passwd_reports_them() {
    let dir = TempDir::new();
    let path = dir.0.join("passwd");
    let file = path.to_str().unwrap();
    let (code, stderr) = failure(&["-b", file, "alice", "pw"], "");
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("Error: Unable to open password file") && stderr.contains(file),
        "{stderr}"
    );
    let (code, stderr) = failure(&["-c", "-b", file, "a:b", "pw"], "");
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "Error: Username must not contain the ':' character.\n"
    );
    fs::write(&path, "alice:plain-text-password\n").unwrap();
    let (code, stderr) = failure(&["-b", file, "bob", "pw"], "");
    assert_eq!(code, 1);
    assert!(stderr.contains("line 1"), "{stderr}");
    assert!(!stderr.contains("plain-text-password"), "{stderr}");
    // Usage errors are clap's, with exit code 2.
    for args in [
        &["-b", file, "alice"][..],
        &[file, "alice", "pw"],
        &["-D", "-b", file, "alice", "pw"],
        &["-H", "md5", "-c", "-b", file, "alice", "pw"],
    ] {
        let (code, _) = failure(args, "");
        assert_eq!(code, 2, "{args:?}");
    }
}

/// The peer test for `rallymq passwd`: Mosquitto reads a file it wrote with
/// Mosquitto's hashes and lets mosquitto_pub in with the right password only.
#[test]
fn mosquitto_accepts_a_file_written_with_its_hashes() {
    let dir = TempDir::new();
    let path = dir.0.join("passwd");
    let file = path.to_str().unwrap();
    ok(&[
        "-c",
        "-H",
        "sha512-pbkdf2",
        "-b",
        file,
        "alice",
        "pbkdf2 pw",
    ]);
    ok(&["-H", "sha512", "-b", file, "bob", "sha512 pw"]);
    // Mosquitto started as root reads its files as the `mosquitto` user: keep it root.
    let broker = Mosquitto::start_with(&format!(
        "allow_anonymous false\nuser root\npassword_file {file}\n"
    ));
    let publish = |user: &str, password: &str| {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.tcp.to_string()])
            .args(["-u", user, "-P", password, "-t", "t", "-m", "m", "-q", "1"])
            .output()
            .expect("mosquitto_pub must be installed for this test")
    };
    for (user, password) in [("alice", "pbkdf2 pw"), ("bob", "sha512 pw")] {
        let output = publish(user, password);
        assert!(
            output.status.success(),
            "{user}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !publish(user, "wrong").status.success(),
            "{user} with a wrong password"
        );
    }
}
