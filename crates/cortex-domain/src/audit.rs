//! Audit events and the keyed hash chain that makes the log tamper-evident (SPEC §8).
//!
//! Each event's hash is `HMAC-SHA256(chain key, canonical_encoding(prev_hash, event))`. The chain
//! key is derived from the master key, so someone who can write the database but does not hold
//! the master key cannot recompute the chain after changing, removing or reordering events. The
//! canonical encoding is a fixed-order, length-prefixed byte string, so no JSON key order or
//! whitespace question can make two honest writers disagree.
//!
//! Databases written before the chain was keyed hold plain SHA-256 hashes ([`ChainHasher::Legacy`]);
//! they are re-keyed once, after the legacy chain verified (ARCHITECTURE.md, "Decisions").
//!
//! Signed checkpoints chain to each other: each one's signed message names the previous
//! checkpoint's seq and signature ([`checkpoint_message`]), the first one names
//! [`GENESIS_CHECKPOINT`], so a checkpoint deleted from the middle of the list is detected.

use hmac::{Hmac, Mac};
use sha2::digest::Update;
use sha2::Sha256;
use zeroize::Zeroize;

/// The hash that stands before the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the first checkpoint's signed message names as its predecessor.
pub const GENESIS_CHECKPOINT: &str = "genesis";

/// The message an audit checkpoint's Ed25519 signature covers: the chain had `seq` events ending
/// in `hash`, and the checkpoint before this one covered `prev_seq` and was signed `prev_signature`
/// (0 and [`GENESIS_CHECKPOINT`] for the first).
pub fn checkpoint_message(seq: i64, hash: &str, prev_seq: i64, prev_signature: &str) -> Vec<u8> {
    format!("cortex-audit-checkpoint-v2:{seq}:{hash}:{prev_seq}:{prev_signature}").into_bytes()
}

/// The message of a checkpoint signed before checkpoints were chained; only read while a legacy
/// database is re-keyed.
pub fn legacy_checkpoint_message(seq: i64, hash: &str) -> Vec<u8> {
    format!("cortex-audit-checkpoint-v1:{seq}:{hash}").into_bytes()
}

/// The key of the hash chain, as a precomputed HMAC-SHA256 state: each event clones it (two
/// SHA-256 states, no allocation) instead of hashing the key again.
///
/// The state is as good as the key; it is built from a zeroized sub-key and never printed.
#[derive(Clone)]
pub struct AuditChainKey {
    mac: Hmac<Sha256>,
    id: String,
}

impl std::fmt::Debug for AuditChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditChainKey(id {})", self.id)
    }
}

impl AuditChainKey {
    /// A chain key from 32 secret bytes (callers derive them from the master key for this one
    /// purpose).
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        // HMAC pads a key shorter than the block with zeros; doing it here makes construction
        // infallible (`KeyInit::new` takes exactly one block).
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(key);
        let mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new(&block.into());
        block.zeroize();
        let mut for_id = mac.clone();
        Mac::update(&mut for_id, b"cortex-audit-chain-key-id-v1");
        let id = hex_lower(&for_id.finalize().into_bytes().into());
        Self {
            mac,
            id: String::from_utf8_lossy(&id).into_owned(),
        }
    }

    /// A public name for this key (an HMAC of a fixed label, so it reveals nothing about the
    /// key): the database records which key its chain is under.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// How event hashes are computed: under the chain key, or (databases from before the chain was
/// keyed, until they are re-keyed) plain SHA-256.
// The keyed variant is the normal one; boxing it would add an indirection to every event hashed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ChainHasher {
    Legacy,
    Keyed(AuditChainKey),
}

impl ChainHasher {
    /// The id recorded with a chain hashed this way (`None` for the legacy chain).
    pub fn key_id(&self) -> Option<&str> {
        match self {
            ChainHasher::Legacy => None,
            ChainHasher::Keyed(key) => Some(key.id()),
        }
    }

