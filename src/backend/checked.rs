//! A message under the sender checks (`[checks]`) or message filters
//! (`message_filters`): its body is staged in an unlinked scratch file while
//! it arrives; at the end it is verified (SPF, DKIM, DMARC, iprev), read back
//! as header fields (any forged `Authentication-Results:` of ours removed)
//! over the staged body, filtered, and only then written as the message file,
//! with `Authentication-Results:` at the top, into the inbox or the `.Junk`
//! folder, or refused, or discarded.
//!
//! Memory: a message is held whole only while it is verified, at most
//! `checks.max_concurrent` at once, in its CRLF form (its size plus one byte
//! per line): about `max_concurrent × max_message_size` at worst. Otherwise
//! only its header section is held (at most 1 MiB); the body is streamed from
//! the scratch file to the filters and into the message file.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use jiff::Timestamp;

use super::smtp::{storage_failure, temp_failure, trace_headers};
use crate::checks::header::extend_crlf;
use crate::checks::{Action, Checks, Verdict};
use crate::maildir::deliver::Delivery;
use crate::maildir::name::UniqueName;
use crate::maildir::quota::QuotaRule;
use crate::maildir::{Maildir, fsat};
use crate::msgfilter::message::{HeaderTooBig, Message};
use crate::msgfilter::{self, Context, Decision, Filter};
use crate::smtp::backend::{AuthSummary, Envelope, SessionInfo, Stored};
use crate::smtp::reply::Reply;

/// The folder junk goes to (Maildir++, maildird.toml(5) CHECKS).
pub const JUNK: &str = ".Junk";

/// A message whose body is being staged for the checks or the message
/// filters.
pub struct Staged {
    /// None once `commit` has taken it.
    file: Option<BufWriter<File>>,
    /// The name (and so the id) announced when the body began.
    name: UniqueName,
    checks: Option<Arc<Checks>>,
    filters: Option<Arc<[Filter]>>,
    /// The Maildir whose `tmp/` holds the scratch files.
    staging: Maildir,
    info: SessionInfo,
    env: Envelope,
    host: String,
    delivered_to: Option<String>,
    /// The most read back (a staged file can only be as big as the session let it).
    max_read: u64,
    /// Bytes and line ends staged: the wire form's exact size, known
    /// without reading the file twice.
    staged: (u64, u64),
    quotas: Vec<Option<QuotaRule>>,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("id", &self.name.id())
            .finish()
    }
}

/// What `Staged::new` needs besides the scratch file.
pub struct StageParams {
    pub checks: Option<Arc<Checks>>,
    pub filters: Option<Arc<[Filter]>>,
    pub info: SessionInfo,
    pub env: Envelope,
    pub host: String,
    pub delivered_to: Option<String>,
    pub max_read: u64,
    /// The quota rule of each target, in order.
    pub quotas: Vec<Option<QuotaRule>>,
}

/// Where the message goes, once checks and filters have spoken.
struct Outcome {
    verdict: Option<Verdict>,
    folder: Option<&'static str>,
    /// The message as checks and filters left it.
    message: Message,
}

impl Staged {
    /// Stage into `scratch` (blocking code: called off the async threads).
    pub fn new(scratch: File, staging: Maildir, p: StageParams) -> Staged {
        Staged {
            file: Some(BufWriter::with_capacity(64 * 1024, scratch)),
            name: UniqueName::generate(&p.host),
            checks: p.checks,
            filters: p.filters,
            staging,
            info: p.info,
            env: p.env,
            host: p.host,
            delivered_to: p.delivered_to,
            max_read: p.max_read,
            staged: (0, 0),
            quotas: p.quotas,
        }
    }

    pub fn id(&self) -> &str {
        self.name.id()
    }

