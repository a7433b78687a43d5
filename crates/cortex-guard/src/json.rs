//! A validating walk over a JSON document that hands every string token (keys and values) to
//! a callback, without building the document: the guard must look at every string of a
//! request body but must not pay for a parse of the whole thing.
//!
//! It accepts exactly RFC 8259 JSON (what serde_json accepts, but for nesting depth: serde_json
//! stops at 128 levels, this walk does not care). Escapes are checked for shape here;
//! decoding them is the caller's (serde_json, on the few strings that need it).

/// Walks `b`; calls `on_string(open_quote, after_close_quote, has_escape)` for every string in
/// document order. Returns false when `b` is not one JSON value (or when the callback refused).
pub fn walk(b: &[u8], on_string: &mut dyn FnMut(usize, usize, bool) -> bool) -> bool {
    // The open containers, innermost last: true for an object.
    let mut stack: Vec<bool> = Vec::new();
    let mut i = skip_ws(b, 0);
    'value: loop {
        // A value starts at i.
        match b.get(i) {
            Some(b'{') => {
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&b'}') {
                    i += 1;
                } else {
                    stack.push(true);
                    match key(b, i, on_string) {
                        Some(next) => i = next,
                        None => return false,
                    }
                    continue 'value;
                }
            }
            Some(b'[') => {
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    i += 1;
                } else {
                    stack.push(false);
                    continue 'value;
                }
            }
            Some(b'"') => match string(b, i) {
                Some((end, escaped)) => {
                    if !on_string(i, end, escaped) {
                        return false;
                    }
                    i = end;
                }
                None => return false,
            },
            Some(b't') if b[i..].starts_with(b"true") => i += 4,
            Some(b'f') if b[i..].starts_with(b"false") => i += 5,
            Some(b'n') if b[i..].starts_with(b"null") => i += 4,
            Some(b'-' | b'0'..=b'9') => match number(b, i) {
                Some(end) => i = end,
                None => return false,
            },
            _ => return false,
        }
        // After a value: close containers, or go on to the next member.
        loop {
            i = skip_ws(b, i);
            let Some(&top) = stack.last() else {
                return i == b.len();
            };
            match b.get(i) {
                Some(b',') => {
                    i = skip_ws(b, i + 1);
                    if top {
                        match key(b, i, on_string) {
                            Some(next) => i = next,
                            None => return false,
                        }
                    }
                    continue 'value;
                }
                Some(b'}') if top => {
                    stack.pop();
                    i += 1;
                }
                Some(b']') if !top => {
                    stack.pop();
                    i += 1;
                }
                _ => return false,
            }
        }
    }
}

/// An object key and its colon at `i`; the position of the member's value.
fn key(b: &[u8], i: usize, on_string: &mut dyn FnMut(usize, usize, bool) -> bool) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let (end, escaped) = string(b, i)?;
    if !on_string(i, end, escaped) {
        return None;
    }
    let colon = skip_ws(b, end);
    (b.get(colon) == Some(&b':')).then(|| skip_ws(b, colon + 1))
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(i) {
        i += 1;
    }
    i
}

/// The string whose opening quote is at `i`: the position after its closing quote and whether
/// it holds escapes. Control characters are refused, escapes checked for shape.
fn string(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        let k = j + memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if has_control(&b[j..k]) {
            return None;
        }
        if b[k] == b'"' {
            return Some((k + 1, escaped));
        }
        escaped = true;
        match b.get(k + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j = k + 2,
            b'u' => {
                let hex = b.get(k + 2..k + 6)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                j = k + 6;
            }
            _ => return None,
        }
    }
}

/// Whether any byte is below 0x20, written so that it vectorizes (no early exit per byte).
fn has_control(s: &[u8]) -> bool {
    s.chunks(32)
        .any(|chunk| chunk.iter().fold(false, |acc, &x| acc | (x < 0x20)))
}

fn number(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let digits = |b: &[u8], i: usize| b[i..].iter().take_while(|x| x.is_ascii_digit()).count();
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(b, i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let n = digits(b, i + 1);
        if n == 0 {
            return None;
        }
        i += 1 + n;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let n = b.get(i..).map_or(0, |_| digits(b, i));
        if n == 0 {
            return None;
        }
        i += n;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::walk;

    fn strings(doc: &str) -> Option<Vec<String>> {
        let mut found = Vec::new();
        walk(doc.as_bytes(), &mut |s, e, _| {
            found.push(doc[s..e].to_string());
            true
        })
        .then_some(found)
    }

    #[test]
    fn finds_every_key_and_value_string_and_agrees_with_serde_json() {
        let doc = r#" {"a": ["x", 1, -2.5e3, true, null, {"b\n": "c\u0041"}], "d": {}} "#;
        assert_eq!(
            strings(doc).unwrap(),
            [r#""a""#, r#""x""#, r#""b\n""#, r#""c\u0041""#, r#""d""#]
        );
        for doc in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "01",
            "1.",
            "\"\\x\"",
            "\"a\u{1}\"",
            "[1] [2]",
            "{\"a\":1]",
            "-",
            "1e",
            "tru",
            "\"\\u12g4\"",
            "{1:2}",
            "[\"a\" \"b\"]",
        ] {
            assert!(strings(doc).is_none(), "{doc:?}");
            assert!(
                serde_json::from_str::<serde_json::Value>(doc).is_err(),
                "{doc:?}"
            );
        }
        for doc in [
            "0",
            "-0.0e+1",
            "\"\"",
            "[]",
            "{}",
            "[[[]]]",
            " [ 1 , {\"k\" : \"v\"} ] ",
        ] {
            assert!(strings(doc).is_some(), "{doc:?}");
        }
    }
}
