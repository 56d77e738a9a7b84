//! The `exec` message filter: the message is piped to a program (no shell),
//! which either writes the new message to its standard output (`result =
//! "message"`, e.g. `spamc`) or answers with its exit code (`result =
//! "exit_code"`: 0 accept, 1 reject, 75 (EX_TEMPFAIL) defer). Its output is
//! kept in an unlinked file in the Maildir's `tmp/`, never in memory, and
//! bounded in size; the whole run is bounded in time (the program is killed).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::process::Stdio;

use super::message::{HeaderTooBig, Message};
use super::{Context, ExecConfig, ExecResult, Verdict};
use crate::maildir::Maildir;

/// The exit code that defers the message (sysexits.h EX_TEMPFAIL).
pub const EX_TEMPFAIL: i32 = 75;

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Run the program over `msg`. Returns the message as it now is (the
/// program's output in `message` mode, else unchanged) and the verdict, or
/// why the program failed (then the message is unchanged).
pub async fn run(
    cfg: &ExecConfig,
    ctx: &Context,
    msg: Message,
    staging: &Maildir,
    max_size: u64,
) -> (Message, Result<Verdict, String>) {
    match run_program(cfg, ctx, &msg, staging, max_size).await {
        Ok(Ran::Verdict(v)) => (msg, Ok(v)),
        Ok(Ran::Output(file)) => {
            let host = ctx.hostname.clone();
            let read = tokio::task::spawn_blocking(move || Message::read(file, &host)).await;
            match read {
                Ok(Ok(Ok(m))) => (m, Ok(Verdict::Accept)),
                // The program's doing, not the sender's: a filter failure.
                Ok(Ok(Err(HeaderTooBig))) => {
                    (msg, Err("its output's header section is over 1 MiB".into()))
                }
                Ok(Err(e)) => (msg, Err(format!("reading its output: {e}"))),
                Err(e) => (msg, Err(format!("reading its output: {e}"))),
            }
        }
        Err(e) => (msg, Err(e)),
    }
}

enum Ran {
    Verdict(Verdict),
    /// The new message (LF line ends).
    Output(File),
}

async fn run_program(
    cfg: &ExecConfig,
    ctx: &Context,
    msg: &Message,
    staging: &Maildir,
    max_size: u64,
) -> Result<Ran, String> {
    let err = |what: &str, e: io::Error| format!("{what}: {e}");
    let Some((program, args)) = cfg.command.split_first() else {
        return Err("no command".into());
    };
    let source = msg.source().map_err(|e| err("reading the message", e))?;
    let (in_r, in_w) = pipe().map_err(|e| err("pipe", e))?;
    let want_output = cfg.result == ExecResult::Message;
    let (out_r, out_w) = if want_output {
        let (r, w) = pipe().map_err(|e| err("pipe", e))?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let scratch = if want_output {
        Some(
            crate::maildir::deliver::scratch_file(staging, &ctx.hostname)
                .map_err(|e| err("scratch file", e))?,
        )
    } else {
        None
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("MAILDIRD_ID", &ctx.id)
        .env("MAILDIRD_SENDER", &ctx.mail_from)
        .env("MAILDIRD_RECIPIENTS", ctx.rcpts.join(","))
        .env("MAILDIRD_HELO", &ctx.helo)
        .env(
            "MAILDIRD_CLIENT_ADDRESS",
            ctx.client
                .map(|a| a.ip().to_canonical().to_string())
                .unwrap_or_default(),
        )
        .stdin(Stdio::from(in_r))
        .stdout(match out_w {
            Some(w) => Stdio::from(w),
            None => Stdio::null(),
        })
        .stderr(Stdio::inherit())
        // Its own process group: a shell's children go with it when it is
        // killed, and cannot hold our pipes open.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(u) = &ctx.auth_user {
        cmd.env("MAILDIRD_AUTH_USER", u);
    }
    let spawned = cmd.spawn();
    // Our copies of the child's ends must close, or its output never ends.
    drop(cmd);
    let mut child = spawned.map_err(|e| err(&format!("cannot run {program}"), e))?;
    let group = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(nix::unistd::Pid::from_raw);
    // Unless the run ends cleanly (the program exited and its pipes
    // closed), nothing of it outlives the run.
    let mut reaper = GroupKiller(group);
    // The writer and the reader run on their own threads, owning what they
    // use: a program that never reads or never exits cannot hold us past
    // the time limit.
    let writer = tokio::task::spawn_blocking(move || {
        let mut w = File::from(in_w);
        // A program that answers before reading it all closes the pipe:
        // that is its right (EPIPE is no failure).
        match source.write_to(&mut w) {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e),
            _ => Ok(()),
        }
    });
    let limit = max_size.saturating_add(1024 * 1024);
    let reader = out_r.zip(scratch).map(|(r, scratch)| {
        tokio::task::spawn_blocking(move || copy_lf(File::from(r), scratch, limit))
    });
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(err("waiting for it", e)),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(format!(
                "{program} took longer than {:?}; killed",
                cfg.timeout
            ));
        }
    };
    // A program that read a message cut short (we could not read it from
    // the scratch file) must not be believed.
    let written = match tokio::time::timeout_at(deadline, writer).await {
        Ok(Ok(r)) => r.map_err(|e| err("writing the message to it", e)),
        Ok(Err(e)) => Err(format!("writing the message to it: {e}")),
        Err(_) => Err("writing the message to it did not end in time".into()),
    };
    written?;
    if reader.is_none() {
        reaper.disarm();
    }
    match cfg.result {
        ExecResult::ExitCode => match status.code() {
            Some(0) => Ok(Ran::Verdict(Verdict::Accept)),
            Some(1) => Ok(Ran::Verdict(Verdict::Reject(None))),
            Some(EX_TEMPFAIL) => Ok(Ran::Verdict(Verdict::Tempfail(None))),
            _ => Err(format!("{program} {status}")),
        },
        ExecResult::Message => {
            if !status.success() {
                return Err(format!("{program} {status}"));
            }
            let Some(reader) = reader else {
                return Err("no output".into());
            };
            match tokio::time::timeout_at(deadline, reader).await {
                Ok(Ok(Ok((file, n)))) if n > 0 => {
                    reaper.disarm();
                    Ok(Ran::Output(file))
                }
                Ok(Ok(Ok(_))) => {
                    reaper.disarm();
                    Err(format!("{program} wrote no message"))
                }
                Ok(Ok(Err(e))) => Err(err("its output", e)),
                Ok(Err(e)) => Err(format!("its output: {e}")),
                Err(_) => Err(format!("{program}'s output did not end in time")),
            }
        }
    }
}

