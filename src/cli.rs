//! Command-line definitions (clap derive). The names are the contract of maildird(8).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
        /// Read the password from standard input instead of asking.
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
    /// List live sessions (over the control socket).
    Who {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End sessions: by id, by user or by client address.
    #[command(group = clap::ArgGroup::new("target").required(true).args(["id", "user", "ip"]))]
    Kick {
        /// A session id from `who`.
        id: Option<u64>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
    },
    /// Follow session events (connect, auth, delivery, close) until interrupted.
    Events {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user and create their Maildir.
    Add {
        name: String,
        #[arg(long)]
        password_stdin: bool,
        /// pop3, submit (repeatable; default: pop3 and submit).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Share the Maildir with this Unix group (directories 2770, messages 0660),
        /// so that mutt run by its members reads and flags the same mail.
        #[arg(long, value_name = "GROUP")]
        unix_group: Option<String>,
    },
    /// Change a user's password.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user from the users file (their Maildir is kept).
    Del { name: String },
    /// List users and roles.
    List,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "smtp" => Ok(Protocol::Smtp),
        "submission" => Ok(Protocol::Submission),
        "pop3" => Ok(Protocol::Pop3),
        _ => Err(format!("unknown protocol {s:?} (smtp, submission, pop3)")),
    }
}
