//! Tests of STARTTLS (RFC 3207).

use super::*;

#[tokio::test]
async fn starttls_resets_the_session() {
    let (mut c, up) = start_tls(config());
    c.expect(GREETING).await;
    c.say("EHLO client.test\r\n", EHLO_STARTTLS).await;
    c.envelope("s@x.test", &[]).await;
    // RFC 3207 §4: not in the middle of a transaction.
    c.say(
        "STARTTLS\r\n",
        "503 5.5.1 Error: MAIL transaction in progress\r\n",
    )
    .await;
    c.say("RSET\r\n", OK).await;
    c.say("STARTTLS\r\n", READY).await;
    assert_eq!(*up.count.lock().unwrap(), 1);
    // Everything is forgotten: EHLO again, and STARTTLS is no longer offered.
    c.say(
        "MAIL FROM:<s@x.test>\r\n",
        "503 5.5.1 Error: send HELO/EHLO first\r\n",
    )
    .await;
    c.say("EHLO client.test\r\n", EHLO_REPLY).await;
    c.say("STARTTLS\r\n", "503 5.5.1 Error: TLS already active\r\n")
        .await;
    c.transaction("s@x.test", &["a@d"], "hi\r\n").await;
    let log = c.quit().await;
    let log = log.lock().unwrap();
    assert_eq!(log.begins[0].1, "ESMTPS");
    assert_eq!(*up.count.lock().unwrap(), 1);
}

#[tokio::test]
async fn starttls_with_pipelined_plaintext_is_refused() {
    let (mut c, up) = start_tls(config());
    c.expect(GREETING).await;
    // CVE-2011-0411: RSET rides in the same packet as STARTTLS.
    c.send("EHLO client.test\r\nSTARTTLS\r\nRSET\r\n").await;
    c.expect(EHLO_STARTTLS).await;
    c.expect("454 4.7.0 TLS not available: commands pipelined after STARTTLS\r\n")
        .await;
    // The RSET is never answered: the connection closes.
    c.expect_close().await;
    assert_eq!(*up.count.lock().unwrap(), 0);
}

#[tokio::test]
async fn starttls_not_offered() {
    let mut c = start(config());
    c.ehlo().await;
    c.say(
        "STARTTLS\r\n",
        "502 5.5.1 Error: command not implemented\r\n",
    )
    .await;
    c.quit().await;
}

#[tokio::test]
async fn starttls_clears_auth() {
    let (mut c, _up) = start_tls(SessionConfig {
        plaintext_auth_allowed: true,
        ..submission()
    });
    c.expect(GREETING).await;
    c.say(
        "EHLO client.test\r\n",
        &EHLO_STARTTLS.replace("250 STARTTLS", "250-STARTTLS\r\n250 AUTH PLAIN LOGIN"),
    )
    .await;
    c.say(&format!("AUTH PLAIN {ALICE_PLAIN}\r\n"), AUTH_OK)
        .await;
    c.say("STARTTLS\r\n", READY).await;
    c.say("EHLO client.test\r\n", EHLO_AUTH).await;
    c.say("MAIL FROM:<alice@example.org>\r\n", AUTH_NEEDED)
        .await;
    c.say(&format!("AUTH PLAIN {ALICE_PLAIN}\r\n"), AUTH_OK)
        .await;
    c.say("MAIL FROM:<alice@example.org>\r\n", MAIL_OK).await;
    c.quit().await;
}
