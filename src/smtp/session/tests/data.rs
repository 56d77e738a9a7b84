//! Tests of DATA: size limits, streaming, timeouts, dot-stuffing, bare LF
//! and backend failures.

use super::*;
use crate::smtp::op::body::BATCH;

#[tokio::test]
async fn oversize_declared_and_streamed() {
    let mut c = start(config());
    c.ehlo().await;
    c.say(
        "MAIL FROM:<s@x.test> SIZE=10001\r\n",
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
    )
    .await;
    c.say("MAIL FROM:<s@x.test> SIZE=10000\r\n", MAIL_OK).await;
    c.say("RCPT TO:<a@d>\r\n", RCPT_OK).await;
    c.say("DATA\r\n", GO_AHEAD).await;
    // 200 lines of 100 octets: 20000 > 10000. The body is read to its end and
    // the next command is answered.
    let line = format!("{}\r\n", "y".repeat(98));
    c.send(&line.repeat(200)).await;
    c.say(
        ".\r\nNOOP\r\n",
        &format!("552 5.3.4 Message too big\r\n{OK}"),
    )
    .await;
    let log = c.quit().await;
    let log = log.lock().unwrap();
    assert!(log.delivered.is_empty());
    assert_eq!(log.aborted, 1);
}

#[tokio::test]
async fn exactly_the_limit_is_accepted() {
    let mut c = start(config());
    c.ehlo().await;
    // 100 lines of 100 octets (CRLF counted): exactly 10000.
    let line = format!("{}\r\n", "y".repeat(98));
    c.transaction("s@x.test", &["a@d"], &line.repeat(100)).await;
    let log = c.quit().await;
    assert_eq!(log.lock().unwrap().delivered[0].1.len(), 9900);
}

#[tokio::test]
async fn large_message_is_streamed_in_batches() {
    let mut c = start(SessionConfig {
        max_message_size: 1 << 20,
        ..config()
    });
    c.expect(GREETING).await;
    c.say("HELO c\r\n", "250 mx.test\r\n").await;
    let line = format!("{}\r\n", "z".repeat(510));
    c.transaction("s@x.test", &["a@d"], &line.repeat(1000))
        .await;
    let log = c.quit().await;
    let log = log.lock().unwrap();
    assert_eq!(log.delivered[0].1.len(), 511_000);
    assert!(log.writes.len() >= 7, "{:?}", log.writes);
    assert!(
        log.writes.iter().all(|&n| n < BATCH + 16 * 1024),
        "{:?}",
        log.writes
    );
}

#[tokio::test(start_paused = true)]
async fn data_timeout_aborts_the_message() {
    let mut c = start(config());
    c.ehlo().await;
    c.data("s@x.test", &["a@d"]).await;
    c.send("half a message\r\n").await;
    c.expect("421 4.4.2 mx.test Error: timeout exceeded\r\n")
        .await;
    let log = c.expect_close().await;
    let log = log.lock().unwrap();
    assert!(log.delivered.is_empty());
    assert_eq!(log.aborted, 1);
}

#[tokio::test]
async fn eof_during_data_aborts() {
    let mut c = start(config());
    c.ehlo().await;
    c.data("s@x.test", &["a@d"]).await;
    c.send("partial\r\n").await;
    c.io.shutdown().await.unwrap();
    let log = c.expect_close().await;
    let log = log.lock().unwrap();
    assert!(log.delivered.is_empty());
    assert_eq!(log.aborted, 1);
}

#[tokio::test]
async fn dot_stuffing_and_smuggling_make_one_message() {
    let mut c = start(config());
    c.ehlo().await;
    c.data("s@x.test", &["a@d"]).await;
    c.say(
        "..first\r\nhi\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<b@d>\r\nDATA\r\nsmuggled\r\n.\r\n",
        DELIVERED,
    )
    .await;
    let log = c.quit().await;
    let log = log.lock().unwrap();
    assert_eq!(log.delivered.len(), 1);
    assert_eq!(
        String::from_utf8_lossy(&log.delivered[0].1),
        ".first\nhi\n.\nMAIL FROM:<evil@x.test>\nRCPT TO:<b@d>\nDATA\nsmuggled\n"
    );
}

#[tokio::test]
async fn bare_lf_reject_and_long_lines() {
    let mut c = start(SessionConfig {
        bare_lf: BareLf::Reject,
        ..config()
    });
    c.ehlo().await;
    c.data("s@x.test", &["a@d"]).await;
    c.say(
        "a\nb\r\n.\r\n",
        "554 5.6.0 Message contains bare LF line endings\r\n",
    )
    .await;
    c.data("s@x.test", &["a@d"]).await;
    c.say(
        &format!("{}\r\n.\r\n", "l".repeat(999)),
        "552 5.6.0 Message has lines too long\r\n",
    )
    .await;
    let log = c.quit().await;
    let log = log.lock().unwrap();
    assert!(log.delivered.is_empty());
    assert_eq!(log.aborted, 2);
}

#[tokio::test]
async fn begin_failure_discards_the_body() {
    let mut c = start(config());
    c.ehlo().await;
    c.data("fail@x.test", &["a@d"]).await;
    c.say(
        "QUIT\r\n.\r\nNOOP\r\n",
        &format!("451 4.3.0 Temporary failure\r\n{OK}"),
    )
    .await;
    c.envelope("fail@x.test", &["a@d"]).await;
    c.say("BDAT 6\r\nQUIT\r\n", "451 4.3.0 Temporary failure\r\n")
        .await;
    // RFC 3030 §2: the failed transaction is over; pipelined chunks get 503.
    c.say(
        "BDAT 6 LAST\r\nQUIT\r\n",
        "503 5.5.1 Error: need MAIL command\r\n",
    )
    .await;
    let log = c.quit().await;
    assert!(log.lock().unwrap().delivered.is_empty());
}

#[tokio::test]
async fn commands_pipelined_after_the_end_of_data_are_answered() {
    let mut c = start(config());
    c.ehlo().await;
    c.data("s@x.test", &["a@d"]).await;
    c.say("body\r\n.\r\nQUIT\r\n", &format!("{DELIVERED}{BYE}"))
        .await;
    let log = c.expect_close().await;
    assert_eq!(log.lock().unwrap().delivered[0].1, b"body\n");
}

/// Loop protection (Postfix's hopcount_limit): 50 `Received:` lines pass, 51
/// get `554 5.4.6` and nothing is stored; in DATA and in BDAT alike.
#[tokio::test]
async fn too_many_received_lines_is_a_loop() {
    let hops = |n: usize| {
        format!(
            "{}Subject: loop\r\n\r\nReceived: in the body does not count\r\n",
            "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(n)
        )
    };
    let mut c = start(config());
    c.ehlo().await;
    c.transaction("s@x.test", &["a@d"], &hops(50)).await;
    c.data("s@x.test", &["a@d"]).await;
    c.send(&hops(51)).await;
    c.say(".\r\n", "554 5.4.6 Too many hops (51 Received: lines)\r\n")
        .await;
    let body = hops(51);
    c.envelope("s@x.test", &["a@d"]).await;
    c.say(
        &format!("BDAT {} LAST\r\n{body}", body.len()),
        "554 5.4.6 Too many hops (51 Received: lines)\r\n",
    )
    .await;
    let log = c.quit().await;
    let log = log.lock().unwrap();
    assert_eq!(log.delivered.len(), 1);
    assert_eq!(log.aborted, 2);
}
