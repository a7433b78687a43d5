//! The compiled guard: candidates from every detector, resolved into findings, applied to text
//! and to JSON documents.
//!
//! One routine ([`Guard::step`]) serves whole texts and streams: it walks candidate matches
//! in order of their start, and over unfinished text it stops at the first one that could
//! still change, so a stream decides exactly what a whole text would.

use std::fmt;

use aho_corasick::{AhoCorasick, MatchKind};
use cortex_domain::policy::{DetectorSpec, GuardAction, GuardrailSpec};
use regex::{Regex, RegexBuilder};

use crate::detect::{
    self, card_at, email_at, iban_at, kind_bit, phone_at, secret_at, ssn_at, Cur, MAX_LOCAL,
};
use crate::json;

/// Bytes at the end of unfinished text that are never decided: a literal cut by the end of the
/// buffer, or an email whose `@` has not arrived yet, starts within them.
pub(crate) const HOLD: usize = MAX_LOCAL + detect::LONGEST_LITERAL + 8;
/// Over unfinished text, a custom pattern's match is decided only when it ends this far before
/// the end (a pattern could otherwise still grow).
pub(crate) const REGEX_HOLD: usize = 256;
/// The size limits a custom pattern is compiled within.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A spec's webhook rule: the gateway calls it (IO is not this crate's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRule {
    pub rule: usize,
    pub url: String,
    pub timeout_ms: u32,
    pub fail_open: bool,
    pub action: GuardAction,
}

/// Why a spec could not be compiled. Names the rule, never echoes its pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardBuildError {
    /// The custom pattern of rule `rule` does not compile within the size limit.
    Pattern { rule: usize },
}

impl fmt::Display for GuardBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardBuildError::Pattern { rule } => write!(
                f,
                "guardrails.rules[{rule}].detector.pattern is not a valid pattern or is too large"
            ),
        }
    }
}

impl std::error::Error for GuardBuildError {}

/// One match of one rule: where it is, never what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding<'g> {
    pub rule: usize,
    pub detector: &'static str,
    pub action: GuardAction,
    /// The `<type>` of `[REDACTED:<type>]`: a built-in label or the custom rule's name.
    pub label: &'g str,
    pub start: usize,
    pub end: usize,
}

/// How many findings of one (detector, action, label), for the audit events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub detector: &'static str,
    pub action: GuardAction,
    pub label: String,
    pub count: u32,
}

/// What the policy says about one text.
#[derive(Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The detector of the block rule hit (the lowest-numbered such rule).
    pub blocked: Option<&'static str>,
    /// The text with every redact finding replaced, when there was one (and no block).
    pub redacted: Option<String>,
    pub hits: Vec<Hit>,
}

/// What the policy says about one JSON document.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonVerdict {
    pub blocked: Option<&'static str>,
    /// The document with the affected strings rewritten, when there was a redaction.
    pub redacted: Option<Vec<u8>>,
    pub hits: Vec<Hit>,
}

// Debug shows sizes, not text: a Log finding's match stays in the redacted text.
impl fmt::Debug for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verdict")
            .field("blocked", &self.blocked)
            .field("redacted_bytes", &self.redacted.as_ref().map(String::len))
            .field("hits", &self.hits)
            .finish()
    }
}

impl fmt::Debug for JsonVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonVerdict")
            .field("blocked", &self.blocked)
            .field("redacted_bytes", &self.redacted.as_ref().map(Vec::len))
            .field("hits", &self.hits)
            .finish()
    }
}

struct RegexRule {
    rule: usize,
    name: String,
    action: GuardAction,
    regex: Regex,
}

