//! Tests of the read loop: future size, pipelined replies, bad lines, the error
//! cap, the command timeout and EOF.

use super::*;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::ReadBuf;

/// An idle connection costs its task: the session's future stays small
/// because every command's state is boxed only while the command runs
/// (the idle-memory goal is under 8 KiB per connection, all included).
#[test]
fn idle_session_future_is_small() {
    let (_io, server) = tokio::io::duplex(64);
    let session = Session::new(server, Arc::new(Fake::default()), config(), test_info());
    let run = session.run();
    let size = std::mem::size_of_val(&run);
    // The session itself is part of it (measured: 1960 bytes).
    assert!(size <= 2048, "smtp session future is {size} bytes");
}

/// Records every write the session makes to the stream.
struct Recorder {
    inner: DuplexStream,
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl AsyncRead for Recorder {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.writes.lock().unwrap().push(buf[..n].to_vec());
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// RFC 2920 §3.2: the replies to a pipelined group go out in one write.
#[tokio::test]
async fn pipelined_group_is_answered_in_order_with_one_write() {
    let (io, server) = tokio::io::duplex(1 << 20);
    let writes = Arc::new(Mutex::new(Vec::new()));
    let server = Recorder {
        inner: server,
        writes: writes.clone(),
    };
    let mut c = start_on(server, io, config(), None);
    c.ehlo().await;
    writes.lock().unwrap().clear();
    c.send(
        "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\nRCPT TO:<unknown@d>\r\nRCPT TO:<b@d>\r\nDATA\r\n",
    )
    .await;
    let group = format!(
        "{MAIL_OK}{RCPT_OK}550 5.1.1 Recipient address rejected: User unknown\r\n{RCPT_OK}{GO_AHEAD}"
    );
    c.expect(&group).await;
    assert_eq!(*writes.lock().unwrap(), vec![group.into_bytes()]);
    c.say("Hi\r\n.\r\n", DELIVERED).await;
    let log = c.quit().await;
    let log = log.lock().unwrap();
    let (env, body) = &log.delivered[0];
    assert_eq!(env.mail_from, "s@x.test");
    assert_eq!(
        env.rcpts,
        vec![
            ("a@d".into(), vec!["a".into()]),
            ("b@d".into(), vec!["b".into()])
        ]
    );
    assert_eq!(body, b"Hi\n");
}

#[tokio::test]
async fn bad_lines_get_replies() {
    let mut c = start(config());
    c.ehlo().await;
    let long = format!("NOOP {}\r\n", "x".repeat(600));
    c.say(&long, "500 5.5.2 Line too long\r\n").await;
    c.say("FROB\r\n", "500 5.5.2 Error: command not recognized\r\n")
        .await;
    c.say(
        "NO\0OP\r\n",
        "500 5.5.2 Error: invalid character in command\r\n",
    )
    .await;
    c.say(
        "MAIL FROM:<a@b> X=1\r\n",
        "555 5.5.4 Unsupported or malformed MAIL FROM parameter\r\n",
    )
    .await;
    c.say("NOOP\r\n", OK).await;
    c.quit().await;
}

#[tokio::test]
async fn error_cap_closes_the_session() {
    let mut c = start(SessionConfig {
        max_errors: 3,
        ..config()
    });
    c.ehlo().await;
    c.say("FROB\r\n", "500 5.5.2 Error: command not recognized\r\n")
        .await;
    c.say(
        "RCPT TO:<a@d>\r\n",
        "503 5.5.1 Error: need MAIL command\r\n",
    )
    .await;
    c.say(
        "FROB\r\nNOOP\r\n",
        "500 5.5.2 Error: command not recognized\r\n421 4.7.0 mx.test Too many errors\r\n",
    )
    .await;
    c.expect_close().await;
}

#[tokio::test(start_paused = true)]
async fn command_timeout() {
    let mut c = start(config());
    c.ehlo().await;
    c.expect("421 4.4.2 mx.test Error: timeout exceeded\r\n")
        .await;
    c.expect_close().await;
}

#[tokio::test]
async fn eof_between_commands_ends_quietly() {
    let mut c = start(config());
    c.ehlo().await;
    c.io.shutdown().await.unwrap();
    c.expect_close().await;
}
