//! SASL PLAIN (RFC 4616) and LOGIN decoding, shared by SMTP AUTH (RFC 4954) and
//! POP3 AUTH (RFC 5034). Pure: base64 text in, credentials out. Passwords are
//! wrapped in `Password`, whose `Debug` never shows the value (README, Security).

use std::fmt;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Standard alphabet; padding optional because some clients omit it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A password as received. `Debug` prints `Password(<redacted>)`; read the
/// bytes with `expose`, only to hand them to the verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl Password {
    pub fn new(bytes: Vec<u8>) -> Password {
        Password(bytes)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        // Best effort: overwrite before the allocator reuses the memory.
        self.0.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&self.0);
    }
}

/// RFC 4616 PLAIN credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plain {
    /// The identity to act as; None when empty or equal to `authcid`.
    pub authzid: Option<String>,
    /// The identity whose password is checked.
    pub authcid: String,
    pub password: Password,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 §4, RFC 5034 §4): answer 501 / -ERR.
    #[error("authentication cancelled")]
    Cancelled,
    #[error("invalid base64")]
    Base64,
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    /// RFC 4616 §2: we only let a user act as themself.
    #[error("authorization identity differs from authentication identity")]
    AuthzidMismatch,
}

/// Decode one client line: `*` cancels, `=` is an empty response (RFC 4954 §4).
pub fn decode_response(b64: &str) -> Result<Vec<u8>, SaslError> {
    let s = b64.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r' || c == '\n');
    if s == "*" {
        return Err(SaslError::Cancelled);
    }
    if s == "=" {
        return Ok(Vec::new());
    }
    B64.decode(s).map_err(|_| SaslError::Base64)
}

/// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`, base64-encoded.
pub fn decode_plain(b64: &str) -> Result<Plain, SaslError> {
    let raw = decode_response(b64)?;
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed("expected two NUL separators"));
    };
    let authzid =
        std::str::from_utf8(authzid).map_err(|_| SaslError::Malformed("authzid is not UTF-8"))?;
    let authcid =
        std::str::from_utf8(authcid).map_err(|_| SaslError::Malformed("authcid is not UTF-8"))?;
    if authcid.is_empty() {
        return Err(SaslError::Malformed("empty authcid"));
    }
    if password.is_empty() {
        return Err(SaslError::Malformed("empty password"));
    }
    let authzid = match authzid {
        "" => None,
        z if z == authcid => None,
        _ => return Err(SaslError::AuthzidMismatch),
    };
    Ok(Plain {
        authzid,
        authcid: authcid.to_string(),
        password: Password::new(password.to_vec()),
    })
}

/// One LOGIN step (the user name): base64 of UTF-8 text without NUL or line breaks.
pub fn decode_login_step(b64: &str) -> Result<String, SaslError> {
    let raw = decode_response(b64)?;
    if raw.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(SaslError::Malformed("control character"));
    }
    String::from_utf8(raw).map_err(|_| SaslError::Malformed("not UTF-8"))
}

/// The LOGIN password step, kept as redacted bytes.
pub fn decode_login_password(b64: &str) -> Result<Password, SaslError> {
    let raw = decode_response(b64)?;
    if raw.contains(&0) {
        return Err(SaslError::Malformed("NUL in password"));
    }
    Ok(Password::new(raw))
}

/// Server challenges of the LOGIN mechanism (base64 of `Username:`/`Password:`).
pub const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(raw: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    type Decoded = Result<(Option<String>, String, Vec<u8>), SaslError>;

    #[test]
    fn plain_table() {
        let ok = |z: Option<&str>, c: &str, p: &[u8]| {
            Ok::<_, SaslError>((z.map(String::from), c.to_string(), p.to_vec()))
        };
        let cases: Vec<(String, Decoded)> = vec![
            (b64(b"\0alice\0secret"), ok(None, "alice", b"secret")),
            (b64(b"alice\0alice\0secret"), ok(None, "alice", b"secret")),
            (
                b64(b"\0al\xc3\xafce\0p\xffw"),
                ok(None, "al\u{ef}ce", b"p\xffw"),
            ),
            // Unpadded base64 is accepted; surrounding spaces too.
            (
                b64(b"\0bob\0pw").trim_end_matches('=').to_string(),
                ok(None, "bob", b"pw"),
            ),
            (format!(" {} ", b64(b"\0bob\0pw")), ok(None, "bob", b"pw")),
            (
                b64(b"admin\0alice\0secret"),
                Err(SaslError::AuthzidMismatch),
            ),
            (
                b64(b"\0\0secret"),
                Err(SaslError::Malformed("empty authcid")),
            ),
            (
                b64(b"\0alice\0"),
                Err(SaslError::Malformed("empty password")),
            ),
            (
                b64(b"alice\0secret"),
                Err(SaslError::Malformed("expected two NUL separators")),
            ),
            (
                b64(b"alicesecret"),
                Err(SaslError::Malformed("expected two NUL separators")),
            ),
            (
                b64(b"\0alice\0sec\0ret"),
                Err(SaslError::Malformed("expected two NUL separators")),
            ),
            (
                b64(b"\0\xffalice\0pw"),
                Err(SaslError::Malformed("authcid is not UTF-8")),
            ),
            (
                b64(b"\xff\0alice\0pw"),
                Err(SaslError::Malformed("authzid is not UTF-8")),
            ),
            (
                "=".into(),
                Err(SaslError::Malformed("expected two NUL separators")),
            ),
            (
                "".into(),
                Err(SaslError::Malformed("expected two NUL separators")),
            ),
            ("not base64!".into(), Err(SaslError::Base64)),
            ("AGFsaWNlAHNlY3JldA=x".into(), Err(SaslError::Base64)),
            ("*".into(), Err(SaslError::Cancelled)),
        ];
        for (input, want) in cases {
            let got = decode_plain(&input).map(|p| {
                (
                    p.authzid.clone(),
                    p.authcid.clone(),
                    p.password.expose().to_vec(),
                )
            });
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn login_steps() {
        assert_eq!(decode_login_step(&b64(b"alice")), Ok("alice".to_string()));
        assert_eq!(decode_login_step("="), Ok(String::new()));
        assert_eq!(decode_login_step("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_login_step("%%%"), Err(SaslError::Base64));
        assert_eq!(
            decode_login_step(&b64(b"a\nb")),
            Err(SaslError::Malformed("control character"))
        );
        assert_eq!(
            decode_login_step(&b64(b"\xff")),
            Err(SaslError::Malformed("not UTF-8"))
        );
        assert_eq!(
            decode_login_password(&b64(b"s3cr3t")).unwrap().expose(),
            b"s3cr3t"
        );
        assert_eq!(decode_login_password("*"), Err(SaslError::Cancelled));
        assert!(decode_login_password(&b64(b"a\0b")).is_err());
        let dec = |s| base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        assert_eq!(dec(LOGIN_USERNAME_CHALLENGE), b"Username:");
        assert_eq!(dec(LOGIN_PASSWORD_CHALLENGE), b"Password:");
    }

    #[test]
    fn password_is_redacted_in_debug() {
        let p = decode_plain(&b64(b"\0alice\0hunter2")).unwrap();
        let s = format!("{p:?} {:?}", p.password);
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("alice") && s.contains("<redacted>"), "{s}");
    }
}