/// A guardrail spec compiled for scanning. Immutable, so one `Arc<Guard>` serves every request.
pub struct Guard {
    /// (rule, action) of each secrets rule.
    secrets: Vec<(usize, GuardAction)>,
    /// (rule, action, kinds bit set) of each pii rule.
    pii: Vec<(usize, GuardAction, u8)>,
    /// Every kind some pii rule wants.
    pii_all: u8,
    regexes: Vec<RegexRule>,
    webhooks: Vec<WebhookRule>,
    literals: Option<AhoCorasick>,
    scan_responses: bool,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("secrets_rules", &self.secrets.len())
            .field("pii_rules", &self.pii.len())
            .field("regex_rules", &self.regexes.len())
            .field("webhooks", &self.webhooks.len())
            .finish()
    }
}

/// The state of resolution carried from one step to the next: the last finding taken.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Resolve {
    pub last_end: usize,
    pub last_rank: u8,
}

#[derive(Clone, Copy)]
pub(crate) struct Cand<'g> {
    start: usize,
    end: usize,
    undecided: bool,
    rank: u8,
    rule: usize,
    detector: &'static str,
    action: GuardAction,
    label: &'g str,
}

/// Block beats redact beats log when findings overlap: a safety rule is never dropped for a
/// weaker one.
fn rank(action: GuardAction) -> u8 {
    match action {
        GuardAction::Block => 3,
        GuardAction::Redact => 2,
        GuardAction::Log => 1,
    }
}