    /// Append body bytes (blocking).
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("staged message already committed"));
        };
        file.write_all(bytes)?;
        self.staged = counted(self.staged, bytes);
        Ok(())
    }

    /// Append `last` (the final batch), check and filter, then store (or
    /// refuse, or discard). `targets` and `mailboxes` in the same order.
    pub async fn commit(
        mut self,
        last: Vec<u8>,
        targets: Vec<Maildir>,
        mailboxes: Vec<String>,
    ) -> Result<Stored, Reply> {
        let id = self.name.id().to_string();
        let staged = counted(self.staged, &last);
        let Some(mut file) = self.file.take() else {
            return Err(temp_failure());
        };
        let finished = tokio::task::spawn_blocking(move || {
            file.write_all(&last)?;
            file.into_inner().map_err(|e| e.into_error())
        })
        .await;
        let file = match finished {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return Err(storage_failure(&e, Some(&id), "staged message")),
            Err(e) => {
                tracing::error!(id, error = %e, "staged write task failed");
                return Err(temp_failure());
            }
        };
        let (file, verdict) = match &self.checks {
            Some(checks) => {
                let (file, v) = check(
                    checks,
                    &self.info,
                    &self.env,
                    file,
                    staged,
                    self.max_read,
                    &id,
                )
                .await?;
                (file, Some(v))
            }
            None => (file, None),
        };
        let mut folder = match verdict.as_ref().map(|v| &v.action) {
            None | Some(Action::Deliver) => None,
            Some(Action::Junk(_)) => Some(JUNK),
            Some(Action::Reject { status, text }) => {
                return Err(Reply::new(550, *status, text.clone()).because(reason_of(status)));
            }
            Some(Action::Defer) => {
                return Err(Reply::new(
                    451,
                    "4.4.3",
                    "Temporary DNS failure checking the sender, try again later",
                )
                .because("dns"));
            }
        };
        // The header section in memory (bounded), the body left in the
        // scratch file; any Authentication-Results: claiming our
        // authserv-id is gone from here on.
        let mut message = self.read_message(file, &id).await?;
        if let Some(filters) = &self.filters {
            let (decision, msg) = self.filter(filters, message, &id).await?;
            message = msg;
            match decision {
                Decision::Deliver { quarantine: None } => {}
                Decision::Deliver {
                    quarantine: Some(_),
                } => folder = Some(JUNK),
                Decision::Refuse(r) => return Err(r),
                Decision::Discard(filter) => {
                    return Ok(Stored {
                        id,
                        discarded: Some(filter),
                        auth: verdict.as_ref().map(summary),
                        ..Stored::default()
                    });
                }
            }
        }
        let outcome = Outcome {
            verdict,
            folder,
            message,
        };
        self.store(outcome, targets, mailboxes).await
    }

    /// The staged message read back as header fields and body (blocking
    /// work off the async threads).
    async fn read_message(&self, file: File, id: &str) -> Result<Message, Reply> {
        let host = self.host.clone();
        match tokio::task::spawn_blocking(move || Message::read(file, &host)).await {
            Ok(Ok(Ok(m))) => Ok(m),
            Ok(Ok(Err(HeaderTooBig))) => {
                Err(Reply::new(552, "5.3.4", "Message header section too big"))
            }
            Ok(Err(e)) => Err(storage_failure(&e, Some(id), "staged message")),
            Err(e) => {
                tracing::error!(id, error = %e, "staged read task failed");
                Err(temp_failure())
            }
        }
    }

    /// Run the message filters over the staged message.
    async fn filter(
        &self,
        filters: &[Filter],
        msg: Message,
        id: &str,
    ) -> Result<(Decision, Message), Reply> {
        let ctx = Arc::new(Context {
            id: id.to_string(),
            hostname: self.host.clone(),
            client: self.info.peer,
            helo: self.info.helo.clone(),
            mail_from: self.env.mail_from.clone(),
            rcpts: self.env.rcpts.iter().map(|(a, _)| a.clone()).collect(),
            auth_user: self.info.auth_user.clone(),
        });
        let (decision, msg) =
            msgfilter::run(filters, ctx, msg, self.staging.clone(), self.max_read).await;
        match (decision, msg) {
            (d, Some(m)) => Ok((d, m)),
            (Decision::Refuse(r), None) => Err(r),
            (_, None) => Err(temp_failure()),
        }
    }

    /// Write the message file (its body copied from the scratch file, never
    /// held in memory) into every target's `new/`.
    async fn store(
        self,
        outcome: Outcome,
        targets: Vec<Maildir>,
        mailboxes: Vec<String>,
    ) -> Result<Stored, Reply> {
        let Staged {
            name,
            info,
            env,
            host,
            delivered_to,
            quotas,
            ..
        } = self;
        let id = name.id().to_string();
        let Outcome {
            verdict,
            folder,
            message,
        } = outcome;
        let auth = verdict.as_ref().map(summary);
        let stored = tokio::task::spawn_blocking(move || {
            // Quotas are the whole Maildir's, folders included.
            let roots = targets.clone();
            let targets = match folder {
                // A folder its owner tampered with: the inbox instead (the
                // header still says why it would have been junk).
                Some(f) => targets
                    .iter()
                    .map(|md| match md.ensure_folder(f) {
                        Err(e) if fsat::is_refused(&e) => {
                            tracing::warn!(error = %e, "refusing junk folder; delivering to the inbox");
                            Ok(md.clone())
                        }
                        other => other,
                    })
                    .collect::<io::Result<Vec<Maildir>>>()?,
                None => targets,
            };
            let mut delivery = Delivery::begin_named(&targets, &host, Some(name))?;
            let headers = trace_headers(
                &info,
                &env,
                &host,
                delivery.id(),
                delivered_to.as_deref(),
                verdict.as_ref().map(|v| v.header.as_str()),
                Timestamp::now(),
            );
            delivery.write(headers.as_bytes())?;
            message.write_to(&mut DeliveryWriter(&mut delivery))?;
            let id = delivery.id().to_string();
            let size = delivery.size();
            super::quota::check_fits(&roots, &quotas, size)?;
            let paths = delivery.commit(&targets)?;
            super::quota::account(&roots, &quotas, size);
            Ok::<_, io::Error>((id, paths))
        })
        .await;
        match stored {
            Ok(Ok((id, paths))) => Ok(Stored {
                id,
                files: mailboxes.into_iter().zip(paths).collect(),
                auth,
                folder: folder.map(str::to_string),
                discarded: None,
            }),
            Ok(Err(e)) => Err(super::smtp::commit_failure(&e, &id)),
            Err(e) => {
                tracing::error!(id, error = %e, "delivery task failed");
                Err(temp_failure())
            }
        }
    }
}

