//! The built-in detectors, each a hand-written matcher anchored at a candidate position that a
//! cheap prefilter found (a literal prefix, an `@`, the start of a digit run).
//!
//! Every matcher reads the text through [`Cur`], which remembers whether it looked past the end
//! of text that is not complete yet (a stream's buffer): such an answer may change when more
//! text arrives, so the caller treats it as "undecided" and holds the text back. Every matcher
//! reads a bounded window, so a decision never waits for more than that window.

use std::cell::Cell;

use cortex_domain::policy::PiiKind;

use crate::checks::{iban_mod97, luhn};

/// The longest provider token read after its prefix; a longer run is cut there (the rest of a
/// run past a redaction is harmless).
pub const MAX_TOKEN: usize = 512;
/// Each of a JWT's three parts is read up to this many bytes; a longer part is not a JWT.
pub const MAX_JWT_PART: usize = 4096;
/// A private key block is looked for this far from its BEGIN line (a 4096-bit RSA key in PEM
/// is about 3.3 KiB).
pub const MAX_PEM: usize = 16 * 1024;

/// The text a matcher reads, and whether it read past the end of unfinished text.
pub struct Cur<'a> {
    pub b: &'a [u8],
    pub eof: bool,
    more: Cell<bool>,
    /// The first `-----END ` at or after `.0` is at `.1` (None: there is none). Candidates
    /// come in order, so private key blocks share one forward search instead of one per
    /// BEGIN line (`-----BEGIN …-----` repeated would otherwise cost 16 KiB each).
    pem_end: Cell<(usize, Option<usize>)>,
}