    /// The hash over the predecessor's hash and the event's own fields, as raw bytes. Each field
    /// is length-prefixed, so no two different events encode alike; nothing is allocated.
    #[allow(clippy::too_many_arguments)]
    pub fn digest(
        &self,
        prev_hash: &str,
        seq: i64,
        at_millis: i64,
        actor: &str,
        action: &str,
        target: &str,
        details: &str,
        client_ip: &str,
    ) -> [u8; 32] {
        let fields = [
            prev_hash.as_bytes(),
            &seq.to_be_bytes(),
            &at_millis.to_be_bytes(),
            actor.as_bytes(),
            action.as_bytes(),
            target.as_bytes(),
            details.as_bytes(),
            client_ip.as_bytes(),
        ];
        match self {
            ChainHasher::Legacy => {
                let mut hasher = Sha256::default();
                encode(&mut hasher, b"cortex-audit-v1", &fields);
                sha2::Digest::finalize(hasher).into()
            }
            ChainHasher::Keyed(key) => {
                let mut mac = key.mac.clone();
                encode(&mut mac, b"cortex-audit-v2", &fields);
                mac.finalize().into_bytes().into()
            }
        }
    }

    /// [`ChainHasher::digest`] as lower-case hex, as stored.
    #[allow(clippy::too_many_arguments)]
    pub fn hash_hex(
        &self,
        prev_hash: &str,
        seq: i64,
        at_millis: i64,
        actor: &str,
        action: &str,
        target: &str,
        details: &str,
        client_ip: &str,
    ) -> String {
        let digest = self.digest(
            prev_hash, seq, at_millis, actor, action, target, details, client_ip,
        );
        String::from_utf8_lossy(&hex_lower(&digest)).into_owned()
    }
}

fn encode(hasher: &mut impl Update, label: &[u8], fields: &[&[u8]; 8]) {
    let mut push = |field: &[u8]| {
        hasher.update(&(field.len() as u64).to_be_bytes());
        hasher.update(field);
    };
    push(label);
    for field in fields {
        push(field);
    }
}

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
    /// The organization the event belongs to (SPEC §18): an index for listing, outside the
    /// hashed fields, so chains written before organizations existed verify unchanged.
    pub org_id: String,
}

