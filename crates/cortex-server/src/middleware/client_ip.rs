//! The client's IP: the TCP peer, or the address a trusted proxy put in `X-Forwarded-For`.
//!
//! `X-Forwarded-For` is read only when the peer itself is in `CORTEX_TRUSTED_PROXIES`, and then
//! from the right: each hop appends, so the rightmost address not belonging to a trusted proxy
//! is the first one a trusted party vouches for. Anything a client wrote to the left is ignored.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use http::{Request, Response};
use ipnet::IpNet;

use crate::middleware::inline::Inline;
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for part in text.rsplit(',') {
            let Ok(ip) = part.trim().parse::<IpAddr>() else {
                return client;
            };
            client = ip;
            if !is_trusted(&ip) {
                return client;
            }
        }
    }
    client
}

/// Puts the [`ClientIp`] into the request's extensions.
#[derive(Clone)]
pub struct AssignClientIp {
    app: AppState,
}

impl AssignClientIp {
    pub fn new(app: AppState) -> Self {
        Self { app }
    }
}

impl<ResBody> Inline<ResBody> for AssignClientIp {
    type Carry = ();

    fn before<B>(&self, request: &mut Request<B>) -> Result<(), Response<ResBody>> {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let ip = resolve(peer, request.headers(), &self.app.config.trusted_proxies);
        request.extensions_mut().insert(ClientIp(ip));
        Ok(())
    }

    fn after((): (), response: Response<ResBody>) -> Response<ResBody> {
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
        h
    }

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(resolve(peer, &headers("1.2.3.4"), &trusted), peer);
        assert_eq!(resolve(peer, &headers("1.2.3.4"), &[]), peer);
    }

    #[test]
    fn trusted_proxy_chain_is_walked_from_the_right() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // The client wrote "6.6.6.6" itself; 198.51.100.7 is what our proxy saw.
        let ip = resolve(peer, &headers("6.6.6.6, 198.51.100.7, 10.0.0.1"), &trusted);
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        // Garbage stops the walk at the last good address.
        let ip = resolve(peer, &headers("not-an-ip"), &trusted);
        assert_eq!(ip, peer);
    }
}