impl<'a> Cur<'a> {
    pub fn new(b: &'a [u8], eof: bool) -> Cur<'a> {
        Cur {
            b,
            eof,
            more: Cell::new(false),
            pem_end: Cell::new((usize::MAX, None)),
        }
    }

    fn at(&self, i: usize) -> Option<u8> {
        match self.b.get(i) {
            Some(&b) => Some(b),
            None => {
                if !self.eof {
                    self.more.set(true);
                }
                None
            }
        }
    }

    /// The first `-----END ` at or after `from`.
    fn next_pem_end(&self, from: usize) -> Option<usize> {
        let (memo_from, memo) = self.pem_end.get();
        if memo_from <= from && memo.is_none_or(|at| at >= from) {
            return memo;
        }
        let found = self
            .b
            .get(from..)
            .and_then(|rest| memchr::memmem::find(rest, b"-----END "))
            .map(|at| from + at);
        self.pem_end.set((from, found));
        found
    }

    fn before(&self, i: usize) -> Option<u8> {
        i.checked_sub(1).and_then(|j| self.b.get(j).copied())
    }

    /// Starts a matcher: forgets earlier reads past the end.
    pub fn reset(&self) {
        self.more.set(false);
    }

    /// Whether the last matcher read past the end of unfinished text.
    pub fn wants_more(&self) -> bool {
        self.more.get()
    }

    fn has(&self, i: usize, lit: &[u8]) -> bool {
        lit.iter()
            .enumerate()
            .all(|(k, &l)| self.at(i + k) == Some(l))
    }

    /// Length of the run of bytes satisfying `ok` from `i`, at most `cap`, and how many of them
    /// are digits.
    fn run(&self, i: usize, cap: usize, ok: impl Fn(u8) -> bool) -> (usize, usize) {
        let mut n = 0;
        let mut digits = 0;
        while n < cap {
            match self.at(i + n) {
                Some(b) if ok(b) => {
                    digits += usize::from(b.is_ascii_digit());
                    n += 1;
                }
                _ => break,
            }
        }
        (n, digits)
    }
}

fn word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The literal prefixes the secrets prefilter looks for (one Aho-Corasick automaton).
pub const SECRET_LITERALS: [&str; 13] = [
    "sk-",
    "AKIA",
    "ASIA",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xox",
    "-----BEGIN ",
    "eyJ",
    "ctx_",
];
/// The longest literal: a literal cut by the end of a stream's buffer starts this close to it.
pub const LONGEST_LITERAL: usize = 11;

/// A provider secret starting at `s`, where literal number `lit` was found: its end and label.
pub fn secret_at(c: &Cur<'_>, s: usize, lit: usize) -> Option<(usize, &'static str)> {
    // A key glued to the end of an identifier (`mask_sk-…`, `task-sk-…`) is part of that
    // identifier, not a pasted key. This also keeps the scan linear: in a run of token
    // characters only its first literal is examined, so `sk-sk-sk-…` is read once, not once
    // per literal.
    if c.before(s).is_some_and(token) {
        return None;
    }
    match lit {
        0 => {
            if c.has(s + 3, b"ant-") {
                // Anthropic keys are `sk-ant-api03-…` (and admin/oauth variants): checked
                // before OpenAI's `sk-` so they get their own label.
                let (n, digits) = c.run(s + 7, MAX_TOKEN, token);
                (n >= 32 && digits > 0).then_some((s + 7 + n, "anthropic_key"))
            } else {
                // `sk-` + 48 (legacy), `sk-proj-…`, `sk-svcacct-…`, `sk-admin-…`: a long
                // random tail with digits, which prose like "sk-learn" does not have.
                let (n, digits) = c.run(s + 3, MAX_TOKEN, token);
                (n >= 32 && digits > 0 && digits < n).then_some((s + 3 + n, "openai_key"))
            }
        }
        1 | 2 => {
            let (n, _) = c.run(s + 4, 16, |b| b.is_ascii_uppercase() || b.is_ascii_digit());
            (n == 16 && !c.at(s + 20).is_some_and(|b| b.is_ascii_alphanumeric()))
                .then_some((s + 20, "aws_access_key"))
        }
        3..=7 => {
            let (n, _) = c.run(s + 4, 255, |b| b.is_ascii_alphanumeric());
            (n >= 36).then_some((s + 4 + n, "github_token"))
        }
        8 => {
            let (n, _) = c.run(s + 11, 255, word);
            (n >= 40).then_some((s + 11 + n, "github_token"))
        }
        9 => {
            let kind = c.at(s + 3)?;
            if !matches!(kind, b'b' | b'p' | b'a' | b'r' | b's') || c.at(s + 4) != Some(b'-') {
                return None;
            }
            let (n, digits) = c.run(s + 5, 255, |b| b.is_ascii_alphanumeric() || b == b'-');
            (n >= 10 && digits > 0).then_some((s + 5 + n, "slack_token"))
        }
        10 => pem_at(c, s),
        11 => {
            let (h, _) = c.run(s, MAX_JWT_PART + 1, token);
            if !(20..=MAX_JWT_PART).contains(&h) || c.at(s + h) != Some(b'.') {
                return None;
            }
            let p0 = s + h + 1;
            let (p, _) = c.run(p0, MAX_JWT_PART + 1, token);
            if !(20..=MAX_JWT_PART).contains(&p) || !c.has(p0, b"ey") || c.at(p0 + p) != Some(b'.')
            {
                return None;
            }
            let g0 = p0 + p + 1;
            let (g, _) = c.run(g0, MAX_JWT_PART + 1, token);
            (g <= MAX_JWT_PART).then_some((g0 + g, "jwt"))
        }
        12 => {
            // `ctx_<12 base62>_<43 base62>` (cortex-domain's api_key.rs).
            let alnum = |b: u8| b.is_ascii_alphanumeric();
            let (id, _) = c.run(s + 4, 12, alnum);
            if id != 12 || c.at(s + 16) != Some(b'_') {
                return None;
            }
            let (secret, _) = c.run(s + 17, 43, alnum);
            let end = s + 17 + 43;
            (secret == 43 && !c.at(end).is_some_and(word)).then_some((end, "cortex_key"))
        }
        _ => None,
    }
}

/// `-----BEGIN <x> PRIVATE KEY-----` through the matching END line. Without an END line within
/// [`MAX_PEM`], the header and the base64 body after it (no spaces, newlines allowed) are the
/// match: a truncated key is still a leak.
fn pem_at(c: &Cur<'_>, s: usize) -> Option<(usize, &'static str)> {
    let l0 = s + 11;
    let (n, _) = c.run(l0, 48, |b| {
        b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' '
    });
    let label = c.b.get(l0..l0 + n)?;
    if !(label.ends_with(b"PRIVATE KEY") || label.ends_with(b"PRIVATE KEY BLOCK"))
        || !c.has(l0 + n, b"-----")
    {
        return None;
    }
    let body = l0 + n + 5;
    let cap = s + MAX_PEM;
    let mut from = body;
    while let Some(at) = c.next_pem_end(from) {
        if at + 9 + n + 5 > cap {
            break;
        }
        let tail = c.b.get(at + 9..at + 9 + n + 5);
        if tail.is_some_and(|t| t.starts_with(label) && t.ends_with(b"-----")) {
            return Some((at + 9 + n + 5, "private_key"));
        }
        from = at + 1;
    }
    if !c.eof && cap > c.b.len() {
        c.more.set(true);
        return None;
    }
    // No END line: the base64 lines after the header, up to a blank line or a line that is
    // not base64.
    let b64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    let mut end = body;
    let mut i = body;
    while i < cap {
        if c.at(i) == Some(b'\r') {
            i += 1;
        }
        if c.at(i) != Some(b'\n') {
            break;
        }
        let (n, _) = c.run(i + 1, cap.saturating_sub(i + 1), b64);
        let after = c.at(i + 1 + n);
        if n == 0 || !matches!(after, None | Some(b'\r' | b'\n')) {
            break;
        }
        i += 1 + n;
        end = i;
    }
    Some((end, "private_key"))
}

fn local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// Most characters before an `@` that are read as its local part (RFC 5321's limit).
pub const MAX_LOCAL: usize = 64;

/// An email address around the `@` at `a`: its start and end. The local part is the common
/// subset (letters, digits, `._%+-`), so `https://x.com/u/alice@example.com?q` and
/// `mailto:bob@example.org` yield `alice@example.com` and `bob@example.org`.
pub fn email_at(c: &Cur<'_>, a: usize) -> Option<(usize, usize)> {
    let mut start = a;
    while start > 0 && local_char(c.b[start - 1]) {
        start -= 1;
        if a - start > MAX_LOCAL {
            return None;
        }
    }
    while start < a && c.b[start] == b'.' {
        start += 1;
    }
    if start == a || c.b[a - 1] == b'.' {
        return None;
    }
    // Domain: labels of letters, digits and inner hyphens, joined by dots; the last is a
    // top-level domain of two or more letters.
    let mut i = a + 1;
    let mut labels = 0;
    let mut last_alpha = false;
    let mut last_len = 0;
    loop {
        let (n, digits) = c.run(i, 64, |b| b.is_ascii_alphanumeric() || b == b'-');
        if n == 0 || n > 63 || c.b[i] == b'-' || c.b[i + n - 1] == b'-' {
            if labels == 0 {
                return None;
            }
            break;
        }
        labels += 1;
        last_alpha = digits == 0 && !c.b[i..i + n].contains(&b'-');
        last_len = n;
        i += n;
        if i - a > 254 {
            return None;
        }
        if c.at(i) == Some(b'.') && c.at(i + 1).is_some_and(|b| b.is_ascii_alphanumeric()) {
            i += 1;
        } else {
            break;
        }
    }
    (labels >= 2 && last_alpha && last_len >= 2).then_some((start, i))
}

/// Where a number may start: not inside a word, another number or a dotted/dashed sequence.
fn number_boundary(c: &Cur<'_>, s: usize) -> bool {
    !c.before(s)
        .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'))
}

/// A payment card starting at the digit `p`: 13 to 19 digits, in groups separated by single
/// spaces or dashes, passing Luhn (all zeros excluded). The longest grouping that passes wins.
pub fn card_at(c: &Cur<'_>, p: usize) -> Option<usize> {
    if !number_boundary(c, p) {
        return None;
    }
    let mut digits = [0u8; 19];
    let mut count = 0;
    let mut ends: [(usize, usize); 19] = [(0, 0); 19];
    let mut groups = 0;
    let mut i = p;
    loop {
        let (n, _) = c.run(i, 20, |b| b.is_ascii_digit());
        // Cards are printed in groups of three or more (4-4-4-4, 4-6-5); shorter groups are
        // something else, and stopping there keeps "1 1 1 1 …" cheap.
        if n < 3 || count + n > 19 {
            break;
        }
        digits[count..count + n].copy_from_slice(c.b.get(i..i + n)?);
        count += n;
        i += n;
        ends[groups] = (i, count);
        groups += 1;
        match c.at(i) {
            Some(b' ' | b'-') if c.at(i + 1).is_some_and(|b| b.is_ascii_digit()) => i += 1,
            _ => break,
        }
    }
    for &(end, n) in ends[..groups].iter().rev() {
        if !(13..=19).contains(&n) {
            continue;
        }
        if c.at(end)
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            continue;
        }
        let d = &digits[..n];
        if luhn(d) && d.iter().any(|&b| b != b'0') {
            return Some(end);
        }
    }
    None
}