/// The fields a caller supplies; the store assigns `seq`, time and hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: String,
    pub client_ip: String,
    /// The organization the event belongs to; [`crate::tenancy::DEFAULT_ORG`] unless set.
    pub org_id: String,
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
            org_id: crate::tenancy::DEFAULT_ORG.to_owned(),
        }
    }

    /// The event belongs to `org_id` (the organization of the object it is about).
    pub fn with_org(mut self, org_id: impl Into<String>) -> Self {
        self.org_id = org_id.into();
        self
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
    pub fn chain_hash(
        &self,
        hasher: &ChainHasher,
        prev_hash: &str,
        seq: i64,
        at_millis: i64,
    ) -> String {
        hasher.hash_hex(
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

impl AuditRecordRef<'_> {
    /// This event's hash as `hasher` computes it, as raw bytes.
    pub fn digest(&self, hasher: &ChainHasher) -> [u8; 32] {
        hasher.digest(
            self.prev_hash,
            self.seq,
            self.at_millis,
            self.actor,
            self.action,
            self.target,
            self.details,
            self.client_ip,
        )
    }

    /// True when the stored hash is the hash of these fields.
    pub fn hash_matches(&self, hasher: &ChainHasher) -> bool {
        hex_lower(&self.digest(hasher)).as_slice() == self.hash.as_bytes()
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

    pub fn expected_hash(&self, hasher: &ChainHasher) -> String {
        String::from_utf8_lossy(&hex_lower(&self.as_ref().digest(hasher))).into_owned()
    }
}

/// Lower-case hex of a 32-byte digest, on the stack.
pub fn hex_lower(bytes: &[u8; 32]) -> [u8; 64] {
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
    hasher: ChainHasher,
    /// The previous event's hash (hex), kept inline: no allocation per event.
    expected_prev: [u8; 64],
    expected_seq: i64,
    checked: u64,
    first_bad: Option<i64>,
}

impl ChainVerifier {
    /// A verifier for a whole chain, from the first event.
    pub fn new(hasher: ChainHasher) -> Self {
        let mut expected_prev = [b'0'; 64];
        expected_prev.copy_from_slice(GENESIS_HASH.as_bytes());
        Self {
            hasher,
            expected_prev,
            expected_seq: 1,
            checked: 0,
            first_bad: None,
        }
    }

    /// A verifier for the part of a chain after event `after_seq`, whose hash was `after_hash`
    /// (a signed checkpoint's). A malformed `after_hash` makes the first event fail to link.
    pub fn resume(hasher: ChainHasher, after_seq: i64, after_hash: &str) -> Self {
        let mut verifier = Self::new(hasher);
        if after_hash.len() == 64 {
            verifier
                .expected_prev
                .copy_from_slice(after_hash.as_bytes());
        } else {
            verifier.expected_prev = [b'x'; 64];
        }
        verifier.expected_seq = after_seq + 1;
        verifier
    }

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
        if !links || record.hash.len() != 64 || !record.hash_matches(&self.hasher) {
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

    /// The seq of the last event that verified (the resume point before any was fed).
    pub fn last_seq(&self) -> i64 {
        self.expected_seq - 1
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

    fn key(byte: u8) -> ChainHasher {
        ChainHasher::Keyed(AuditChainKey::from_bytes(&[byte; 32]))
    }

    fn chain_with(hasher: &ChainHasher, n: i64) -> Vec<AuditRecord> {
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
                    org_id: crate::tenancy::DEFAULT_ORG.into(),
                };
                r.hash = r.expected_hash(hasher);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    fn chain(n: i64) -> Vec<AuditRecord> {
        chain_with(&key(1), n)
    }

    fn verify_with(hasher: &ChainHasher, records: &[AuditRecord], last: i64) -> ChainReport {
        let mut v = ChainVerifier::new(hasher.clone());
        for r in records {
            v.push(r);
        }
        v.finish(last)
    }

    fn verify(records: &[AuditRecord], last: i64) -> ChainReport {
        verify_with(&key(1), records, last)
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

    /// The attack the key exists for: events removed, the rest renumbered and re-hashed with
    /// plain SHA-256 (or under a guessed key). Without the chain key the result does not verify.
    #[test]
    fn a_chain_recomputed_without_the_key_is_refused() {
        let plain = chain_with(&ChainHasher::Legacy, 5);
        assert!(verify_with(&ChainHasher::Legacy, &plain, 5).ok());
        assert_eq!(verify(&plain, 5).first_bad_seq, Some(1));
        let other_key = chain_with(&key(2), 5);
        assert_eq!(verify(&other_key, 5).first_bad_seq, Some(1));
    }

    #[test]
    fn a_segment_resumes_after_a_checkpoint() {
        let records = chain(6);
        let mut v = ChainVerifier::resume(key(1), 3, &records[2].hash);
        for r in &records[3..] {
            assert!(v.push(r));
        }
        assert_eq!(v.last_seq(), 6);
        assert!(v.finish(6).ok());
        // A wrong starting hash fails at the first event of the segment.
        let mut v = ChainVerifier::resume(key(1), 3, &records[1].hash);
        assert!(!v.push(&records[3]));
        assert_eq!(v.finish(6).first_bad_seq, Some(4));
        let mut v = ChainVerifier::resume(key(1), 3, "short");
        assert!(!v.push(&records[3]));
    }

    #[test]
    fn legacy_hashes_are_the_ones_written_before_keying() {
        // A value computed by the pre-keying code, so re-keying reads old databases correctly.
        assert_eq!(
            ChainHasher::Legacy.hash_hex(GENESIS_HASH, 1, 1, "a", "b", "c", "{}", ""),
            LEGACY_VECTOR
        );
    }

    #[test]
    fn key_ids_name_keys_without_revealing_them() {
        let a = AuditChainKey::from_bytes(&[1; 32]);
        assert_eq!(a.id(), AuditChainKey::from_bytes(&[1; 32]).id());
        assert_ne!(a.id(), AuditChainKey::from_bytes(&[2; 32]).id());
        assert_eq!(a.id().len(), 64);
        assert!(!format!("{a:?}").contains("mac"));
    }

    #[test]
    fn field_boundaries_matter() {
        for hasher in [ChainHasher::Legacy, key(1)] {
            let a = hasher.hash_hex(GENESIS_HASH, 1, 1, "ab", "c", "", "{}", "");
            let b = hasher.hash_hex(GENESIS_HASH, 1, 1, "a", "bc", "", "{}", "");
            assert_ne!(a, b);
        }
    }

    const LEGACY_VECTOR: &str = "aff097925f07aa8f17fc8f1627f5fced92dcc34d171acf8ea2331a3127ab1d07";
}
