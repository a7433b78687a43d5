//! RFC 3339 conversion for the wire: storage keeps epoch milliseconds, clients see RFC 3339.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Formats epoch milliseconds as RFC 3339 UTC. Out-of-range values fall back to the epoch.
pub fn millis_to_rfc3339(millis: i64) -> String {
    let nanos = i128::from(millis) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// Parses an RFC 3339 timestamp to epoch milliseconds.
pub fn rfc3339_to_millis(text: &str) -> Option<i64> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let millis = 1_700_000_000_123;
        let text = millis_to_rfc3339(millis);
        assert_eq!(text, "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_to_millis(&text), Some(millis));
        assert_eq!(
            rfc3339_to_millis("2023-11-14T22:13:20+01:00"),
            Some(1_699_996_400_000)
        );
        assert_eq!(rfc3339_to_millis("yesterday"), None);
    }
}