pub(crate) fn floor_char(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Adds one finding to the hit counts.
pub(crate) fn count_hit(hits: &mut Vec<Hit>, f: &Finding<'_>) {
    match hits
        .iter_mut()
        .find(|h| h.detector == f.detector && h.action == f.action && h.label == f.label)
    {
        Some(h) => h.count = h.count.saturating_add(1),
        None => hits.push(Hit {
            detector: f.detector,
            action: f.action,
            label: f.label.to_string(),
            count: 1,
        }),
    }
}

/// Writes `text` with the redact findings replaced (findings sorted, not overlapping).
pub(crate) fn write_redacted(text: &str, findings: &[Finding<'_>], out: &mut String) {
    let mut at = 0;
    for f in findings.iter().filter(|f| f.action == GuardAction::Redact) {
        if f.start < at {
            continue;
        }
        out.push_str(&text[at..f.start]);
        push_marker(out, f.label);
        at = f.end;
    }
    out.push_str(&text[at..]);
}

pub(crate) fn push_marker(out: &mut String, label: &str) {
    out.push_str("[REDACTED:");
    out.push_str(label);
    out.push(']');
}

impl Guard {
    /// Compiles `spec` (already validated by `PolicySpec::validate`). Fails only on a custom
    /// pattern that does not compile within the size limit.
    pub fn build(spec: &GuardrailSpec) -> Result<Guard, GuardBuildError> {
        let mut guard = Guard {
            secrets: Vec::new(),
            pii: Vec::new(),
            pii_all: 0,
            regexes: Vec::new(),
            webhooks: Vec::new(),
            literals: None,
            scan_responses: spec.scan_responses,
        };
        for (rule, r) in spec.rules.iter().enumerate() {
            match &r.detector {
                DetectorSpec::Secrets => guard.secrets.push((rule, r.action)),
                DetectorSpec::Pii { kinds } => {
                    let mask = if kinds.is_empty() {
                        0x1f
                    } else {
                        kinds.iter().fold(0, |m, &k| m | kind_bit(k))
                    };
                    guard.pii_all |= mask;
                    guard.pii.push((rule, r.action, mask));
                }
                DetectorSpec::Regex { name, pattern } => {
                    let regex = RegexBuilder::new(pattern)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .dfa_size_limit(REGEX_SIZE_LIMIT)
                        .build()
                        .map_err(|_| GuardBuildError::Pattern { rule })?;
                    guard.regexes.push(RegexRule {
                        rule,
                        name: name.clone(),
                        action: r.action,
                        regex,
                    });
                }
                DetectorSpec::Webhook {
                    url,
                    timeout_ms,
                    fail_open,
                } => guard.webhooks.push(WebhookRule {
                    rule,
                    url: url.clone(),
                    timeout_ms: *timeout_ms,
                    fail_open: *fail_open,
                    action: r.action,
                }),
            }
        }
        if !guard.secrets.is_empty() {
            let ac = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                .build(detect::SECRET_LITERALS)
                .map_err(|_| GuardBuildError::Pattern { rule: 0 })?;
            guard.literals = Some(ac);
        }
        Ok(guard)
    }

    /// Whether answers (whole and streamed) are scanned too.
    pub fn scan_responses(&self) -> bool {
        self.scan_responses
    }

    /// The webhook rules, for the gateway to call.
    pub fn webhooks(&self) -> &[WebhookRule] {
        &self.webhooks
    }

    /// Whether the guard scans text at all (a spec of webhooks only does not).
    pub fn scans_text(&self) -> bool {
        !self.secrets.is_empty() || !self.pii.is_empty() || !self.regexes.is_empty()
    }

    /// The findings in `text`, sorted by start, overlaps resolved: earliest start first, then
    /// the stronger action (block, redact, log), then the longest; a later finding overlapping
    /// a taken one replaces it only when its action is stronger.
    pub fn scan(&self, text: &str) -> Vec<Finding<'_>> {
        let mut found = Vec::new();
        let mut cands = Vec::new();
        self.step(
            text,
            0,
            true,
            &mut Resolve::default(),
            &mut cands,
            &mut found,
        );
        found
    }

    /// What the policy says about `text`.
    pub fn apply(&self, text: &str) -> Verdict {
        let mut acc = Acc::default();
        let mut cands = Vec::new();
        let mut found = Vec::new();
        let redacted = self.apply_into(text, &mut acc, &mut cands, &mut found);
        Verdict {
            blocked: acc.blocked_detector(),
            redacted: if acc.blocked.is_some() {
                None
            } else {
                redacted
            },
            hits: acc.hits,
        }
    }

    /// Scans `text`, counts into `acc`, and returns the redacted text when something was
    /// redacted.
    fn apply_into<'g>(
        &'g self,
        text: &str,
        acc: &mut Acc,
        cands: &mut Vec<Cand<'g>>,
        found: &mut Vec<Finding<'g>>,
    ) -> Option<String> {
        found.clear();
        self.step(text, 0, true, &mut Resolve::default(), cands, found);
        if found.is_empty() {
            return None;
        }
        for f in found.iter() {
            acc.add(f);
        }
        if !found.iter().any(|f| f.action == GuardAction::Redact) {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        write_redacted(text, found, &mut out);
        Some(out)
    }

    /// The same over a JSON document: every string (keys and values) is scanned as its decoded
    /// text, and redaction rewrites only the affected strings (re-encoded by serde_json), so
    /// the result is valid JSON of the same shape. Bytes that are not one JSON value are
    /// scanned as text (invalid UTF-8 read lossily); their redacted form is text too, since
    /// there was no JSON to keep valid.
    pub fn apply_json(&self, body: &[u8]) -> JsonVerdict {
        let mut acc = Acc::default();
        let Ok(text) = std::str::from_utf8(body) else {
            return self.apply_json_as_text(body);
        };
        let mut cands = Vec::new();
        let mut found = Vec::new();
        // (open quote, after close quote, the re-encoded string)
        let mut rewrites: Vec<(usize, usize, String)> = Vec::new();
        let must_decode = !self.regexes.is_empty();
        let valid = json::walk(body, &mut |s, e, escaped| {
            let raw = &text[s + 1..e - 1];
            let redacted = if !escaped {
                self.apply_into(raw, &mut acc, &mut cands, &mut found)
            } else if must_decode || self.may_match(raw.as_bytes()) || raw.contains("\\u") {
                let Ok(decoded) = serde_json::from_str::<String>(&text[s..e]) else {
                    return false;
                };
                self.apply_into(&decoded, &mut acc, &mut cands, &mut found)
            } else {
                // No trigger byte and no \u escape: the decoded text has none either (the
                // other escapes decode to quotes, slashes and control characters), and every
                // built-in detector needs one.
                None
            };
            if let Some(r) = redacted {
                match serde_json::to_string(&r) {
                    Ok(encoded) => rewrites.push((s, e, encoded)),
                    Err(_) => return false,
                }
            }
            true
        });
        if !valid {
            return self.apply_json_as_text(body);
        }
        let blocked = acc.blocked_detector();
        let redacted = (blocked.is_none() && !rewrites.is_empty()).then(|| {
            let mut out = Vec::with_capacity(body.len() + 64);
            let mut at = 0;
            for (s, e, encoded) in &rewrites {
                out.extend_from_slice(&body[at..*s]);
                out.extend_from_slice(encoded.as_bytes());
                at = *e;
            }
            out.extend_from_slice(&body[at..]);
            out
        });
        JsonVerdict {
            blocked,
            redacted,
            hits: acc.hits,
        }
    }

    fn apply_json_as_text(&self, body: &[u8]) -> JsonVerdict {
        let text = String::from_utf8_lossy(body);
        let v = self.apply(&text);
        JsonVerdict {
            blocked: v.blocked,
            redacted: v.redacted.map(String::into_bytes),
            hits: v.hits,
        }
    }

    /// Whether `b` holds a byte some built-in detector starts from (a secret's literal prefix,
    /// an `@`, a digit). False means no built-in detector can match.
    fn may_match(&self, b: &[u8]) -> bool {
        if let Some(ac) = &self.literals {
            if ac.find(b).is_some() {
                return true;
            }
        }
        if self.pii_all & kind_bit(cortex_domain::policy::PiiKind::Email) != 0
            && memchr::memchr(b'@', b).is_some()
        {
            return true;
        }
        self.pii_all & !kind_bit(cortex_domain::policy::PiiKind::Email) != 0
            && b.chunks(32)
                .any(|c| c.iter().fold(false, |a, x| a | x.is_ascii_digit()))
    }

    /// Gathers the candidates starting at or after `from`, resolves them in order and appends
    /// the findings taken to `found`. Over unfinished text (`eof` false) it stops before the
    /// first candidate that could still change and before the last [`HOLD`] bytes; it returns
    /// where it stopped (everything before is decided).
    pub(crate) fn step<'g>(
        &'g self,
        text: &str,
        from: usize,
        eof: bool,
        res: &mut Resolve,
        cands: &mut Vec<Cand<'g>>,
        found: &mut Vec<Finding<'g>>,
    ) -> usize {
        cands.clear();
        self.gather(text, from, eof, cands);
        let mut limit = text.len();
        if !eof {
            let mut hold = HOLD;
            if !self.regexes.is_empty() {
                hold = hold.max(REGEX_HOLD);
            }
            limit = floor_char(text, text.len().saturating_sub(hold)).max(from);
        }
        if cands.is_empty() {
            return limit;
        }
        cands.sort_unstable_by(|a, b| {
            a.start
                .cmp(&b.start)
                .then(b.rank.cmp(&a.rank))
                .then(b.end.cmp(&a.end))
                .then(a.rule.cmp(&b.rule))
        });
        if let Some(first) = cands.iter().find(|c| c.undecided) {
            // An undecided email's start is an estimate that may fall inside a character.
            limit = floor_char(text, limit.min(first.start)).max(from);
        }
        let first_new = found.len();
        for c in cands.iter().filter(|c| c.start < limit) {
            let f = Finding {
                rule: c.rule,
                detector: c.detector,
                action: c.action,
                label: c.label,
                start: c.start,
                end: c.end,
            };
            if c.start < res.last_end {
                if c.rank <= res.last_rank {
                    continue;
                }
                // Stronger than the finding it overlaps: takes its place (when that one was
                // taken in an earlier step over a stream, it was a log finding whose text
                // went out unchanged, or this is a block and the stream ends).
                if found.len() > first_new {
                    found.pop();
                }
            }
            found.push(f);
            res.last_end = c.end;
            res.last_rank = c.rank;
        }
        limit
    }

    fn gather<'g>(&'g self, text: &str, from: usize, eof: bool, cands: &mut Vec<Cand<'g>>) {
        let b = text.as_bytes();
        let cur = Cur::new(b, eof);
        if let Some(ac) = &self.literals {
            for m in ac.find_iter(&b[from..]) {
                let s = from + m.start();
                cur.reset();
                let hit = secret_at(&cur, s, m.pattern().as_usize());
                let undecided = cur.wants_more();
                if hit.is_none() && !undecided {
                    continue;
                }
                let (end, label) = hit.unwrap_or((s, ""));
                for &(rule, action) in &self.secrets {
                    cands.push(Cand {
                        start: s,
                        end,
                        undecided,
                        rank: rank(action),
                        rule,
                        detector: "secrets",
                        action,
                        label,
                    });
                }
            }
        }
        if self.pii_all != 0 {
            let mut push = |start: usize,
                            end: Option<usize>,
                            undecided: bool,
                            bit: u8,
                            label: &'static str| {
                if start < from || (end.is_none() && !undecided) {
                    return;
                }
                for &(rule, action, mask) in &self.pii {
                    if mask & bit != 0 {
                        cands.push(Cand {
                            start,
                            end: end.unwrap_or(start),
                            undecided,
                            rank: rank(action),
                            rule,
                            detector: "pii",
                            action,
                            label,
                        });
                    }
                }
            };
            use cortex_domain::policy::PiiKind::*;
            if self.pii_all & kind_bit(Email) != 0 {
                for a in memchr::memchr_iter(b'@', &b[from..]) {
                    let a = from + a;
                    cur.reset();
                    let hit = email_at(&cur, a);
                    // An undecided address starts somewhere in the local part before the `@`:
                    // hold from the farthest it could (never before `from`, see stream.rs).
                    let start = hit.map_or(a.saturating_sub(MAX_LOCAL).max(from), |(s, _)| s);
                    push(
                        start,
                        hit.map(|(_, e)| e),
                        cur.wants_more(),
                        kind_bit(Email),
                        "email",
                    );
                }
            }
            let numbers = self.pii_all & !kind_bit(Email);
            if numbers != 0 {
                let mut i = from;
                while i < b.len() {
                    let end = (i + 32).min(b.len());
                    if !b[i..end].iter().fold(false, |a, x| a | x.is_ascii_digit()) {
                        i = end;
                        continue;
                    }
                    for p in i..end {
                        if !b[p].is_ascii_digit() || (p > 0 && b[p - 1].is_ascii_digit()) {
                            continue;
                        }
                        let mut run = |bit: u8, label: &'static str, start: usize, f: &dyn Fn(&Cur<'_>, usize) -> Option<usize>| {
                            if numbers & bit != 0 {
                                cur.reset();
                                let hit = f(&cur, start);
                                push(start, hit, cur.wants_more(), bit, label);
                            }
                        };
                        run(kind_bit(PaymentCard), "payment_card", p, &card_at);
                        run(kind_bit(UsSsn), "us_ssn", p, &ssn_at);
                        let phone_start = match (
                            p.checked_sub(2).map(|q| &b[q..p]),
                            p.checked_sub(1).map(|q| b[q]),
                        ) {
                            (Some(b"+("), _) => p - 2,
                            (_, Some(b'+' | b'(')) => p - 1,
                            _ => p,
                        };
                        run(kind_bit(Phone), "phone", phone_start, &phone_at);
                        if p >= 2 && b[p - 2].is_ascii_uppercase() && b[p - 1].is_ascii_uppercase()
                        {
                            run(kind_bit(Iban), "iban", p - 2, &iban_at);
                        }
                    }
                    i = end;
                }
            }
        }
        for r in &self.regexes {
            let mut at = from;
            while at <= text.len() {
                let Some(m) = r.regex.find_at(text, at) else {
                    break;
                };
                if m.start() == m.end() {
                    // Empty matches redact nothing; step past them by one character.
                    at = text[m.end()..]
                        .chars()
                        .next()
                        .map_or(text.len() + 1, |ch| m.end() + ch.len_utf8());
                    continue;
                }
                let undecided = !eof && m.end() + REGEX_HOLD > text.len();
                cands.push(Cand {
                    start: m.start(),
                    end: m.end(),
                    undecided,
                    rank: rank(r.action),
                    rule: r.rule,
                    detector: "regex",
                    action: r.action,
                    label: &r.name,
                });
                at = m.end();
            }
        }
    }
}