/// `Write` over a delivery, for `Message::write_to`.
struct DeliveryWriter<'a>(&'a mut Delivery);

impl Write for DeliveryWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The sender checks over the staged message: SPF and iprev first (no
/// message needed), then the message read back once, under a slot.
async fn check(
    checks: &Checks,
    info: &SessionInfo,
    env: &Envelope,
    file: File,
    staged: (u64, u64),
    max_read: u64,
    id: &str,
) -> Result<(File, Verdict), Reply> {
    let Some(ip) = info.peer.map(|p| p.ip().to_canonical()) else {
        return Err(temp_failure());
    };
    // SPF and iprev need no message: done before a slot is taken. Each
    // check is bounded in time by `Checks` itself.
    let sender = checks.check_sender(ip, &info.helo, &env.mail_from).await;
    // The message is in memory only while it is verified, and at most
    // `max_concurrent` messages are.
    let _slot = checks.slot().await;
    let read = tokio::task::spawn_blocking(move || read_wire(file, staged, max_read)).await;
    let (wire, file) = match read {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(storage_failure(&e, Some(id), "staged message")),
        Err(e) => {
            tracing::error!(id, error = %e, "staged read task failed");
            return Err(temp_failure());
        }
    };
    let verdict = checks
        .evaluate(&sender, ip, &info.helo, &env.mail_from, &wire)
        .await;
    Ok((file, verdict))
}

/// `(bytes, line ends)` after `bytes` more.
fn counted((len, lines): (u64, u64), bytes: &[u8]) -> (u64, u64) {
    (
        len + bytes.len() as u64,
        lines + memchr::memchr_iter(b'\n', bytes).count() as u64,
    )
}

/// The staged body read back once, in its wire form (CRLF line ends, what
/// DKIM signed), into a buffer of exactly that size: `staged` (bytes, line
/// ends) says it. At most `max_read` bytes stored.
fn read_wire(file: File, staged: (u64, u64), max_read: u64) -> io::Result<(Vec<u8>, File)> {
    let (len, lines) = staged;
    if len > max_read {
        return Err(io::Error::other(format!(
            "staged message of {len} bytes is over {max_read}"
        )));
    }
    let wire_len = usize::try_from(len + lines).map_err(io::Error::other)?;
    let mut wire = Vec::with_capacity(wire_len);
    // Sized to the message: most are far smaller than 64 KiB.
    let mut chunk = vec![0u8; wire_len.clamp(1, 64 * 1024)];
    let mut off = 0u64;
    while off < len {
        let n = file.read_at(&mut chunk, off)?;
        if n == 0 {
            break;
        }
        extend_crlf(&mut wire, chunk.get(..n).unwrap_or_default());
        off += n as u64;
    }
    Ok((wire, file))
}

fn summary(v: &Verdict) -> AuthSummary {
    AuthSummary {
        spf: v.spf,
        dkim: v.dkim,
        dmarc: v.dmarc,
        iprev: v.iprev,
    }
}

/// The log and metrics reason of a refusal by the checks.
fn reason_of(status: &str) -> &'static str {
    match status {
        "5.7.23" => "spf",
        "5.7.20" => "dkim",
        _ => "dmarc",
    }
}
