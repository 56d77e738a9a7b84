//! Command-line definitions (clap derive). The names are the contract of maildird(8).

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{DEFAULT_PATH, Protocol};

#[derive(Debug, Parser)]
#[command(
    name = "maildird",
    version,
    about = "SMTP receiver and POP3 server over Maildir"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(short = 'c', long = "config", global = true, default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (systemd, standalone, or inetd with --inetd).
    Serve {
        /// Serve one session on stdin/stdout (Accept=yes socket units, inetd).
        #[arg(long, value_name = "PROTOCOL", value_parser = parse_protocol)]
        inetd: Option<Protocol>,
    },
    /// Validate the configuration and print the effective settings.
    CheckConfig,
    /// Edit the users file (atomically).
    #[command(subcommand)]
    User(UserCommand),
    /// Print a password hash for the users file (like `doveadm pw`).
    HashPassword {
        /// Read the password from the first line of standard input instead of asking.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Connect to HOST:PORT through client-side filters and relay stdin/stdout
    /// (for mutt's `tunnel`, fetchmail's `plugin`, swaks `--pipe`).
    Tunnel {
        /// Filters in wire -> protocol order, as on the server's listener.
        #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
        filters: Vec<String>,
        /// The server, e.g. mail.example.org:110.
        #[arg(value_name = "HOST:PORT")]
        target: String,
    },
    /// Summarise the daemon's metrics: sessions, deliveries, refusals (over the control socket).
    Status {
        /// Every metric as one JSON object of `series: value` instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// List live sessions (over the control socket).
    Who {
        /// One JSON array of sessions (`[]` when there are none) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End sessions: by id, by user or by client address.
    #[command(group = clap::ArgGroup::new("target").required(true).args(["id", "user", "ip"]))]
    Kick {
        /// A session id from `who`.
        id: Option<u64>,
        /// End every session logged in as this user.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// End every session from this client address (the real one behind PROXY, or the TCP peer).
        #[arg(long, value_name = "ADDR")]
        ip: Option<std::net::IpAddr>,
    },
    /// Follow session events (connect, auth, delivery, close) until interrupted.
    Events {
        /// One JSON object per event and line, with typed fields, instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script for bash, zsh or fish on standard output.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// The shells `completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user and create their Maildir.
    Add {
        /// The login name (also the Maildir's directory name under mail_root).
        name: String,
        /// Read the password from the first line of standard input instead of asking.
        #[arg(long)]
        password_stdin: bool,
        /// pop3, submit (repeatable; default: pop3 and submit).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Share the Maildir with this Unix group (directories 2770, messages 0660),
        /// so that mutt run by its members reads and flags the same mail.
        #[arg(long, value_name = "GROUP")]
        unix_group: Option<String>,
    },
    /// Change a user's password.
    Passwd {
        /// An existing user.
        name: String,
        /// Read the password from the first line of standard input instead of asking.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user from the users file (their Maildir is kept).
    Del {
        /// An existing user.
        name: String,
    },
    /// List users and roles.
    List {
        /// One JSON array of users (`[]` when there are none) instead of lines.
        #[arg(long)]
        json: bool,
    },
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "smtp" => Ok(Protocol::Smtp),
        "submission" => Ok(Protocol::Submission),
        "pop3" => Ok(Protocol::Pop3),
        _ => Err(format!("unknown protocol {s:?} (smtp, submission, pop3)")),
    }
}

/// The completion script for `shell` (`maildird completions SHELL`; the
/// packages ship them, generated at build time).
pub fn completion_script(shell: Shell) -> String {
    use clap_complete::Shell as S;
    let target = match shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(target, &mut Cli::command(), "maildird", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}