/// Hit counts and the block rules hit, across the strings of one document.
#[derive(Default)]
pub(crate) struct Acc {
    pub hits: Vec<Hit>,
    /// (rule, detector) of the lowest-numbered block rule hit.
    pub blocked: Option<(usize, &'static str)>,
}

impl Acc {
    pub fn add(&mut self, f: &Finding<'_>) {
        count_hit(&mut self.hits, f);
        if f.action == GuardAction::Block && self.blocked.is_none_or(|(rule, _)| f.rule < rule) {
            self.blocked = Some((f.rule, f.detector));
        }
    }

    pub fn blocked_detector(&self) -> Option<&'static str> {
        self.blocked.map(|(_, d)| d)
    }
}

#[cfg(test)]
mod tests {
    use cortex_domain::policy::{DetectorSpec, GuardAction, GuardrailRule, GuardrailSpec};

    use super::Guard;

    fn guard(rules: &[(&str, &str, GuardAction)]) -> Guard {
        let rules = rules
            .iter()
            .map(|(name, pattern, action)| GuardrailRule {
                detector: DetectorSpec::Regex {
                    name: name.to_string(),
                    pattern: pattern.to_string(),
                },
                action: *action,
            })
            .collect();
        Guard::build(&GuardrailSpec {
            rules,
            scan_responses: true,
        })
        .unwrap()
    }

