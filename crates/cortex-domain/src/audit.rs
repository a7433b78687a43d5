//! Audit events and the hash chain that makes the log tamper-evident (SPEC §8).
//!
//! Each event's hash is `SHA-256(prev_hash || canonical_encoding(event))`. The canonical encoding
//! is a fixed-order, length-prefixed byte string, so no JSON key order or whitespace question can
//! make two honest writers disagree.

use sha2::{Digest, Sha256};

/// The hash that stands before the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event as it is written and later verified.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub seq: i64,
    pub at_millis: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// JSON text; never holds a secret (callers pass ids and names only).
    pub details: String,
    pub client_ip: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The fields a caller supplies; the store assigns `seq`, time and hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: String,
    pub client_ip: String,
}

impl NewAuditEvent {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            details: "{}".to_owned(),
            client_ip: String::new(),
        }
    }

    pub fn with_details(mut self, details: &serde_json::Value) -> Self {
        self.details = details.to_string();
        self
    }

    pub fn with_ip(mut self, ip: impl Into<String>) -> Self {
        self.client_ip = ip.into();
        self
    }

    /// This event's hash as entry `seq` of the chain, after `prev_hash`, written at `at_millis`.
    pub fn chain_hash(&self, prev_hash: &str, seq: i64, at_millis: i64) -> String {
        chain_hash(
            prev_hash,
            seq,
            at_millis,
            &self.actor,
            &self.action,
            &self.target,
            &self.details,
            &self.client_ip,
        )
    }
}

/// The fields of one event, borrowed: what the hash covers, plus the stored hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRecordRef<'a> {
    pub seq: i64,
    pub at_millis: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub details: &'a str,
    pub client_ip: &'a str,
    pub prev_hash: &'a str,
    pub hash: &'a str,
}

fn push_field(hasher: &mut Sha256, field: &[u8]) {
    hasher.update((field.len() as u64).to_be_bytes());
    hasher.update(field);
}

/// The SHA-256 over the predecessor's hash and the event's own fields, as raw bytes. Each field
/// is length-prefixed, so no two different events encode alike; nothing is allocated.
#[allow(clippy::too_many_arguments)]
pub fn chain_digest(
    prev_hash: &str,
    seq: i64,
    at_millis: i64,
    actor: &str,
    action: &str,
    target: &str,
    details: &str,
    client_ip: &str,
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    push_field(&mut hasher, b"cortex-audit-v1");
    push_field(&mut hasher, prev_hash.as_bytes());
    push_field(&mut hasher, &seq.to_be_bytes());
    push_field(&mut hasher, &at_millis.to_be_bytes());
    push_field(&mut hasher, actor.as_bytes());
    push_field(&mut hasher, action.as_bytes());
    push_field(&mut hasher, target.as_bytes());
    push_field(&mut hasher, details.as_bytes());
    push_field(&mut hasher, client_ip.as_bytes());
    hasher.finalize().into()
}

/// Computes an event's hash (lower-case hex) from its predecessor's hash and its own fields.
#[allow(clippy::too_many_arguments)]
pub fn chain_hash(
    prev_hash: &str,
    seq: i64,
    at_millis: i64,
    actor: &str,
    action: &str,
    target: &str,
    details: &str,
    client_ip: &str,
) -> String {
    let digest = chain_digest(
        prev_hash, seq, at_millis, actor, action, target, details, client_ip,
    );
    String::from_utf8_lossy(&hex_lower(&digest)).into_owned()
}

impl AuditRecordRef<'_> {
    /// True when the stored hash is the hash of these fields.
    pub fn hash_matches(&self) -> bool {
        let digest = chain_digest(
            self.prev_hash,
            self.seq,
            self.at_millis,
            self.actor,
            self.action,
            self.target,
            self.details,
            self.client_ip,
        );
        hex_lower(&digest).as_slice() == self.hash.as_bytes()
    }
}

impl AuditRecord {
    pub fn as_ref(&self) -> AuditRecordRef<'_> {
        AuditRecordRef {
            seq: self.seq,
            at_millis: self.at_millis,
            actor: &self.actor,
            action: &self.action,
            target: &self.target,
            details: &self.details,
            client_ip: &self.client_ip,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        }
    }

    pub fn expected_hash(&self) -> String {
        chain_hash(
            &self.prev_hash,
            self.seq,
            self.at_millis,
            &self.actor,
            &self.action,
            &self.target,
            &self.details,
            &self.client_ip,
        )
    }
}

