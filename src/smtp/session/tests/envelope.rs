//! Tests of MAIL and RCPT.

use super::*;

#[tokio::test]
async fn recipient_cap() {
    let mut c = start(SessionConfig {
        max_errors: 1000,
        ..config()
    });
    c.ehlo().await;
    let mut cmds = String::from("MAIL FROM:<s@x.test>\r\n");
    let mut want = String::from(MAIL_OK);
    for i in 0..100 {
        cmds.push_str(&format!("RCPT TO:<u{i}@d>\r\n"));
        want.push_str(RCPT_OK);
    }
    cmds.push_str("RCPT TO:<one-too-many@d>\r\nDATA\r\n");
    want.push_str("452 4.5.3 Too many recipients\r\n");
    want.push_str(GO_AHEAD);
    c.say(&cmds, &want).await;
    c.say("x\r\n.\r\n", DELIVERED).await;
    let log = c.quit().await;
    let log = log.lock().unwrap();
    assert_eq!(log.delivered[0].0.rcpts.len(), 100);
    assert_eq!(log.delivered[0].0.rcpts[99].1, ["u99"]);
}

#[tokio::test]
async fn postmaster_unknown_users_and_no_valid_recipients() {
    let mut c = start(config());
    c.ehlo().await;
    c.say("MAIL FROM:<s@x.test>\r\n", MAIL_OK).await;
    c.say(
        "RCPT TO:<unknown1@d>\r\n",
        "550 5.1.1 Recipient address rejected: User unknown\r\n",
    )
    .await;
    c.say("DATA\r\n", "554 5.5.1 Error: no valid recipients\r\n")
        .await;
    c.say(
        "BDAT 3 LAST\r\nabc",
        "554 5.5.1 Error: no valid recipients\r\n",
    )
    .await;
    c.say("RCPT TO:<Postmaster>\r\n", RCPT_OK).await;
    // Same recipient twice: one copy.
    c.say("RCPT TO:<Postmaster>\r\n", RCPT_OK).await;
    c.say(
        "RCPT TO:<jörg@d>\r\n",
        "553 5.6.7 Must declare SMTPUTF8 to send Unicode addresses\r\n",
    )
    .await;
    c.say("DATA\r\n", GO_AHEAD).await;
    c.say("x\r\n.\r\n", DELIVERED).await;
    let log = c.quit().await;
    let log = log.lock().unwrap();
    assert_eq!(
        log.delivered[0].0.rcpts,
        vec![("Postmaster".into(), vec!["postmaster".into()])]
    );
}

#[tokio::test]
async fn smtputf8_transaction() {
    let mut c = start(config());
    c.ehlo().await;
    c.say(
        "MAIL FROM:<jörg@x.test> SMTPUTF8 BODY=8BITMIME SIZE=20\r\n",
        MAIL_OK,
    )
    .await;
    c.say("RCPT TO:<zoë@d>\r\n", RCPT_OK).await;
    c.say("DATA\r\n", GO_AHEAD).await;
    c.say("x\r\n.\r\n", DELIVERED).await;
    let log = c.quit().await;
    let log = log.lock().unwrap();
    let (_, proto, env) = &log.begins[0];
    assert_eq!(proto, "UTF8SMTP");
    assert!(env.smtputf8 && env.body_8bit);
    assert_eq!(env.declared_size, Some(20));
    assert_eq!(env.rcpts, vec![("zoë@d".into(), vec!["zoë".into()])]);
}
