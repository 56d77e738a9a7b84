#![no_main]
//! The config parser and validator.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = maildird::config::Config::parse(s, "fuzz");
    }
});
