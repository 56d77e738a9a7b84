//! DATA and BDAT: the message body streamed to the backend's sink, and the
//! delivery commit (RFC 5321 §4.1.1.4, CHUNKING RFC 3030). Also the chunk
//! refusal that the dispatch uses when the sequence check says no.

use crate::crlf::CrlfSize;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

use crate::smtp::backend::{Backend, BodySink, Envelope};
use crate::smtp::data::{BdatDecoder, DotDecoder};
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
        let (mut sink, mut failure) = match self.backend.begin(&self.info, &env).await {
            Ok(sink) => (Some(sink), None),
            Err(r) => (None, Some(r)),
        };
        let mut decoder = DotDecoder::new(self.cfg.bare_lf, self.cfg.max_text_line);
        let mut out = Vec::with_capacity(BATCH + 16 * 1024);
        // RFC 1870: the body's size with every line end a CRLF.
        let mut size = CrlfSize::default();
        loop {
            let feed = match self.fill(self.cfg.data_timeout).await {
                Ok(buf) => {
                    let before = out.len();
                    let feed = decoder.feed(buf, &mut out);
                    size.feed(out.get(before..).unwrap_or_default());
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
        let result = match (failure, decoder.finish(), sink) {
            (Some(r), _, sink) | (None, Err(r), sink) => {
                abort(sink).await;
                Err(r)
            }
            (None, Ok(()), Some(sink)) => sink.commit().await,
            (None, Ok(()), None) => Err(Reply::new(451, "4.3.0", "Error: internal error")),
        };
        Ok(self.delivered(&env, size.so_far(), result))
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
                    Ok(sink) => Chunks {
                        sink,
                        decoder: BdatDecoder::new(self.cfg.max_text_line),
                        size: 0,
                    },
                    Err(r) => return self.refuse_chunk(size, r).await,
                }
            }
        };
        // The chunk size counts CRLF as two octets, like SIZE (RFC 1870), so the
        // limit can be enforced before reading.
        let total = chunks.size.saturating_add(size);
        if total > self.cfg.max_message_size {
            chunks.sink.abort().await;
            info!(session = self.info.id, size = total, "message too big");
            return self.refuse_chunk(size, too_big()).await;
        }
        let mut out = Vec::with_capacity(BATCH + 16 * 1024);
        let mut remaining = size;
        while remaining > 0 {
            let n = match self.fill(self.cfg.data_timeout).await {
                Ok(buf) => {
                    let n = buf
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    chunks
                        .decoder
                        .feed(buf.get(..n).unwrap_or_default(), &mut out);
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
                    chunks.sink.abort().await;
                    return self.refuse_chunk(remaining, r).await;
                }
                out.clear();
            }
        }
        chunks.size = total;
        if !last {
            if let Err(r) = put(&mut chunks.sink, &out).await {
                chunks.sink.abort().await;
                return Ok(self.reply(r));
            }
            tx.chunks = Some(chunks);
            self.state = State::Mail(tx);
            let text = format!("{size} octets received");
            return Ok(self.reply(Reply::new(250, "2.0.0", text)));
        }
        let result = match chunks.decoder.finish(&mut out) {
            Ok(()) => match put(&mut chunks.sink, &out).await {
                Ok(()) => chunks.sink.commit().await,
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
        Ok(self.delivered(&tx.env, total, result))
    }

    /// A chunk that will not be stored: read it away, answer, and (RFC 3030 §2)
    /// leave the transaction failed (the state is already back to Idle, or was
    /// never past it when the sequence check refused the BDAT).
    pub(in crate::smtp) async fn refuse_chunk(
        &mut self,
        remaining: u64,
        r: Reply,
    ) -> io::Result<Flow> {
        // A chunk larger than any message we accept is not worth reading just to
        // skip it (`BDAT 99999999999999`), and until it is skipped nothing the
        // client sends can be told from chunk data: answer, then say we close
        // (RFC 5321 §3.8: a server closes only after a 421) and close.
        if remaining > self.cfg.max_message_size {
            info!(
                session = self.info.id,
                size = remaining,
                code = r.code,
                "BDAT chunk too large to skip; closing"
            );
            self.queue(&r);
            let text = format!(
                "{} Error: BDAT chunk too large to skip; closing",
                self.cfg.hostname
            );
            self.queue(&Reply::new(421, "4.7.0", text));
            // The client may have pipelined chunk data we will not read.
            self.linger = true;
            return Ok(Flow::Close);
        }
        if let Err(stop) = self.discard(remaining).await {
            return self.stopped(stop);
        }
        Ok(self.reply(r))
    }

    /// Log the outcome of a transaction (never content) and answer it.
    fn delivered(&mut self, env: &Envelope, size: u64, result: Result<(), Reply>) -> Flow {
        match result {
            Ok(()) => {
                info!(
                    session = self.info.id,
                    from = %env.mail_from,
                    rcpts = env.rcpts.len(),
                    size,
                    result = "delivered",
                    "message accepted"
                );
                self.observer.delivered(env.rcpts.len(), size);
                self.reply(Reply::new(250, "2.0.0", "Ok: delivered"))
            }
            Err(r) => {
                info!(
                    session = self.info.id,
                    from = %env.mail_from,
                    rcpts = env.rcpts.len(),
                    size,
                    result = r.code,
                    "message refused"
                );
                self.reply(r)
            }
        }
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
