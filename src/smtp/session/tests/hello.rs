//! Tests of EHLO/HELO, RSET, NOOP, QUIT, VRFY, EXPN and HELP.

use super::*;

#[tokio::test]
async fn greeting_ehlo_helo_and_quit() {
    let mut c = start(config());
    c.ehlo().await;
    c.say("HELO other.test\r\n", "250 mx.test\r\n").await;
    c.say("NOOP\r\n", OK).await;
    c.say(
        "VRFY alice\r\n",
        "252 2.5.0 Cannot VRFY user, but will accept message\r\n",
    )
    .await;
    c.say("EXPN staff\r\n", "502 5.5.1 EXPN not available\r\n")
        .await;
    c.say(
        "HELP\r\n",
        "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n",
    )
    .await;
    c.say(
        "STARTTLS\r\n",
        "502 5.5.1 Error: command not implemented\r\n",
    )
    .await;
    c.say(
        "AUTH PLAIN AGEAYg==\r\n",
        "502 5.5.1 Error: command not implemented\r\n",
    )
    .await;
    c.quit().await;
}

#[tokio::test]
async fn ehlo_and_rset_reset_the_transaction() {
    let mut c = start(config());
    c.ehlo().await;
    c.envelope("s@x.test", &["a@d"]).await;
    c.say("EHLO again.test\r\n", EHLO_REPLY).await;
    c.say(
        "RCPT TO:<a@d>\r\n",
        "503 5.5.1 Error: need MAIL command\r\n",
    )
    .await;
    c.say("DATA\r\n", "503 5.5.1 Error: need MAIL command\r\n")
        .await;
    c.envelope("s@x.test", &["a@d"]).await;
    c.say("RSET\r\n", OK).await;
    c.say("DATA\r\n", "503 5.5.1 Error: need MAIL command\r\n")
        .await;
    // The session survives: a new transaction works and HELO data is kept.
    c.say("MAIL FROM:<>\r\n", MAIL_OK).await;
    c.say(
        "MAIL FROM:<>\r\n",
        "503 5.5.1 Error: nested MAIL command\r\n",
    )
    .await;
    c.say("RCPT TO:<b@d>\r\n", RCPT_OK).await;
    c.say("DATA\r\n", GO_AHEAD).await;
    c.say("x\r\n.\r\n", DELIVERED).await;
    let log = c.quit().await;
    let log = log.lock().unwrap();
    assert_eq!(log.delivered.len(), 1);
    assert_eq!(log.delivered[0].0.mail_from, "");
    assert_eq!(
        log.delivered[0].0.rcpts,
        vec![("b@d".into(), vec!["b".into()])]
    );
    assert_eq!(log.begins[0].0, "again.test");
    assert_eq!(log.begins[0].1, "ESMTP");
}

#[tokio::test]
async fn commands_before_helo_are_refused() {
    let mut c = start(config());
    c.expect(GREETING).await;
    c.say(
        "MAIL FROM:<s@x.test>\r\n",
        "503 5.5.1 Error: send HELO/EHLO first\r\n",
    )
    .await;
    c.say("RSET\r\n", OK).await;
    c.say("HELO c.test\r\n", "250 mx.test\r\n").await;
    c.transaction("s@x.test", &["a@d"], "").await;
    let log = c.quit().await;
    let log = log.lock().unwrap();
    assert_eq!(
        (log.begins[0].0.as_str(), log.begins[0].1.as_str()),
        ("c.test", "SMTP")
    );
    assert_eq!(log.delivered[0].1, b"");
}