fn hex_lower(bytes: &[u8; 32]) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
    out
}

/// Walks records in `seq` order and reports the first one that breaks the chain.
///
/// State is carried between calls so a verifier can stream millions of rows in pages.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    /// The previous event's hash (hex), kept inline: no allocation per event.
    expected_prev: [u8; 64],
    expected_seq: i64,
    checked: u64,
    first_bad: Option<i64>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        let mut expected_prev = [b'0'; 64];
        expected_prev.copy_from_slice(GENESIS_HASH.as_bytes());
        Self {
            expected_prev,
            expected_seq: 1,
            checked: 0,
            first_bad: None,
        }
    }
}

impl ChainVerifier {
    /// Feeds the next record. Returns false once the chain is broken (further input is ignored).
    pub fn push(&mut self, record: &AuditRecord) -> bool {
        self.push_ref(&record.as_ref())
    }

    /// Feeds the next record, borrowed.
    pub fn push_ref(&mut self, record: &AuditRecordRef<'_>) -> bool {
        if self.first_bad.is_some() {
            return false;
        }
        self.checked += 1;
        if record.seq > self.expected_seq {
            // A gap: the first missing event is the one that was removed.
            self.first_bad = Some(self.expected_seq);
            return false;
        }
        // A removed or reordered event shows as a seq out of place or a prev_hash that does not
        // link; a changed event shows as a hash that does not match its own fields.
        let links = record.seq == self.expected_seq
            && record.prev_hash.as_bytes() == self.expected_prev.as_slice();
        if !links || record.hash.len() != 64 || !record.hash_matches() {
            self.first_bad = Some(record.seq);
            return false;
        }
        self.expected_prev.copy_from_slice(record.hash.as_bytes());
        self.expected_seq += 1;
        true
    }

    /// True once a bad event was found.
    pub fn is_broken(&self) -> bool {
        self.first_bad.is_some()
    }

    /// Events fed so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Declares where the chain must end (from the head row or a signed checkpoint); a log whose
    /// tail was cut is reported at the first missing seq.
    pub fn finish(mut self, expected_last_seq: i64) -> ChainReport {
        if self.first_bad.is_none() && self.expected_seq - 1 < expected_last_seq {
            self.first_bad = Some(self.expected_seq);
        }
        ChainReport {
            events_checked: self.checked,
            first_bad_seq: self.first_bad,
        }
    }

    pub fn last_hash(&self) -> &str {
        std::str::from_utf8(&self.expected_prev).unwrap_or(GENESIS_HASH)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainReport {
    pub events_checked: u64,
    pub first_bad_seq: Option<i64>,
}

impl ChainReport {
    pub fn ok(&self) -> bool {
        self.first_bad_seq.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord {
                    seq,
                    at_millis: 1000 * seq,
                    actor: "admin".into(),
                    action: "key.create".into(),
                    target: format!("key-{seq}"),
                    details: "{}".into(),
                    client_ip: "127.0.0.1".into(),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                r.hash = r.expected_hash();
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    fn verify(records: &[AuditRecord], last: i64) -> ChainReport {
        let mut v = ChainVerifier::default();
        for r in records {
            v.push(r);
        }
        v.finish(last)
    }

    #[test]
    fn intact_chain_verifies() {
        let report = verify(&chain(5), 5);
        assert!(report.ok());
        assert_eq!(report.events_checked, 5);
    }

    #[test]
    fn changed_removed_reordered_and_truncated_are_named() {
        let mut changed = chain(5);
        changed[2].details = r#"{"x":1}"#.into();
        assert_eq!(verify(&changed, 5).first_bad_seq, Some(3));

        let mut removed = chain(5);
        removed.remove(1);
        assert_eq!(verify(&removed, 5).first_bad_seq, Some(2));

        // Reordered: event #3 arrives where #2 belongs, so #2 is the first event out of place.
        let mut swapped = chain(5);
        swapped.swap(1, 2);
        assert_eq!(verify(&swapped, 5).first_bad_seq, Some(2));

        let truncated = chain(3);
        assert_eq!(verify(&truncated, 5).first_bad_seq, Some(4));
    }

    #[test]
    fn field_boundaries_matter() {
        let a = chain_hash(GENESIS_HASH, 1, 1, "ab", "c", "", "{}", "");
        let b = chain_hash(GENESIS_HASH, 1, 1, "a", "bc", "", "{}", "");
        assert_ne!(a, b);
    }
}
