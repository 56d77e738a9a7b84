//! Password hash verification for Dovecot-style `{SCHEME}hash` strings, and the
//! hash `maildird hash-password` / `user add` write. Pure and blocking (argon2id
//! takes tens of milliseconds and 64 MiB: callers run it off the async threads).

use sha2::{Digest, Sha256};

/// Does `password` match `stored` (`{SCHEME}hash` as in the users file)?
///
/// Schemes (names case-insensitive, as in Dovecot): `{ARGON2ID}`, `{ARGON2I}`
/// (PHC strings), `{SHA512-CRYPT}`, `{SHA256-CRYPT}`, `{BLF-CRYPT}` (bcrypt
/// `$2y$`/`$2b$`/`$2a$`), `{CRYPT}` (dispatched on the `$id$` of the hash), and
/// `{PLAIN}`/`{CLEAR}`/`{CLEARTEXT}` (compared in constant time; for tests and
/// migrations only — never store real passwords in clear). A hash without a
/// `{SCHEME}` prefix is `{CRYPT}`, Dovecot's default for passwd-files. Unknown
/// schemes, malformed hashes, `$1$` (MD5), `$y$` (yescrypt) and DES crypt are
/// refused: `false`.
pub fn verify(stored: &str, password: &[u8]) -> bool {
    let (scheme, hash) = split_scheme(stored);
    match scheme.to_ascii_uppercase().as_str() {
        "ARGON2ID" | "ARGON2I" => verify_argon2(hash, password),
        "SHA512-CRYPT" | "SHA256-CRYPT" => verify_sha_crypt(hash, password),
        "BLF-CRYPT" => verify_bcrypt(hash, password),
        "CRYPT" => verify_crypt(hash, password),
        "PLAIN" | "CLEAR" | "CLEARTEXT" => constant_time_eq(hash.as_bytes(), password),
        _ => false,
    }
}

/// Can `verify` ever accept `stored`? False for unknown schemes and for
/// `{CRYPT}` hashes of an algorithm it refuses (MD5 `$1$`, yescrypt, DES):
/// `check-config` warns about such users, who can never log in.
pub fn is_supported(stored: &str) -> bool {
    let (scheme, hash) = split_scheme(stored);
    match scheme.to_ascii_uppercase().as_str() {
        "ARGON2ID" | "ARGON2I" | "SHA512-CRYPT" | "SHA256-CRYPT" | "BLF-CRYPT" | "PLAIN"
        | "CLEAR" | "CLEARTEXT" => true,
        "CRYPT" => [
            "$6$",
            "$5$",
            "$2y$",
            "$2b$",
            "$2a$",
            "$argon2id$",
            "$argon2i$",
        ]
        .iter()
        .any(|p| hash.starts_with(p)),
        _ => false,
    }
}

/// The scheme name of a stored hash (`CRYPT` when it has no `{...}` prefix).
pub fn scheme(stored: &str) -> &str {
    split_scheme(stored).0
}

fn split_scheme(stored: &str) -> (&str, &str) {
    match stored
        .strip_prefix('{')
        .and_then(|rest| rest.split_once('}'))
    {
        Some((scheme, hash)) => (scheme, hash),
        None => ("CRYPT", stored),
    }
}

/// `{CRYPT}`: the modular crypt format names its algorithm in `$id$`.
fn verify_crypt(hash: &str, password: &[u8]) -> bool {
    if hash.starts_with("$6$") || hash.starts_with("$5$") {
        verify_sha_crypt(hash, password)
    } else if hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$") {
        verify_bcrypt(hash, password)
    } else if hash.starts_with("$argon2id$") || hash.starts_with("$argon2i$") {
        verify_argon2(hash, password)
    } else {
        false
    }
}

fn verify_argon2(hash: &str, password: &[u8]) -> bool {
    use argon2::{Argon2, PasswordVerifier};
    // The algorithm, version and costs come from the PHC string itself.
    Argon2::default().verify_password(password, hash).is_ok()
}

fn verify_sha_crypt(hash: &str, password: &[u8]) -> bool {
    use sha_crypt::{PasswordVerifier, ShaCrypt};
    if !(hash.starts_with("$6$") || hash.starts_with("$5$")) {
        return false;
    }
    // The `$5$`/`$6$` id selects SHA-256 or SHA-512; `rounds=` is read from the hash.
    ShaCrypt::default().verify_password(password, hash).is_ok()
}

fn verify_bcrypt(hash: &str, password: &[u8]) -> bool {
    // bcrypt only reads the first 72 bytes of a password (as Dovecot's does).
    bcrypt::verify(password, hash).unwrap_or(false)
}

