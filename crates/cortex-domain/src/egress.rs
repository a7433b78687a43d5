//! Where the gateway may send requests (and so provider credentials): the egress policy
//! (`CORTEX_UPSTREAM_ALLOW`) and the origin of a provider's base URL.
//!
//! An operator can point a provider anywhere through the admin API, so without a policy the
//! gateway is a request forger for the network it runs in: a provider at
//! `http://169.254.169.254/…` reads the cloud metadata service (and its instance credentials)
//! with the gateway's network position. The policy is checked on every address a connection
//! is opened to, after DNS resolution (`cortex-upstream`'s connector), so a name that resolves
//! — or is rebound — to a refused address is refused too; the admin API checks literal
//! addresses up front only to answer with a clear message.
//!
//! Pure: parsing and matching, no IO.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Addresses refused whatever the allow-list says, unless an allow entry lies inside one of
/// them: IPv4 link-local (which holds the metadata services of AWS, GCP, Azure and others at
/// 169.254.169.254), IPv6 link-local, AWS's IPv6 metadata address, and 169.254.0.0/16 seen
/// through the NAT64 well-known prefix. IPv4-mapped IPv6 addresses (`::ffff:169.254.169.254`)
/// are reduced to IPv4 before matching, so they are covered by the first entry.
const ALWAYS_DENIED: [IpNet; 4] = [
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16)),
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
    )),
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
        128,
    )),
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(0x0064, 0xff9b, 0, 0, 0, 0, 0xa9fe, 0),
        112,
    )),
];

/// One entry of `CORTEX_UPSTREAM_ALLOW`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowEntry {
    /// An address range; a bare address is a /32 or /128.
    Net(IpNet),
    /// A host name exactly as a provider URL names it (lower case, no trailing dot).
    Host(String),
    /// `*.example.com`: any name below `example.com` (stored as `.example.com`), not the
    /// domain itself.
    Subdomains(String),
}

/// Which addresses the gateway may connect to for providers.
///
/// Unset (the default): every address except the link-local and metadata ranges. Set: only
/// the listed ranges and host names, and still never the link-local and metadata ranges unless
/// an entry lies inside them (so `0.0.0.0/0` does not open the metadata service, but
/// `169.254.20.0/24` opens that range). A host-name entry allows the name whatever it
/// resolves to, except those ranges — a name rebound to the metadata address stays refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// `None`: not set, everything but [`ALWAYS_DENIED`].
    allow: Option<Vec<AllowEntry>>,
}

/// Why an allow-list entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not an IP address, a CIDR range, a host name or *.domain")]
pub struct EgressEntryError {
    pub entry: String,
}

impl EgressPolicy {
    /// The policy of an allow-list: CIDR ranges, addresses, host names and `*.domain`
    /// wildcards. An empty list allows nothing.
    pub fn allow_list<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, EgressEntryError> {
        let allow = entries
            .into_iter()
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(parse_entry)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { allow: Some(allow) })
    }

    /// Whether a connection to `ip`, reached through the URL host `host` (a name or an address
    /// literal, without brackets), is allowed. Cheap: a handful of comparisons, no allocation;
    /// it runs once per new connection, not per request.
    pub fn allows(&self, host: &str, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let entries = self.allow.as_deref().unwrap_or_default();
        if ALWAYS_DENIED.iter().any(|denied| denied.contains(&ip)) {
            // Only an explicit range inside the denied ones opens them.
            return entries.iter().any(|entry| match entry {
                AllowEntry::Net(net) => {
                    net.contains(&ip) && ALWAYS_DENIED.iter().any(|denied| denied.contains(net))
                }
                AllowEntry::Host(_) | AllowEntry::Subdomains(_) => false,
            });
        }
        let Some(entries) = &self.allow else {
            return true;
        };
        entries.iter().any(|entry| match entry {
            AllowEntry::Net(net) => net.contains(&ip),
            AllowEntry::Host(name) => host_matches(host, name),
            AllowEntry::Subdomains(suffix) => {
                let host = host.trim_end_matches('.');
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        })
    }

    /// For a URL whose host is an address literal: whether it is allowed (the admin API's
    /// up-front check). `None` when the host is a name, which only resolution can decide.
    pub fn allows_literal(&self, host: &str) -> Option<bool> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip = IpAddr::from_str(bare).ok()?;
        Some(self.allows(bare, ip))
    }

    /// Whether an allow-list is set (for start-up logging).
    pub fn is_restricted(&self) -> bool {
        self.allow.is_some()
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are the IPv4 address they carry: a socket
/// connecting to one reaches that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_canonical(),
        v4 @ IpAddr::V4(_) => v4,
    }
}

fn host_matches(host: &str, name: &str) -> bool {
    host.trim_end_matches('.').eq_ignore_ascii_case(name)
}

fn parse_entry(entry: &str) -> Result<AllowEntry, EgressEntryError> {
    let refuse = || EgressEntryError {
        entry: entry.to_owned(),
    };
    if let Ok(net) = IpNet::from_str(entry) {
        return Ok(AllowEntry::Net(net.trunc()));
    }
    let bare = entry.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = IpAddr::from_str(bare) {
        return Ok(AllowEntry::Net(IpNet::from(canonical(ip))));
    }
    let (wildcard, name) = match entry.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, entry),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(refuse());
    }
    Ok(if wildcard {
        AllowEntry::Subdomains(format!(".{name}"))
    } else {
        AllowEntry::Host(name)
    })
}

