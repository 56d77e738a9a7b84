//! Logging: journald (structured fields) when stderr is the journal, plain text
//! on stderr otherwise (no ANSI colours unless stderr is a terminal).

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Does `$JOURNAL_STREAM` name our stderr (systemd.exec(5))?
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let stderr = std::io::stderr();
    nix::sys::stat::fstat(stderr.as_fd())
        .is_ok_and(|st| dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino))
}

/// Install the global subscriber. `MAILDIRD_LOG` (else `RUST_LOG`) overrides the
/// default level (info).
pub fn init() {
    let filter = EnvFilter::try_from_env("MAILDIRD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = if stderr_is_journal() {
        tracing_journald::layer().ok()
    } else {
        None
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = match journald {
        Some(j) => registry
            .with(j.with_syslog_identifier("maildird".into()))
            .try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false),
            )
            .try_init(),
    };
    let _ = result;
}

/// The daemon's panic policy: a panic anywhere (a session, the runtime's own
/// driver, a blocking-pool thread) is logged and ends the process with
/// `abort()` (SIGABRT). Without it a panicking thread dies alone and leaves a
/// half-alive daemon: under injected write faults tokio's I/O driver panicked
/// ("failed to wake I/O driver"), a client never got its reply and the daemon
/// then ignored SIGTERM. A process that is gone is restarted by systemd
/// (`Restart=on-failure` counts SIGABRT), which holds the listening sockets
/// meanwhile; a half-alive one is never noticed. Release builds also set
/// `panic = "abort"`; this hook makes dev and test builds behave the same and
/// says why the daemon stopped. Installed first thing by `daemon::serve`.
pub fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("(unnamed)");
        // Only when RUST_BACKTRACE (or RUST_LIB_BACKTRACE) asks for one.
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => backtrace.to_string(),
            _ => String::new(),
        };
        if tracing::dispatcher::has_been_set() {
            tracing::error!(
                panic = message,
                location,
                thread,
                backtrace,
                "panic: aborting (the service manager restarts maildird)"
            );
        } else {
            // No subscriber (not started through `main`): plain stderr, and
            // never a second panic from a failed write.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "maildird: panic in thread {thread} at {location}: {message}; aborting{backtrace}"
            );
        }
        std::process::abort();
    }));
}

/// Characters of a user name that logs show; longer names are cut.
const LOGGED_NAME_CHARS: usize = 64;

/// A user name as it appears in logs: Debug-quoted (a hostile name cannot
/// forge a line) and cut after 64 characters with its full length noted, so a
/// flood of failed logins with 4 KB names cannot fill the journal.
pub struct LogName<'a>(pub &'a str);

impl std::fmt::Debug for LogName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(LOGGED_NAME_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(
                f,
                "{:?}...({} bytes)",
                self.0.get(..cut).unwrap_or_default(),
                self.0.len()
            ),
        }
    }
}

#[cfg(test)]
mod log_name_tests {
    use super::LogName;

    #[test]
    fn log_names_are_quoted_and_bounded() {
        assert_eq!(format!("{:?}", LogName("alice")), "\"alice\"");
        assert_eq!(format!("{:?}", LogName("a\nb")), "\"a\\nb\"");
        let long = "é".repeat(3000);
        let shown = format!("{:?}", LogName(&long));
        assert!(shown.ends_with("...(6000 bytes)"), "{shown}");
        assert_eq!(shown.chars().filter(|&c| c == 'é').count(), 64);
    }
}
