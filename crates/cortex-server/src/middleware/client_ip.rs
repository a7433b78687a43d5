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

use cortex_gateway::request_meta::{ClientIp, FromTrustedProxy};

use crate::middleware::inline::Inline;
use std::sync::Arc;

use cortex_config::Config;

/// The client's address. Every address is taken in its canonical form first: a dual-stack
/// listener sees IPv4 peers as `::ffff:a.b.c.d`, which must match IPv4 proxy ranges and count
/// against the same buckets as the plain IPv4 form.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
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
            let ip = ip.to_canonical();
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
    config: Arc<Config>,
}

impl AssignClientIp {
    pub fn new(config: Arc<Config>) -> Self {
        Self { config }
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
        let trusted = &self.config.trusted_proxies;
        let ip = resolve(peer, request.headers(), trusted);
        request.extensions_mut().insert(ClientIp(ip));
        let canonical = peer.to_canonical();
        if trusted.iter().any(|net| net.contains(&canonical)) {
            request.extensions_mut().insert(FromTrustedProxy);
        }
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

    #[test]
    fn ipv4_mapped_peers_match_ipv4_proxy_ranges() {
        // A dual-stack listener reports the IPv4 proxy 10.0.0.2 as ::ffff:10.0.0.2. Before
        // canonicalisation it matched no IPv4 range, so the proxy itself became "the client":
        // every client behind it shared one bucket.
        let peer: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = resolve(peer, &headers("198.51.100.7"), &trusted);
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        // And an untrusted mapped peer is reported (and bucketed) as its IPv4 form.
        let peer: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(
            resolve(peer, &headers("1.2.3.4"), &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A mapped address in X-Forwarded-For is walked like the IPv4 one it is.
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let ip = resolve(peer, &headers("198.51.100.7, ::ffff:10.0.0.9"), &trusted);
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }
}
