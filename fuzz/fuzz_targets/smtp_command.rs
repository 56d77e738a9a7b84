#![no_main]
//! The SMTP command parser must answer any line with a command or a reply.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = maildird::smtp::command::parse(data);
});
