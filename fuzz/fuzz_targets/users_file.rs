#![no_main]
//! The passwd-file parser, and name validation of whatever it accepts.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(db) = maildird::auth::UserDb::parse(s) {
            for u in db.iter() {
                assert!(maildird::auth::validate_name(&u.name).is_ok());
            }
        }
    }
});
