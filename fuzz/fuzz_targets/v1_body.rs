//! `/v1` request validation: never panics; an accepted body has a usable model name.
#![no_main]
use cortex_server::v1::body::parse;
use cortex_server::v1::Endpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for endpoint in [Endpoint::Chat, Endpoint::Completions, Endpoint::Embeddings] {
        if let Ok(request) = parse(endpoint, data) {
            assert!(!request.model.is_empty() && request.model.len() <= 256);
        }
    }
});
