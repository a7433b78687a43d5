//! What the edge learns about a request before the data plane sees it, carried in the
//! request's extensions: the client's address (as limits count it) and the request id. The
//! HTTP layer's middleware fills them in; the pipeline and the admin API read them.

use std::net::IpAddr;

use axum::http::HeaderValue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The address as per-address limits count it (see [`AddressBucket`]).
    pub fn bucket(self) -> AddressBucket {
        AddressBucket::of(self.0)
    }
}

/// The TCP peer is one of `CORTEX_TRUSTED_PROXIES`: what it says about the request (an
/// incoming `traceparent`) may be believed. Absent for every other peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FromTrustedProxy;

/// What per-address limits (failed keys, logins, MCP, connections) count as one client: an
/// IPv4 address, or an IPv6 /64. One IPv6 subscriber usually holds a whole /64, so counting
/// /128s would give an attacker 2^64 fresh buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressBucket {
    V4(std::net::Ipv4Addr),
    V6Prefix64(u64),
}

impl AddressBucket {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => AddressBucket::V4(v4),
            IpAddr::V6(v6) => AddressBucket::V6Prefix64((v6.to_bits() >> 64) as u64),
        }
    }
}

impl std::fmt::Display for AddressBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressBucket::V4(v4) => write!(f, "{v4}"),
            AddressBucket::V6Prefix64(prefix) => {
                let net = std::net::Ipv6Addr::from_bits(u128::from(*prefix) << 64);
                write!(f, "{net}/64")
            }
        }
    }
}

/// The id of the current request, in request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

/// The error a body read returns once its deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body read timeout")]
pub struct BodyTimedOut;

/// Whether `error`, or any error it wraps, is a [`BodyTimedOut`].
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<BodyTimedOut>() {
            return true;
        }
        current = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_64_is_one_bucket() {
        let a = AddressBucket::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = AddressBucket::of("2001:db8:1:2:ffff:1:2:3".parse().unwrap());
        let other = AddressBucket::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let v4 = AddressBucket::of("192.0.2.1".parse().unwrap());
        assert_eq!(v4, AddressBucket::of("::ffff:192.0.2.1".parse().unwrap()));
        assert_eq!(v4.to_string(), "192.0.2.1");
    }
}