/// The origin of an http(s) URL: scheme, host and port (the default port filled in), compared
/// case-insensitively. A provider's stored credential belongs to the origin it was given for:
/// moving the base URL to another origin drops it, a change of path alone keeps it (the same
/// server, which already holds the credential, receives it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub tls: bool,
    /// Lower case, brackets kept on IPv6 literals, no trailing dot.
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// `None` when `url` is not an absolute http(s) URL with a host (and a valid port).
    pub fn of(url: &str) -> Option<Origin> {
        let (scheme, rest) = url.trim().split_once("://")?;
        let tls = if scheme.eq_ignore_ascii_case("https") {
            true
        } else if scheme.eq_ignore_ascii_case("http") {
            false
        } else {
            return None;
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let authority = authority.rsplit('@').next().unwrap_or_default();
        let (host, port) = if authority.starts_with('[') {
            let end = authority.find(']')?;
            (&authority[..=end], authority[end + 1..].strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        let port = match port {
            None | Some("") => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(text) => text.parse::<u16>().ok()?,
        };
        Some(Origin { tls, host, port })
    }

    /// Whether two URLs have the same origin; an unparsable URL has none, so it never matches.
    pub fn same(a: &str, b: &str) -> bool {
        match (Origin::of(a), Origin::of(b)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn by_default_everything_but_link_local_and_metadata_is_allowed() {
        let policy = EgressPolicy::default();
        for allowed in [
            "127.0.0.1",
            "10.1.2.3",
            "8.8.8.8",
            "::1",
            "2001:db8::1",
            "fd00::1",
        ] {
            assert!(policy.allows("h", ip(allowed)), "{allowed}");
        }
        for denied in [
            "169.254.169.254",
            "169.254.0.1",
            "::ffff:169.254.169.254",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!policy.allows("h", ip(denied)), "{denied}");
            assert!(!policy.allows("metadata.example", ip(denied)), "{denied}");
        }
        assert_eq!(policy.allows_literal("169.254.169.254"), Some(false));
        assert_eq!(policy.allows_literal("[::ffff:a9fe:a9fe]"), Some(false));
        assert_eq!(policy.allows_literal("[fd00:ec2::254]"), Some(false));
        assert_eq!(policy.allows_literal("127.0.0.1"), Some(true));
        assert_eq!(policy.allows_literal("api.example.com"), None);
        assert!(!policy.is_restricted());
    }

    #[test]
    fn an_allow_list_allows_only_its_ranges_and_names() {
        let policy = EgressPolicy::allow_list(
            "10.0.0.0/8, 192.0.2.7, [2001:db8::1], vllm.internal, *.example.com".split(','),
        )
        .unwrap();
        assert!(policy.is_restricted());
        assert!(policy.allows("x", ip("10.9.8.7")));
        assert!(policy.allows("x", ip("192.0.2.7")));
        assert!(policy.allows("x", ip("::ffff:192.0.2.7")), "mapped form");
        assert!(!policy.allows("x", ip("192.0.2.8")));
        assert!(policy.allows("x", ip("2001:db8::1")));
        assert!(!policy.allows("x", ip("127.0.0.1")));
        assert!(policy.allows("vllm.internal", ip("127.0.0.1")));
        assert!(policy.allows("VLLM.internal.", ip("127.0.0.1")));
        assert!(policy.allows("api.example.com", ip("203.0.113.1")));
        assert!(!policy.allows("example.com", ip("203.0.113.1")));
        assert!(!policy.allows("badexample.com", ip("203.0.113.1")));
        // A listed name rebound to the metadata address is still refused.
        assert!(!policy.allows("vllm.internal", ip("169.254.169.254")));
        assert!(!policy.allows("api.example.com", ip("fd00:ec2::254")));
    }

    #[test]
    fn broad_ranges_do_not_open_metadata_but_a_range_inside_it_does() {
        let everything = EgressPolicy::allow_list(["0.0.0.0/0", "::/0"]).unwrap();
        assert!(everything.allows("x", ip("8.8.8.8")));
        assert!(!everything.allows("x", ip("169.254.169.254")));
        assert!(!everything.allows("x", ip("fe80::1")));
        let link_local = EgressPolicy::allow_list(["169.254.20.0/24"]).unwrap();
        assert!(link_local.allows("x", ip("169.254.20.5")));
        assert!(!link_local.allows("x", ip("169.254.169.254")));
        let nothing = EgressPolicy::allow_list([]).unwrap();
        assert!(!nothing.allows("x", ip("127.0.0.1")));
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        for bad in [
            "10.0.0.0/33",
            "http://x",
            "a b",
            "*.",
            "-x.com",
            "x..com",
            "*",
        ] {
            let err = EgressPolicy::allow_list([bad]).unwrap_err();
            assert_eq!(err.entry, bad);
        }
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let same = [
            ("http://h:80/v1", "http://H/v2"),
            (
                "https://api.example.com/v1",
                "HTTPS://api.example.com:443/other",
            ),
            ("http://[::1]:8000/v1", "http://[::1]:8000"),
            ("http://h./v1", "http://h/v1"),
        ];
        for (a, b) in same {
            assert!(Origin::same(a, b), "{a} {b}");
        }
        let different = [
            ("http://h/v1", "https://h/v1"),
            ("http://h:8000/v1", "http://h:8001/v1"),
            ("http://a.example/v1", "http://b.example/v1"),
            ("http://127.0.0.1/v1", "http://localhost/v1"),
            ("http://h/v1", "not a url"),
            ("http://h:99999/v1", "http://h:99999/v1"),
        ];
        for (a, b) in different {
            assert!(!Origin::same(a, b), "{a} {b}");
        }
    }
}