/// Kills the program's process group when dropped (its children too),
/// unless disarmed: after a clean end the group is gone and its id may be
/// anyone's.
struct GroupKiller(Option<nix::unistd::Pid>);

impl GroupKiller {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pg) = self.0 {
            // ESRCH: all gone already.
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Copy `r` into `out` with CRLF (and a lone CR) turned into LF, as
/// messages are stored; at most `limit` bytes. Returns the file and its size.
fn copy_lf(mut r: File, out: File, limit: u64) -> io::Result<(File, u64)> {
    let mut w = io::BufWriter::with_capacity(64 * 1024, out);
    let mut buf = vec![0u8; 64 * 1024];
    let mut line = Vec::with_capacity(64 * 1024);
    let mut total = 0u64;
    let mut cr = false;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        line.clear();
        for &b in buf.get(..n).unwrap_or_default() {
            match (cr, b) {
                (true, b'\n') => {}
                (_, b'\r') => line.push(b'\n'),
                _ => line.push(b),
            }
            cr = b == b'\r';
        }
        total += line.len() as u64;
        if total > limit {
            return Err(io::Error::other(format!("output over {limit} bytes")));
        }
        w.write_all(&line)?;
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    Ok((file, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom};

    #[test]
    fn output_line_ends_become_lf_across_reads() {
        let (r, w) = pipe().unwrap();
        let mut w = File::from(w);
        let t = std::thread::spawn(move || {
            w.write_all(b"A: 1\r").unwrap();
            w.write_all(b"\nB: 2\r\n\r\nbody\rx\n").unwrap();
        });
        let (mut f, n) = copy_lf(File::from(r), tempfile::tempfile().unwrap(), 100).unwrap();
        t.join().unwrap();
        let mut s = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "A: 1\nB: 2\n\nbody\nx\n");
        assert_eq!(n, s.len() as u64);
        let (r, w) = pipe().unwrap();
        std::thread::spawn(move || File::from(w).write_all(&[b'x'; 300]));
        assert!(copy_lf(File::from(r), tempfile::tempfile().unwrap(), 100).is_err());
    }
}