/// Equal-time comparison: both sides are hashed first, so neither the position
/// of the first difference nor the length of the stored value shows in timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A new `{SHA512-CRYPT}$6$rounds=5000$<salt>$<hash>` for the users file.
///
/// Why SHA512-CRYPT and not argon2id: every Dovecot and glibc understands it, it
/// costs a few milliseconds and no memory (argon2id's default costs 64 MiB per
/// verification, which the daemon must bound with `hash_concurrency`), and the
/// test suites hash many passwords. `{ARGON2ID}` hashes made by `doveadm pw -s
/// ARGON2ID` are verified all the same.
pub fn hash_password(password: &[u8]) -> String {
    use sha_crypt::{PasswordHasher, ShaCrypt};
    // 12 random bytes encode to the 16 salt characters sha-crypt uses at most.
    let salt: [u8; 12] = rand::random();
    match ShaCrypt::SHA512.hash_password_with_salt(password, &salt) {
        Ok(h) => format!("{{SHA512-CRYPT}}{}", AsRef::<str>::as_ref(&h)),
        // Unreachable for SHA-512 with a 12-byte salt; an unverifiable hash is
        // the safe fallback (no password matches it).
        Err(_) => "{SHA512-CRYPT}!".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixtures from independent implementations (password "password" unless noted):
    // `openssl passwd -6 -salt abcdefgh password`, `openssl passwd -5 ...`,
    // glibc crypt(3) via Python's `crypt` module for bcrypt and rounds=, and the
    // reference libargon2 (`argon2id_hash_encoded`) via ctypes — the same formats
    // `doveadm pw -s SHA512-CRYPT|SHA256-CRYPT|BLF-CRYPT|ARGON2ID` writes. Argon2
    // fixtures use m=1024 because Dovecot's default m=65536 takes seconds in a
    // debug build; the parameters are read from the string either way.
    const SHA512: &str = "$6$abcdefgh$yVfUwsw5T.JApa8POvClA1pQ5peiq97DUNyXCZN5IrF.BMSkiaLQ5kvpuEm/VQ1Tvh/KV2TcaWh8qinoW5dhA1";
    const SHA512_ROUNDS: &str = "$6$rounds=2000$saltsalt$juNUV6YWboL.qGQ8lyFLSzQEds18aQEB/v7.PaD5wASd/KBMyvJMIX.dWxHGcxXXg.YYGJuEFvQupCrV985PP0";
    /// Password "secret".
    const SHA512_SECRET: &str = "$6$rounds=1000$xyz$65ELfJXFY9CVU2.3nHlH8CN/n7NYcHnBLkrfS1Qll2Xpp9nHw1V6h.BSm0oyExW62BQwEm9ThMQtn18gGXODT.";
    const SHA256: &str = "$5$abcdefgh$ZLdkj8mkc2XVSrPVjskDAgZPGjtj1VGVaa1aUkrMTU/";
    const BCRYPT_2B: &str = "$2b$05$abcdefghijklmnopqrstuuWG29KuyeAicPCJODk1zjyGvyQUU2awu";
    const BCRYPT_2B_4: &str = "$2b$04$p/Vpr5Cd.fjQ7qmDhKZvt.aCRk.iub4A6/tGqfeb1peh9oZJrKM4u";
    const ARGON2ID: &str = "$argon2id$v=19$m=1024,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$+OCTCTprQcSYBBcPMuh2AqthnppoahTpH02L8eYM6gs";
    const ARGON2I: &str = "$argon2i$v=19$m=1024,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$7xtm1t3WkAx+5m1bY51IVeIntlGjmuLALEqOrFVtx0k";

    #[test]
    fn schemes_table() {
        let s = |scheme: &str, h: &str| format!("{{{scheme}}}{h}");
        let bcrypt_2y = BCRYPT_2B.replacen("$2b$", "$2y$", 1);
        let cases: Vec<(String, &[u8], bool)> = vec![
            (s("SHA512-CRYPT", SHA512), b"password", true),
            (s("SHA512-CRYPT", SHA512), b"Password", false),
            (s("SHA512-CRYPT", SHA512), b"", false),
            (s("sha512-crypt", SHA512), b"password", true),
            (s("SHA512-CRYPT", SHA512_ROUNDS), b"password", true),
            (s("SHA512-CRYPT", SHA512_ROUNDS), b"passwor", false),
            (s("SHA512-CRYPT", SHA512_SECRET), b"secret", true),
            (s("SHA512-CRYPT", SHA512_SECRET), b"password", false),
            (s("SHA256-CRYPT", SHA256), b"password", true),
            (s("SHA256-CRYPT", SHA256), b"password1", false),
            (s("BLF-CRYPT", BCRYPT_2B), b"password", true),
            (s("BLF-CRYPT", BCRYPT_2B), b"wrong", false),
            (s("BLF-CRYPT", &bcrypt_2y), b"password", true),
            (s("BLF-CRYPT", BCRYPT_2B_4), b"password", true),
            (s("BLF-CRYPT", BCRYPT_2B_4), b"passwore", false),
            (s("ARGON2ID", ARGON2ID), b"password", true),
            (s("ARGON2ID", ARGON2ID), b"passw0rd", false),
            (s("ARGON2I", ARGON2I), b"password", true),
            (s("ARGON2I", ARGON2I), b"hunter2", false),
            (s("CRYPT", SHA512), b"password", true),
            (s("CRYPT", SHA512), b"nope", false),
            (s("CRYPT", SHA256), b"password", true),
            (s("CRYPT", BCRYPT_2B), b"password", true),
            (s("CRYPT", ARGON2ID), b"password", true),
            (s("CRYPT", ARGON2ID), b"nope", false),
            (SHA512.to_string(), b"password", true),
            (SHA512.to_string(), b"nope", false),
            (s("PLAIN", "password"), b"password", true),
            (s("PLAIN", "password"), b"password ", false),
            (s("PLAIN", "password"), b"passwor", false),
            (s("CLEARTEXT", "x:y"), b"x:y", true),
            (s("PLAIN", ""), b"", true),
            (s("PLAIN", ""), b"x", false),
        ];
        for (stored, pw, want) in cases {
            assert_eq!(
                verify(&stored, pw),
                want,
                "{stored} / {:?}",
                String::from_utf8_lossy(pw)
            );
        }
    }

    #[test]
    fn refused_hashes() {
        for stored in [
            "{MD5-CRYPT}$1$abc$BXBqpb9BZcZhXLgbee.0s/",
            "{CRYPT}$1$abc$BXBqpb9BZcZhXLgbee.0s/",
            "{CRYPT}$y$j9T$$NJLey1.PlKBNRXKC8paA5/oiM57RRZku22T4YZVfTGA",
            "{CRYPT}abJnggxhB/yWI",
            "{SSHA256}whatever",
            "{UNKNOWN}password",
            "{SHA512-CRYPT}",
            "{SHA512-CRYPT}!",
            "{SHA512-CRYPT}$6$abcdefgh$short",
            // Scheme/hash mismatch: a bcrypt hash labelled SHA512-CRYPT.
            "{SHA512-CRYPT}$2b$05$abcdefghijklmnopqrstuuWG29KuyeAicPCJODk1zjyGvyQUU2awu",
            "{ARGON2ID}$argon2id$v=19$m=1024,t=2,p=1$c2FsdA$garbage",
            "{BLF-CRYPT}$2b$05$tooshort",
            "{PLAIN",
            "",
        ] {
            assert!(!verify(stored, b"password"), "{stored}");
        }
    }

    #[test]
    fn supported_schemes_are_the_ones_verify_can_accept() {
        for ok in [
            "{ARGON2ID}$argon2id$x",
            "{sha512-crypt}$6$x",
            "{BLF-CRYPT}$2y$x",
            "{PLAIN}pw",
            "$6$salt$hash",
            "{CRYPT}$2b$x",
        ] {
            assert!(is_supported(ok), "{ok}");
        }
        for bad in [
            "{MD5-CRYPT}$1$x",
            "$1$x$y",
            "{CRYPT}$y$x",
            "{SSHA}abc",
            "abcDES",
        ] {
            assert!(!is_supported(bad), "{bad}");
        }
    }

    #[test]
    fn scheme_names() {
        assert_eq!(scheme("{ARGON2ID}$argon2id$..."), "ARGON2ID");
        assert_eq!(scheme("$6$x$y"), "CRYPT");
        assert_eq!(scheme("{PLAIN}a}b"), "PLAIN");
    }

    #[test]
    fn hash_password_round_trips_and_salts() {
        let a = hash_password(b"correct horse");
        let b = hash_password(b"correct horse");
        assert!(a.starts_with("{SHA512-CRYPT}$6$"), "{a}");
        assert_ne!(a, b, "salt must differ");
        assert!(verify(&a, b"correct horse"));
        assert!(!verify(&a, b"correct horse "));
        assert!(verify(&b, b"correct horse"));
        // A passwd-file field: no ':' and no line break.
        assert!(!a.contains(':') && !a.contains('\n'));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
