//! Where a key may be used from (SPEC §18 `allowed_ips`): a list of CIDRs, checked against the
//! client's address (the TCP peer, or what a trusted proxy vouched for, SPEC §6).

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// The most entries one key may carry: enough for any real allow-list, few enough that the
/// check on every request stays a short scan.
pub const MAX_ALLOWED_IPS: usize = 100;

/// A key's parsed allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedIps(Vec<IpNet>);

impl AllowedIps {
    /// Parses `entries`: CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single addresses (taken as
    /// /32 or /128). IPv4-mapped IPv6 forms are taken as IPv4, as the client address is. The
    /// message names the field and the entry.
    pub fn parse(entries: &[String]) -> Result<AllowedIps, String> {
        if entries.is_empty() || entries.len() > MAX_ALLOWED_IPS {
            return Err(format!(
                "`allowed_ips` must hold 1 to {MAX_ALLOWED_IPS} CIDRs (leave it out to allow every address)"
            ));
        }
        entries
            .iter()
            .map(|entry| parse_entry(entry.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map(AllowedIps)
    }

    /// The canonical text of each entry (`10.0.0.0/8`; a host bit set is cleared), as stored.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// Whether `ip` (in its canonical form) is in one of the ranges.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

fn parse_entry(entry: &str) -> Result<IpNet, String> {
    let refused = || format!("`allowed_ips` entry {entry:?} is not an IP address or CIDR");
    if let Ok(ip) = IpAddr::from_str(entry) {
        return Ok(IpNet::from(ip.to_canonical()));
    }
    let net = IpNet::from_str(entry).map_err(|_| refused())?;
    // `::ffff:10.0.0.0/104` means 10.0.0.0/8: client addresses are compared in IPv4 form.
    let net = match (net.addr().to_canonical(), net) {
        (IpAddr::V4(v4), IpNet::V6(v6)) if v6.prefix_len() >= 96 => {
            IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).map_err(|_| refused())?
        }
        _ => net,
    };
    Ok(net.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Result<AllowedIps, String> {
        AllowedIps::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_and_single_addresses_admit_only_their_members() {
        let allowed = list(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]).unwrap();
        assert!(allowed.allows(ip("10.200.3.4")));
        assert!(allowed.allows(ip("192.0.2.7")));
        assert!(allowed.allows(ip("2001:db8::1")));
        // The dual-stack form of an allowed IPv4 address is the same address.
        assert!(allowed.allows(ip("::ffff:10.1.1.1")));
        for outside in ["11.0.0.1", "192.0.2.8", "2001:db9::1", "127.0.0.1", "::1"] {
            assert!(!allowed.allows(ip(outside)), "{outside}");
        }
    }

    #[test]
    fn entries_are_stored_canonical() {
        let allowed = list(&[
            " 10.1.2.3/8 ",
            "::ffff:192.0.2.0/120",
            "::ffff:198.51.100.1",
        ])
        .unwrap();
        assert_eq!(
            allowed.to_strings(),
            ["10.0.0.0/8", "192.0.2.0/24", "198.51.100.1/32"]
        );
    }

    #[test]
    fn garbage_and_empty_lists_are_refused_with_the_entry_named() {
        for bad in [
            "10.0.0.0/33",
            "example.com",
            "10.0.0",
            "",
            "10.0.0.0/8/8",
            "*",
        ] {
            let message = list(&[bad]).unwrap_err();
            assert!(message.contains("allowed_ips"), "{message}");
        }
        assert!(list(&[]).is_err());
        let many: Vec<String> = (0..=MAX_ALLOWED_IPS)
            .map(|i| format!("10.0.0.{}", i % 250))
            .collect();
        assert!(AllowedIps::parse(&many).is_err());
    }
}
