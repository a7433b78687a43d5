//! API key parsing must never panic, and anything it accepts has the exact wire shape.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(parsed) = cortex_domain::api_key::parse_api_key(text) {
            assert_eq!(parsed.public_id.len(), cortex_domain::api_key::PUBLIC_ID_LEN);
            assert_eq!(parsed.secret.len(), cortex_domain::api_key::SECRET_LEN);
            assert!(text.starts_with("ctx_"));
        }
    }
});