/// A US social security number `AAA-GG-SSSS` at the digit `p`, without the never-issued areas
/// 000, 666 and 900-999, group 00 or serial 0000. Only the dashed form: nine bare digits are
/// too often something else.
pub fn ssn_at(c: &Cur<'_>, p: usize) -> Option<usize> {
    if !number_boundary(c, p) {
        return None;
    }
    let d = |i: usize| c.at(i).filter(u8::is_ascii_digit);
    let mut v = [0u8; 9];
    for (k, off) in [0, 1, 2, 4, 5, 7, 8, 9, 10].into_iter().enumerate() {
        v[k] = d(p + off)?;
    }
    if c.at(p + 3) != Some(b'-') || c.at(p + 6) != Some(b'-') {
        return None;
    }
    let end = p + 11;
    match c.at(end) {
        Some(b) if b.is_ascii_alphanumeric() || b == b'_' => return None,
        Some(b'-' | b'.') if c.at(end + 1).is_some_and(|b| b.is_ascii_digit()) => return None,
        _ => {}
    }
    let area = &v[..3];
    if area == b"000"
        || area == b"666"
        || area[0] == b'9'
        || &v[3..5] == b"00"
        || &v[5..] == b"0000"
    {
        return None;
    }
    Some(end)
}

/// A phone number starting at `s` (a `+`, a `(` or a digit). Accepted forms:
/// - international, `+` then 7 to 15 digits (E.164), first digit not 0, in groups separated by
///   single spaces, dots or dashes, one group may be in parentheses: `+44 20 7946 0958`,
///   `+1 (415) 555-2671`, `+14155552671`;
/// - North American without `+`: `(415) 555-2671`, `415-555-2671`, `415.555.2671`,
///   `1 415 555 2671` (area and exchange start with 2-9);
/// - national with a trunk 0: `020 7946 0958` (three or more groups of 2 to 4 digits with one
///   separator character throughout, 9 to 12 digits, the last group 4 digits or more).
///
/// Not phones: bare digit runs without `+` (order numbers, timestamps), dates (`2024-01-15`),
/// versions and addresses (`1.2.3.4`), seven-digit local numbers without an area code.
pub fn phone_at(c: &Cur<'_>, s: usize) -> Option<usize> {
    if !number_boundary(c, s) {
        return None;
    }
    let plus = c.b.get(s) == Some(&b'+');
    let mut i = s + usize::from(plus);
    let mut groups: [(u8, bool); 8] = [(0, false); 8];
    let mut ng = 0;
    let mut total = 0;
    let mut seps: [u8; 8] = [0; 8];
    loop {
        let paren = c.at(i) == Some(b'(');
        if paren {
            i += 1;
        }
        let (n, _) = c.run(i, 16, |b| b.is_ascii_digit());
        if n == 0 {
            return None;
        }
        total += n;
        // No phone form has more than 8 groups (`+33 6 12 34 56 78` has 6).
        if total > 15 || ng == 8 {
            return None;
        }
        i += n;
        if paren {
            if c.at(i) != Some(b')') {
                return None;
            }
            i += 1;
        }
        groups[ng] = (n as u8, paren);
        ng += 1;
        let next = c.at(i);
        let sep = match next {
            Some(b' ' | b'-' | b'.') => {
                let after = c.at(i + 1);
                if after.is_some_and(|b| b.is_ascii_digit() || b == b'(') {
                    i += 1;
                    next
                } else {
                    None
                }
            }
            Some(b) if paren && b.is_ascii_digit() => Some(b')'),
            _ => None,
        };
        match sep {
            Some(sep) => seps[ng - 1] = sep,
            None => break,
        }
    }
    if c.at(i)
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return None;
    }
    let first = c.b.get(s + usize::from(plus) + usize::from(groups[0].1))?;
    let g = &groups[..ng];
    let ok = if plus {
        (7..=15).contains(&total) && *first != b'0'
    } else {
        nanp(c, s, g) || national(g, &seps[..ng - 1], *first, total)
    };
    ok.then_some(i)
}

