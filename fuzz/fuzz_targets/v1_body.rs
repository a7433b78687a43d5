//! `/v1` request validation: never panics; an accepted body has a usable model name, and the
//! body written for upstream is a JSON object whose `model` is the provider's name.
#![no_main]
use cortex_wire::body::parse;
use cortex_wire::Endpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for endpoint in [Endpoint::Chat, Endpoint::Completions, Endpoint::Embeddings] {
        if let Ok(request) = parse(endpoint, data) {
            assert!(!request.model.is_empty() && request.model.len() <= 256);
            if let Ok(upstream) = request.upstream_body("upstream-name") {
                let value: serde_json::Value =
                    serde_json::from_slice(&upstream).expect("upstream body is JSON");
                assert_eq!(value["model"], "upstream-name");
                if request.stream {
                    assert_eq!(value["stream_options"]["include_usage"], true);
                }
            }
        }
    }
});
