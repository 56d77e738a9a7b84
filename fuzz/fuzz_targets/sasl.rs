#![no_main]
//! SASL PLAIN / LOGIN decoding of arbitrary client responses.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = maildird::sasl::decode_plain(s);
        let _ = maildird::sasl::decode_login_step(s);
        let _ = maildird::sasl::decode_login_password(s);
    }
});