fn nanp(c: &Cur<'_>, s: usize, g: &[(u8, bool)]) -> bool {
    let (lead, rest) = match g {
        [(1, false), rest @ ..] => (2, rest),
        rest => (0, rest),
    };
    if lead == 2 && c.b.get(s) != Some(&b'1') {
        return false;
    }
    let [(3, _), (3, false), (4, false)] = rest else {
        return false;
    };
    // First digits of the area code and the exchange: 2-9.
    let digits: Vec<u8> = c.b[s..]
        .iter()
        .copied()
        .filter(u8::is_ascii_digit)
        .skip(lead / 2)
        .take(4)
        .collect();
    digits.len() == 4 && digits[0] >= b'2' && digits[3] >= b'2'
}

fn national(g: &[(u8, bool)], seps: &[u8], first: u8, total: usize) -> bool {
    first == b'0'
        && g.len() >= 3
        && (9..=12).contains(&total)
        && g.iter().all(|&(n, paren)| (2..=4).contains(&n) && !paren)
        && g.last().is_some_and(|&(n, _)| n >= 4)
        && seps.windows(2).all(|w| w[0] == w[1])
}

/// IBAN lengths by country (the SWIFT IBAN registry): a country not listed, or the wrong
/// length for its country, is not an IBAN. This also keeps the check to one mod-97 per
/// candidate.
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// An IBAN at `s` (two upper-case letters, then the two check digits): the compact form or
/// groups of four separated by single spaces, the length of its country, passing mod-97.
/// Upper case only, as printed on statements.
pub fn iban_at(c: &Cur<'_>, s: usize) -> Option<usize> {
    if c.before(s)
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return None;
    }
    let country = c.b.get(s..s + 2)?;
    let &(_, len) = IBAN_LENGTHS
        .iter()
        .find(|(cc, _)| cc.as_slice() == country)?;
    let up = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit();
    let mut compact = [0u8; 34];
    let mut n = 0;
    let mut i = s;
    while n < len {
        match c.at(i) {
            Some(b) if up(b) => {
                compact[n] = b;
                n += 1;
                i += 1;
            }
            Some(b' ') if n % 4 == 0 && n > 0 && c.at(i + 1).is_some_and(up) => i += 1,
            _ => return None,
        }
    }
    if !compact[2..4].iter().all(u8::is_ascii_digit)
        || c.at(i)
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return None;
    }
    iban_mod97(&compact[..len]).then_some(i)
}

/// Which PII kinds one detector pass looks for, as a bit set.
pub fn kind_bit(kind: PiiKind) -> u8 {
    match kind {
        PiiKind::Email => 1,
        PiiKind::Phone => 2,
        PiiKind::PaymentCard => 4,
        PiiKind::Iban => 8,
        PiiKind::UsSsn => 16,
    }
}
