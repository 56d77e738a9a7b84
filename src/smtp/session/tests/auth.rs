//! Tests of AUTH (RFC 4954): PLAIN, LOGIN, failures, where it is offered.

use super::*;

#[tokio::test(start_paused = true)]
async fn auth_plain_and_login_on_a_tls_submission_connection() {
    let cfg = SessionConfig {
        tls: true,
        ..submission()
    };
    let mut c = start(cfg.clone());
    c.expect(GREETING).await;
    c.say("EHLO client.test\r\n", EHLO_AUTH).await;
    c.say("MAIL FROM:<alice@example.org>\r\n", AUTH_NEEDED)
        .await;
    c.say(&format!("AUTH PLAIN {ALICE_PLAIN}\r\n"), AUTH_OK)
        .await;
    c.say(
        "AUTH PLAIN\r\n",
        "503 5.5.1 Error: already authenticated\r\n",
    )
    .await;
    // AUTH survives RSET and a new EHLO.
    c.say("RSET\r\n", OK).await;
    c.say("EHLO client.test\r\n", EHLO_AUTH).await;
    c.transaction("alice@example.org", &["bob@d"], "hi\r\n")
        .await;
    let log = c.quit().await;
    assert_eq!(log.lock().unwrap().begins[0].1, "ESMTPSA");

    // LOGIN, with challenges; PLAIN with an empty challenge.
    let mut c = start(cfg);
    c.expect(GREETING).await;
    c.say("EHLO client.test\r\n", EHLO_AUTH).await;
    c.say("AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n").await;
    c.say("YWxpY2U=\r\n", "334 UGFzc3dvcmQ6\r\n").await;
    c.say("cHc=\r\n", AUTH_OK).await;
    c.quit().await;
    let mut c = start(submission_tls());
    c.expect(GREETING).await;
    c.say("EHLO client.test\r\n", EHLO_AUTH).await;
    c.say("AUTH PLAIN\r\n", "334 \r\n").await;
    c.say(&format!("{ALICE_PLAIN}\r\n"), AUTH_OK).await;
    c.quit().await;
    // LOGIN with the user name as initial response.
    let mut c = start(submission_tls());
    c.expect(GREETING).await;
    c.say("EHLO client.test\r\n", EHLO_AUTH).await;
    c.say("AUTH LOGIN YWxpY2U=\r\n", "334 UGFzc3dvcmQ6\r\n")
        .await;
    c.say("cHc=\r\n", AUTH_OK).await;
    c.quit().await;
}

#[tokio::test(start_paused = true)]
async fn auth_failures_cancel_and_bad_input() {
    let mut c = start(SessionConfig {
        auth_failures: 2,
        ..submission_tls()
    });
    c.expect(GREETING).await;
    c.say("EHLO client.test\r\n", EHLO_AUTH).await;
    c.say("AUTH PLAIN\r\n", "334 \r\n").await;
    c.say("*\r\n", "501 5.0.0 Authentication cancelled\r\n")
        .await;
    c.say("AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n").await;
    c.say("*\r\n", "501 5.0.0 Authentication cancelled\r\n")
        .await;
    c.say("AUTH PLAIN !!!\r\n", "501 5.5.2 Cannot decode response\r\n")
        .await;
    c.say(
        "AUTH CRAM-MD5\r\n",
        "504 5.5.4 Unrecognized authentication type\r\n",
    )
    .await;
    // The user without the submit role fails like a wrong password.
    let start = tokio::time::Instant::now();
    // base64("\0nosubmit\0pw")
    c.say("AUTH PLAIN AG5vc3VibWl0AHB3\r\n", AUTH_BAD).await;
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "no failure delay"
    );
    // base64("\0alice\0wrong"): the second failure closes the session.
    c.say(
        "AUTH PLAIN AGFsaWNlAHdyb25n\r\n",
        &format!("{AUTH_BAD}421 4.7.0 mx.test Too many authentication failures\r\n"),
    )
    .await;
    c.expect_close().await;
}

#[tokio::test]
async fn auth_needs_tls_or_permission_and_a_submission_listener() {
    // Submission in plaintext from a remote peer: not offered, 538 if tried.
    let (mut c, _up) = start_tls(submission());
    c.expect(GREETING).await;
    c.say("AUTH PLAIN\r\n", "503 5.5.1 Error: send EHLO first\r\n")
        .await;
    c.say("EHLO client.test\r\n", EHLO_STARTTLS).await;
    c.say(
        &format!("AUTH PLAIN {ALICE_PLAIN}\r\n"),
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n",
    )
    .await;
    // After STARTTLS it is offered.
    c.say("STARTTLS\r\n", READY).await;
    c.say("EHLO client.test\r\n", EHLO_AUTH).await;
    c.say(&format!("AUTH PLAIN {ALICE_PLAIN}\r\n"), AUTH_OK)
        .await;
    c.quit().await;
    // A plain smtp listener offers no AUTH at all.
    let mut c = start(SessionConfig {
        tls: true,
        ..config()
    });
    c.ehlo().await;
    c.say(
        &format!("AUTH PLAIN {ALICE_PLAIN}\r\n"),
        "502 5.5.1 Error: command not implemented\r\n",
    )
    .await;
    c.quit().await;
    // Loopback (or allow_plaintext_auth): offered without TLS.
    let mut c = start(SessionConfig {
        plaintext_auth_allowed: true,
        ..submission()
    });
    c.expect(GREETING).await;
    c.say("EHLO client.test\r\n", EHLO_AUTH).await;
    c.say(&format!("AUTH PLAIN {ALICE_PLAIN}\r\n"), AUTH_OK)
        .await;
    c.quit().await;
}
