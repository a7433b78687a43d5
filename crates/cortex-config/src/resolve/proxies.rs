//! Which peers are proxies whose `X-Forwarded-For` is believed.

use std::str::FromStr;

use ipnet::IpNet;

use crate::error::ConfigError;
use crate::file::FileConfig;
use crate::parse::{env_bool, split_list, var, Env};

pub(super) fn trusted_proxies(env: Env<'_>, file: &FileConfig) -> Result<Vec<IpNet>, ConfigError> {
    let proxies_raw = match var(env, "CORTEX_TRUSTED_PROXIES") {
        Some(text) => split_list(&text),
        None => file.trusted_proxies.clone().unwrap_or_default(),
    };
    let trusted_proxies = proxies_raw
        .iter()
        .map(|p| parse_proxy(p))
        .collect::<Result<Vec<_>, _>>()?;
    let trust_all_proxies = env_bool(
        env,
        "CORTEX_TRUST_ALL_PROXIES",
        file.trust_all_proxies,
        false,
    )?;
    // A /0 range makes every peer a proxy, so every client chooses its own address through
    // X-Forwarded-For: refused unless the operator says so in as many words.
    if let Some(everything) = trusted_proxies.iter().find(|net| net.prefix_len() == 0) {
        if !trust_all_proxies {
            return Err(ConfigError::new(
                "CORTEX_TRUSTED_PROXIES",
                format!("{everything} trusts every peer, so any client could pick its own address with X-Forwarded-For; list your proxies' addresses, or set CORTEX_TRUST_ALL_PROXIES=true if every peer really is a proxy"),
            ));
        }
    }
    Ok(trusted_proxies)
}

fn parse_proxy(text: &str) -> Result<IpNet, ConfigError> {
    let text = text.trim();
    let net = IpNet::from_str(text)
        .or_else(|_| std::net::IpAddr::from_str(text).map(IpNet::from))
        .map_err(|_| {
            ConfigError::new(
                "CORTEX_TRUSTED_PROXIES",
                format!("{text:?} is not an IP or CIDR"),
            )
        })?;
    Ok(canonical_net(net))
}

/// An IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) as the IPv4 range it means: peers are
/// matched in their IPv4 form, whichever socket family accepted them.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}
