#![no_main]
//! PROXY v1/v2 header parsing as the proxy filter does it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ppp::HeaderResult::parse(data);
});
