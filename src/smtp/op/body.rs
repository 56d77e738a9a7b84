//! DATA and BDAT: the message body streamed to the backend's sink, and the
//! delivery commit (RFC 5321 §4.1.1.4, CHUNKING RFC 3030). Also the chunk
//! refusal that the dispatch uses when the sequence check says no.

use crate::crlf::CrlfSize;
use std::io;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

use crate::smtp::backend::{Backend, BodySink, Envelope, Stored};
use crate::smtp::data::{BdatDecoder, DotDecoder};
use crate::smtp::header::{HeaderInfo, HeaderScan, MAX_HOPS};
use crate::smtp::reply::Reply;
use crate::smtp::session::{Flow, Session, Stop};
use crate::smtp::state::{Chunks, State};

/// Body bytes are handed to the sink in batches of about this size, so a message
/// is never held whole in memory.
pub(in crate::smtp) const BATCH: usize = 64 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin + Send, B: Backend> Session<S, B> {
    /// Fill in what the backend's `Received:` needs (RFC 3848, RFC 6531 §3.7.4).
    fn describe_session(&mut self, env: &Envelope) {
        let base = match (env.smtputf8, self.esmtp) {
            (true, _) => "UTF8SMTP",
            (false, true) => "ESMTP",
            (false, false) => "SMTP",
        };
        // RFC 3848 §2 (ESMTPS, ESMTPA, ESMTPSA), RFC 6531 §3.7.4 (UTF8SMTPSA).
        let mut proto = base.to_string();
        if base != "SMTP" {
            if self.tls {
                proto.push('S');
            }
            if self.auth_user.is_some() {
                proto.push('A');
            }
        }
        self.info.with_protocol = proto;
        self.info.auth_user = self.auth_user.clone();
    }

    /// RFC 5321 §4.1.1.4 and §4.5.2: the body up to `CRLF.CRLF`, streamed to the
    /// sink. Whatever goes wrong, the body is read to its end so that its lines
    /// are never taken as commands.
    pub(in crate::smtp) async fn data(&mut self) -> io::Result<Flow> {
        self.observer.state("data");
        let State::Mail(tx) = std::mem::replace(&mut self.state, State::Idle) else {
            return Ok(self.reply(Reply::new(503, "5.5.1", "Error: need MAIL command")));
        };
        let env = tx.env;
        self.queue(&Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
        self.describe_session(&env);
        let started = Instant::now();
        let (mut sink, mut failure) = match self.backend.begin(&self.info, &env).await {
            Ok(sink) => (Some(sink), None),
            Err(r) => (None, Some(r)),
        };
        let id = sink.as_ref().map(|s| s.id().to_string());
        let mut header = HeaderScan::default();
        let mut decoder = DotDecoder::new(self.cfg.bare_lf, self.cfg.max_text_line);
        let mut out = Vec::with_capacity(BATCH + 16 * 1024);
        // RFC 1870: the body's size with every line end a CRLF.
        let mut size = CrlfSize::default();
        loop {
            let feed = match self.fill(self.cfg.data_timeout).await {
                Ok(buf) => {
                    let before = out.len();
                    let feed = decoder.feed(buf, &mut out);
                    let new = out.get(before..).unwrap_or_default();
                    size.feed(new);
                    header.feed(new);
                    feed
                }
                Err(stop) => {
                    abort(sink).await;
                    return self.stopped(stop);
                }
            };
            self.conn.consume(feed.consumed);
            if failure.is_none() && size.so_far() > self.cfg.max_message_size {
                failure = Some(too_big());
                abort(sink.take()).await;
            }
            if failure.is_none()
                && (out.len() >= BATCH || feed.done)
                && let Err(r) = write(&mut sink, &out).await
            {
                failure = Some(r);
                abort(sink.take()).await;
            }
            // Written, or to be thrown away after a failure.
            if failure.is_some() || out.len() >= BATCH || feed.done {
                out.clear();
            }
            if feed.done {
                break;
            }
        }
        let header = header.finish();
        let result = match (failure, decoder.finish(), sink) {
            (Some(r), _, sink) | (None, Err(r), sink) => {
                abort(sink).await;
                Err(r)
            }
            (None, Ok(()), Some(sink)) => commit(sink, &header).await,
            (None, Ok(()), None) => Err(Reply::new(451, "4.3.0", "Error: internal error")),
        };
        let done = Done {
            env: &env,
            size: size.so_far(),
            id,
            header,
            started,
        };
        Ok(self.delivered(done, result))
    }

    /// RFC 3030 §2: `BDAT size [LAST]`, exactly `size` octets follow.
    pub(in crate::smtp) async fn bdat(&mut self, size: u64, last: bool) -> io::Result<Flow> {
        self.observer.state("data");
        let State::Mail(mut tx) = std::mem::replace(&mut self.state, State::Idle) else {
            return Ok(self.reply(Reply::new(503, "5.5.1", "Error: need MAIL command")));
        };
        let mut chunks = match tx.chunks.take() {
            Some(chunks) => chunks,
            None => {
                self.describe_session(&tx.env);
                match self.backend.begin(&self.info, &tx.env).await {
                    Ok(sink) => Box::new(Chunks {
                        sink,
                        decoder: BdatDecoder::new(self.cfg.max_text_line),
                        size: 0,
                        header: HeaderScan::default(),
                        started: Instant::now(),
                    }),
                    Err(r) => return self.refuse_chunk(size, r).await,
                }
            }
        };
        // The chunk size counts CRLF as two octets, like SIZE (RFC 1870), so the
        // limit can be enforced before reading.
        let total = chunks.size.saturating_add(size);
        if total > self.cfg.max_message_size {
            let id = chunks.sink.id().to_string();
            chunks.sink.abort().await;
            return self
                .skip_chunk(size, too_big(), |s, r| {
                    s.log_message_refused(r, &tx.env, total, Some(&id), None)
                })
                .await;
        }
        let mut out = Vec::with_capacity(BATCH + 16 * 1024);
        let mut remaining = size;
        while remaining > 0 {
            let n = match self.fill(self.cfg.data_timeout).await {
                Ok(buf) => {
                    let n = buf
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let before = out.len();
                    chunks
                        .decoder
                        .feed(buf.get(..n).unwrap_or_default(), &mut out);
                    chunks.header.feed(out.get(before..).unwrap_or_default());
                    n
                }
                Err(stop) => {
                    chunks.sink.abort().await;
                    return self.stopped(stop);
                }
            };
            self.conn.consume(n);
            remaining -= n as u64;
            if out.len() >= BATCH {
                if let Err(r) = put(&mut chunks.sink, &out).await {
                    let id = chunks.sink.id().to_string();
                    chunks.sink.abort().await;
                    return self
                        .skip_chunk(remaining, r, |s, r| {
                            s.log_message_refused(r, &tx.env, total, Some(&id), None)
                        })
                        .await;
                }
                out.clear();
            }
        }
        chunks.size = total;
        if !last {
            if let Err(r) = put(&mut chunks.sink, &out).await {
                let id = chunks.sink.id().to_string();
                chunks.sink.abort().await;
                self.log_message_refused(&r, &tx.env, total, Some(&id), None);
                return Ok(self.answer(r));
            }
            tx.chunks = Some(chunks);
            self.state = State::Mail(tx);
            let text = format!("{size} octets received");
            return Ok(self.reply(Reply::new(250, "2.0.0", text)));
        }
        let id = Some(chunks.sink.id().to_string());
        let before = out.len();
        let finished = chunks.decoder.finish(&mut out);
        chunks.header.feed(out.get(before..).unwrap_or_default());
        let header = chunks.header.finish();
        let result = match finished {
            Ok(()) => match put(&mut chunks.sink, &out).await {
                Ok(()) => commit(chunks.sink, &header).await,
                Err(r) => {
                    chunks.sink.abort().await;
                    Err(r)
                }
            },
            Err(r) => {
                chunks.sink.abort().await;
                Err(r)
            }
        };
        let done = Done {
            env: &tx.env,
            size: total,
            id,
            header,
            started: chunks.started,
        };
        Ok(self.delivered(done, result))
    }

    /// A chunk that will not be stored: read it away, answer, and (RFC 3030 §2)
    /// leave the transaction failed (the state is already back to Idle, or was
    /// never past it when the sequence check refused the BDAT).
    pub(in crate::smtp) async fn refuse_chunk(
        &mut self,
        remaining: u64,
        r: Reply,
    ) -> io::Result<Flow> {
        self.skip_chunk(remaining, r, |s, r| s.refused(r, None))
            .await
    }

    /// `refuse_chunk` with the refusal's log line written by `log`, once the
    /// answer is certain to be sent (not when the client went away meanwhile).
    async fn skip_chunk(
        &mut self,
        remaining: u64,
        r: Reply,
        log: impl FnOnce(&Self, &Reply),
    ) -> io::Result<Flow> {
        // A chunk larger than any message we accept is not worth reading just to
        // skip it (`BDAT 99999999999999`), and until it is skipped nothing the
        // client sends can be told from chunk data: answer, then say we close
        // (RFC 5321 §3.8: a server closes only after a 421) and close.
        if remaining > self.cfg.max_message_size {
            info!(size = remaining, "BDAT chunk too large to skip; closing");
            log(self, &r);
            self.queue(&r);
            let text = format!(
                "{} Error: BDAT chunk too large to skip; closing",
                self.cfg.hostname
            );
            self.close_with(Reply::new(421, "4.7.0", text));
            // The client may have pipelined chunk data we will not read.
            self.linger = true;
            return Ok(Flow::Close);
        }
        if let Err(stop) = self.discard(remaining).await {
            return self.stopped(stop);
        }
        log(self, &r);
        Ok(self.answer(r))
    }

    /// Log the outcome of a transaction (never content) and answer it: one
    /// line for the message (Postfix's smtpd, cleanup and qmgr lines in one)
    /// and one per recipient and mailbox (its `virtual` line), or one refusal.
    fn delivered(&mut self, done: Done<'_>, result: Result<Stored, Reply>) -> Flow {
        let stored = match result {
            Ok(stored) => stored,
            Err(r) => {
                self.log_message_refused(
                    &r,
                    done.env,
                    done.size,
                    done.id.as_deref(),
                    Some(&done.header),
                );
                return self.answer(r);
            }
        };
        // The stored id, should the announced name have been taken.
        let id = if stored.id.is_empty() {
            done.id.unwrap_or_default()
        } else {
            stored.id.clone()
        };
        let took = done.started.elapsed();
        if let Some(filter) = &stored.discarded {
            // As with Postfix, the client is not told: a discard is for mail
            // nobody should get, and the sender should not learn to evade it.
            info!(
                id = %id,
                helo = ?self.info.helo,
                from = ?done.env.mail_from,
                message_id = done.header.message_id.as_deref(),
                size = done.size,
                nrcpt = done.env.rcpts.len(),
                filter = %filter,
                "message discarded"
            );
            return self.answer(Reply::new(250, "2.0.0", format!("Ok: delivered as {id}")));
        }
        let auth = stored.auth.unwrap_or_default();
        let checked = stored.auth.is_some();
        info!(
            id = %id,
            helo = ?self.info.helo,
            from = ?done.env.mail_from,
            message_id = done.header.message_id.as_deref(),
            size = done.size,
            nrcpt = done.env.rcpts.len(),
            delay = format_args!("{:.3}", took.as_secs_f64()),
            spf = checked.then_some(auth.spf),
            dkim = checked.then_some(auth.dkim),
            dmarc = checked.then_some(auth.dmarc),
            iprev = checked.then_some(auth.iprev),
            folder = stored.folder.as_deref(),
            "message accepted"
        );
        for (to, mailboxes) in &done.env.rcpts {
            for mailbox in mailboxes {
                let file = stored
                    .files
                    .iter()
                    .find(|(m, _)| m == mailbox)
                    .map(|(_, f)| f.display());
                info!(id = %id, to = ?to, mailbox = %mailbox, file = file.map(display), "delivered");
            }
        }
        crate::metrics::get().delivered(stored.files.len(), done.size, took);
        self.observer
            .delivered(&id, done.env.rcpts.len(), done.size, stored.auth.as_ref());
        self.answer(Reply::new(250, "2.0.0", format!("Ok: delivered as {id}")))
    }

    /// The one log line of a message refused after DATA or BDAT began.
    pub(in crate::smtp) fn log_message_refused(
        &self,
        r: &Reply,
        env: &Envelope,
        size: u64,
        id: Option<&str>,
        header: Option<&HeaderInfo>,
    ) {
        let reason = r.reason();
        crate::metrics::get().refused(self.protocol_name(), reason);
        info!(
            id = id.map(display),
            code = r.code,
            status = %r.status,
            reason = %reason,
            cmd = %self.cmd,
            helo = ?self.info.helo,
            from = ?env.mail_from,
            message_id = header.and_then(|h| h.message_id.as_deref()),
            size,
            nrcpt = env.rcpts.len(),
            "refused"
        );
    }

    /// Buffered input, waiting up to `timeout`; EOF is an error here.
    async fn fill(&mut self, timeout: Duration) -> Result<&[u8], Stop> {
        let buf = self.conn.fill(timeout).await?;
        if buf.is_empty() {
            return Err(Stop::Eof);
        }
        Ok(buf)
    }

    /// Read and drop exactly `n` octets (a refused BDAT chunk).
    async fn discard(&mut self, mut n: u64) -> Result<(), Stop> {
        while n > 0 {
            let len = self.fill(self.cfg.data_timeout).await?.len();
            let take = len.min(usize::try_from(n).unwrap_or(usize::MAX));
            self.conn.consume(take);
            n -= take as u64;
        }
        Ok(())
    }
}

/// What the log line of a finished transaction needs.
struct Done<'a> {
    env: &'a Envelope,
    size: u64,
    id: Option<String>,
    header: HeaderInfo,
    started: Instant,
}

/// Commit, unless the header says the message is looping (RFC 5321 §6.3;
/// Postfix's `hopcount_limit`).
async fn commit<K: BodySink>(sink: K, header: &HeaderInfo) -> Result<Stored, Reply> {
    if header.received > MAX_HOPS {
        sink.abort().await;
        return Err(Reply::new(
            554,
            "5.4.6",
            format!("Too many hops ({} Received: lines)", header.received),
        ));
    }
    sink.commit().await
}

fn too_big() -> Reply {
    Reply::new(552, "5.3.4", "Message too big")
}

/// Hand bytes to the sink; empty batches are not worth a call.
async fn put<K: BodySink>(sink: &mut K, bytes: &[u8]) -> Result<(), Reply> {
    if bytes.is_empty() {
        return Ok(());
    }
    sink.write(bytes).await
}

async fn write<K: BodySink>(sink: &mut Option<K>, bytes: &[u8]) -> Result<(), Reply> {
    match sink {
        Some(sink) => put(sink, bytes).await,
        None => Ok(()),
    }
}

async fn abort<K: BodySink>(sink: Option<K>) {
    if let Some(sink) = sink {
        sink.abort().await;
    }
}
