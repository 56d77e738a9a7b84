#![no_main]
//! The POP3 command parser must answer any line.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = maildird::pop3::command::parse(data);
});
