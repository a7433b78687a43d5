//! The request-header parsers that decide identity: `X-Forwarded-For` (client IP, which keys
//! rate limits), `Authorization: Bearer` and the session cookie. They never panic; an untrusted
//! peer is never replaced by what the header says; whatever they return came from the header.
#![no_main]
use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue};
use cortex_server::admin::principal::cookie;
use cortex_gateway::authenticate::bearer_token;
use cortex_server::middleware::client_ip::resolve;
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for name in ["x-forwarded-for", "authorization", "cookie"] {
        headers.insert(name, value.clone());
    }
    let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    let outsider: IpAddr = "192.0.2.7".parse().unwrap();
    assert_eq!(resolve(outsider, &headers, &trusted), outsider);

    let proxy: IpAddr = "10.1.2.3".parse().unwrap();
    let client = resolve(proxy, &headers, &trusted);
    if client != proxy {
        let text = value.to_str().unwrap();
        assert!(
            text.split(',').any(|part| part.trim().parse::<IpAddr>() == Ok(client)),
            "{client} does not appear in {text:?}"
        );
    }

    let text = String::from_utf8_lossy(data);
    if let Some(token) = bearer_token(&headers) {
        assert!(!token.is_empty() && text.contains(token));
    }
    if let Some(session) = cookie(&headers, "cortex_session") {
        assert!(!session.is_empty() && text.contains(session));
    }
});