    fn spans(g: &Guard, text: &str) -> Vec<(String, usize, usize)> {
        g.scan(text)
            .iter()
            .map(|f| (f.label.to_string(), f.start, f.end))
            .collect()
    }

    #[test]
    fn overlaps_take_the_earliest_then_the_stronger_then_the_longest() {
        use GuardAction::*;
        let s = |l: &str, a, b| (l.to_string(), a, b);
        // Earliest start wins over a longer later one.
        let g = guard(&[("a", "bcd", Redact), ("b", "cdefgh", Redact)]);
        assert_eq!(spans(&g, "abcdefgh"), [s("a", 1, 4)]);
        // Same start: the longest.
        let g = guard(&[("a", "bc", Redact), ("b", "bcdef", Redact)]);
        assert_eq!(spans(&g, "abcdefgh"), [s("b", 1, 6)]);
        // Same start: a stronger action before a longer weaker one.
        let g = guard(&[("a", "bcdef", Log), ("b", "bc", Redact)]);
        assert_eq!(spans(&g, "abcdefgh"), [s("b", 1, 3)]);
        // A later stronger finding replaces the weaker one it overlaps.
        let g = guard(&[("a", "abcd", Log), ("b", "cdef", Block)]);
        assert_eq!(spans(&g, "abcdefgh"), [s("b", 2, 6)]);
        assert_eq!(g.apply("abcdefgh").blocked, Some("regex"));
        // A later weaker or equal one is dropped; findings after it are still taken.
        let g = guard(&[("a", "abcd", Redact), ("b", "cdef", Log), ("c", "gh", Log)]);
        assert_eq!(spans(&g, "abcdefgh"), [s("a", 0, 4), s("c", 6, 8)]);
        assert_eq!(g.apply("abcdefgh").redacted.unwrap(), "[REDACTED:a]efgh");
    }
}
