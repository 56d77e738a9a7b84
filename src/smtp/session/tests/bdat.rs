//! Tests of BDAT (RFC 3030): chunks, limits, refused chunks.

use super::*;

// RFC 3030
#[tokio::test]
async fn bdat_chunks() {
    let mut c = start(config());
    c.ehlo().await;
    // A refused chunk is still read: its "QUIT" is data, not a command.
    c.say(
        "BDAT 6\r\nQUIT\r\n",
        "503 5.5.1 Error: need MAIL command\r\n",
    )
    .await;
    c.envelope("s@x.test", &["a@d"]).await;
    c.say("BDAT 5\r\nab\r\nc", "250 2.0.0 5 octets received\r\n")
        .await;
    c.say("RCPT TO:<b@d>\r\n", "503 5.5.1 Error: RCPT after BDAT\r\n")
        .await;
    c.say("DATA\r\n", "503 5.5.1 Error: DATA after BDAT\r\n")
        .await;
    c.say("BDAT 0\r\n", "250 2.0.0 0 octets received\r\n").await;
    // CR at the end of one chunk, LF at the start of the next.
    c.say("BDAT 4\r\n\r\n.\r", "250 2.0.0 4 octets received\r\n")
        .await;
    c.say("BDAT 2 LAST\r\n\nxNOOP\r\n", &format!("{DELIVERED}{OK}"))
        .await;
    c.envelope("s@x.test", &["a@d"]).await;
    c.say("BDAT 0 LAST\r\n", DELIVERED).await;
    let log = c.quit().await;
    let log = log.lock().unwrap();
    assert_eq!(log.delivered.len(), 2);
    assert_eq!(String::from_utf8_lossy(&log.delivered[0].1), "ab\nc\n.\nx");
    assert_eq!(log.delivered[1].1, b"");
    assert!(!log.writes.contains(&0), "{:?}", log.writes);
    assert_eq!(log.begins[0].1, "ESMTP");
}

#[tokio::test]
async fn bdat_oversize_and_rset() {
    let mut c = start(config());
    c.ehlo().await;
    c.envelope("s@x.test", &["a@d"]).await;
    c.say("BDAT 4\r\nabcd", "250 2.0.0 4 octets received\r\n")
        .await;
    let big = "b".repeat(9_997);
    c.say(
        &format!("BDAT 9997\r\n{big}NOOP\r\n"),
        &format!("552 5.3.4 Message too big\r\n{OK}"),
    )
    .await;
    c.say("BDAT 1 LAST\r\nx", "503 5.5.1 Error: need MAIL command\r\n")
        .await;
    c.envelope("s@x.test", &["a@d"]).await;
    c.say("BDAT 4\r\nabcd", "250 2.0.0 4 octets received\r\n")
        .await;
    c.say("RSET\r\n", OK).await;
    c.say("BDAT 1 LAST\r\nx", "503 5.5.1 Error: need MAIL command\r\n")
        .await;
    c.envelope("s@x.test", &["a@d"]).await;
    c.say("BDAT 4\r\nabcd", "250 2.0.0 4 octets received\r\n")
        .await;
    let log = c.quit().await;
    let log = log.lock().unwrap();
    assert!(log.delivered.is_empty());
    // Oversize, RSET, and QUIT in the middle of the third transaction.
    assert_eq!(log.aborted, 3);
}

const TOO_LARGE: &str = "421 4.7.0 mx.test Error: BDAT chunk too large to skip; closing\r\n";

/// RFC 3030 §2: a refused chunk is still read away, whatever refused it;
/// one larger than any message (max_message_size is 10000 here) cannot be,
/// so it gets its refusal, a 421, and the connection is closed.
#[tokio::test]
async fn refused_bdat_chunks_are_skipped_or_the_session_closed() {
    // (state before, BDAT line and what follows, replies, still open)
    let need_mail = "503 5.5.1 Error: need MAIL command\r\n";
    let cases: &[(&str, String, String, bool)] = &[
        (
            "",
            "BDAT 4 LAST\r\nNOOPNOOP\r\n".into(),
            format!("503 5.5.1 Error: send HELO/EHLO first\r\n{OK}"),
            true,
        ),
        (
            "EHLO",
            "BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n".into(),
            format!("{need_mail}{OK}"),
            true,
        ),
        // Exactly the largest message: read away.
        (
            "EHLO",
            format!("BDAT 10000\r\n{}NOOP\r\n", "Q".repeat(10_000)),
            format!("{need_mail}{OK}"),
            true,
        ),
        (
            "EHLO",
            "BDAT 10001 LAST\r\n".into(),
            format!("{need_mail}{TOO_LARGE}"),
            false,
        ),
        (
            "EHLO",
            "BDAT 99999999999999 LAST\r\n".into(),
            format!("{need_mail}{TOO_LARGE}"),
            false,
        ),
        // Pipelined chunk data we will not read does not hide the replies.
        (
            "EHLO",
            format!("BDAT 99999999999999 LAST\r\n{}", "x".repeat(50_000)),
            format!("{need_mail}{TOO_LARGE}"),
            false,
        ),
        (
            "MAIL",
            "BDAT 99999999999999 LAST\r\n".into(),
            format!("552 5.3.4 Message too big\r\n{TOO_LARGE}"),
            false,
        ),
        // MAIL without RCPT: refused by the sequence check, still read away.
        (
            "MAIL-NO-RCPT",
            "BDAT 3\r\nabcNOOP\r\n".into(),
            format!("503 5.5.1 Error: need RCPT command\r\n{OK}"),
            true,
        ),
    ];
    for (before, bdat, want, open) in cases {
        let mut c = start(config());
        match *before {
            "" => c.expect(GREETING).await,
            "EHLO" => c.ehlo().await,
            "MAIL" => {
                c.ehlo().await;
                c.envelope("s@x.test", &["a@d"]).await;
            }
            _ => {
                c.ehlo().await;
                c.envelope("s@x.test", &[]).await;
            }
        }
        c.say(bdat, want).await;
        let log = if *open {
            c.quit().await
        } else {
            // Nothing more: the session closes without waiting for us.
            let mut rest = Vec::new();
            c.io.read_to_end(&mut rest).await.unwrap();
            assert_eq!(String::from_utf8_lossy(&rest), "", "{bdat:.40}");
            c.io.shutdown().await.unwrap();
            c.session.await.unwrap().unwrap();
            c.log
        };
        let log = log.lock().unwrap();
        assert!(log.delivered.is_empty(), "{bdat:.40}");
        assert_eq!(log.aborted, usize::from(*before == "MAIL"), "{bdat:.40}");
    }
}

#[tokio::test]
async fn eof_during_bdat_aborts() {
    let mut c = start(config());
    c.ehlo().await;
    c.envelope("s@x.test", &["a@d"]).await;
    c.send("BDAT 100\r\nshort").await;
    c.io.shutdown().await.unwrap();
    let log = c.expect_close().await;
    assert_eq!(log.lock().unwrap().aborted, 1);
}
