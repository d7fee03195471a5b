//! `rallymq passwd`: adds, updates or deletes a user of a password file, with
//! `mosquitto_passwd`'s flags and messages.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;
use rallymq_broker::{HashScheme, PasswordFile};

/// `rallymq passwd` flags: `mosquitto_passwd`'s.
#[derive(Debug, Args)]
#[command(after_help = "\
Without -b the password is asked for twice, not echoed when typed at a terminal (from a pipe,
two lines are read). Other users' lines, comments and blank lines are kept as they are. A new
file is readable by its owner only (mode 0600); an existing one keeps its mode and owner.

The broker reads Mosquitto's $6$ and $7$ lines as they are; Mosquitto 2.0 cannot read
argon2id lines (Mosquitto 2.1 built with libargon2 can): give -H sha512-pbkdf2 for a file that
Mosquitto 2.0 must read too.")]
pub(crate) struct PasswdArgs {
    /// Batch mode: the password is the third argument. It is then visible in the process list
    /// and the shell's history.
    #[arg(short = 'b', requires = "password")]
    batch: bool,

    /// Create a new password file, replacing an existing one.
    #[arg(short = 'c', conflicts_with = "delete")]
    create: bool,

    /// Delete the user rather than add or update them.
    #[arg(short = 'D', conflicts_with = "batch")]
    delete: bool,

    /// The hash: argon2id, or sha512-pbkdf2 (Mosquitto 2.0's) or sha512 (Mosquitto 1.6's)
    /// for a file that Mosquitto reads too.
    #[arg(
        short = 'H',
        value_name = "HASH",
        default_value = "argon2id",
        value_parser = ["argon2id", "sha512-pbkdf2", "sha512"],
    )]
    hash: String,

    /// The password file.
    file: PathBuf,

    /// The user to add, update or delete.
    user: String,

    /// The password, with -b.
    #[arg(requires = "batch")]
    password: Option<String>,
}

/// Runs `rallymq passwd`; the error is the line to print on stderr (exit status 1), worded as
/// `mosquitto_passwd` words it.
pub(crate) fn run(args: PasswdArgs) -> Result<(), String> {
    edit(args).map_err(|message| {
        if message.starts_with("Warning: ") {
            message
        } else {
            format!("Error: {message}")
        }
    })
}

fn edit(args: PasswdArgs) -> Result<(), String> {
    let scheme =
        HashScheme::from_name(&args.hash).ok_or_else(|| format!("unknown hash {:?}", args.hash))?;
    if args.user.contains(':') {
        return Err("Username must not contain the ':' character.".into());
    }
    let mut file = if args.create {
        PasswordFile::default()
    } else {
        if !args.file.exists() {
            return Err(format!(
                "Unable to open password file {}. No such file or directory.",
                args.file.display()
            ));
        }
        PasswordFile::load(&args.file).map_err(|e| e.to_string())?
    };
    if args.delete {
        if !file.remove(&args.user) {
            // mosquitto_passwd's warning, and its exit status.
            return Err(format!(
                "Warning: User {} not found in password file.",
                args.user
            ));
        }
    } else {
        let password = match args.password {
            Some(password) => password,
            None => ask_twice()?,
        };
        file.set_password(&args.user, password.as_bytes(), scheme)
            .map_err(|e| e.to_string())?;
    }
    file.save(&args.file).map_err(|e| e.to_string())
}

/// The password, asked twice: without echo at a terminal, else two lines of stdin.
fn ask_twice() -> Result<String, String> {
    let first = ask("Password: ")?;
    let second = ask("Reenter password: ")?;
    if first != second {
        return Err("Passwords do not match.".into());
    }
    Ok(first)
}

fn ask(prompt: &str) -> Result<String, String> {
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt).map_err(|e| format!("cannot read the password: {e}"))?
    } else {
        let mut stdout = std::io::stdout();
        let _ = write!(stdout, "{prompt}");
        let _ = stdout.flush();
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password: {e}"))?;
        let _ = writeln!(stdout);
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        return Err("Empty password.".into());
    }
    Ok(password)
}
