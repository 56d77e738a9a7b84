#![no_main]
//! The DATA decoder, fed in two chunks split by the first byte: it never panics
//! and only CRLF "." CRLF ends the data.
use maildird::config::BareLf;
use maildird::smtp::data::DotDecoder;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let cut = usize::from(split) % (rest.len() + 1);
    for policy in [BareLf::Normalize, BareLf::Reject] {
        let mut d = DotDecoder::new(policy, 1000);
        let mut out = Vec::new();
        let mut consumed = 0;
        for chunk in [&rest[..cut], &rest[cut..]] {
            let mut c = chunk;
            while !c.is_empty() {
                let f = d.feed(c, &mut out);
                consumed += f.consumed;
                c = &c[f.consumed..];
                if f.done {
                    let seen = &rest[..consumed];
                    assert!(seen.ends_with(b"\r\n.\r\n") || seen == b".\r\n");
                    return;
                }
            }
        }
        let _ = d.finish();
    }
});
