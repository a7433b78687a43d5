//! HTTP/1.1 towards providers, without a connection task: the request's own task writes the
//! request, reads the answer's head and then the body straight from the socket.
//!
//! This module is the wire format only, with no I/O: the request head written into a buffer,
//! the answer's head parsed by `httparse`, and the body's framing (length, chunked, or until
//! the connection closes) decoded from a read buffer. Everything that arrives is the
//! provider's, so every length is checked and every malformed input is an error, never a
//! panic or a guess.
//!
//! Only what the gateway needs is supported: `POST` with a body it holds whole, answers whose
//! headers are read only for framing and keep-alive (no answer header is passed to the
//! client), `1xx` interim answers skipped, trailers skipped.

use bytes::{Buf as _, Bytes, BytesMut};

/// The most an answer's head may take; larger is refused as malformed.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header lines an answer's head may have.
const MAX_HEADERS: usize = 100;
/// The most a chunk-size line (with its extensions) may take.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The most the trailer section of a chunked body may take.
const MAX_TRAILERS: usize = 16 * 1024;

/// What the provider sent was not HTTP/1.1 we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed answer head")]
    Head,
    #[error("answer head larger than allowed")]
    HeadTooLarge,
    #[error("malformed content-length")]
    ContentLength,
    #[error("malformed chunked body")]
    Chunked,
    #[error("the provider switched protocols")]
    Upgrade,
    #[error("the answer ended before its head or body did")]
    CutShort,
}

/// One header of the request head. Values are checked before anything is written.
pub(crate) struct RequestHead<'a> {
    /// `POST` for the data plane; `GET` (with no body) for health checks.
    pub method: Method,
    pub path_and_query: &'a str,
    pub authority: &'a str,
    /// `(name, value)` pairs; names are lowercase tokens chosen by the caller.
    pub headers: &'a [(&'a str, &'a [u8])],
    pub content_length: usize,
}

/// The methods the gateway sends upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Post,
    Get,
}

/// Writes `POST <path> HTTP/1.1` (or `GET`) and the headers into `out`. A value holding a byte that may
/// not appear in a header (CR, LF, NUL, other controls) is refused, so nothing a caller passes
/// can split the request.
pub(crate) fn encode_request(head: &RequestHead<'_>, out: &mut Vec<u8>) -> Result<(), WireError> {
    if !head.path_and_query.starts_with('/')
        || !head.path_and_query.bytes().all(is_target_byte)
        || head.authority.is_empty()
        || !head.authority.bytes().all(is_target_byte)
        || head
            .headers
            .iter()
            .any(|(_, value)| !is_header_value(value))
    {
        return Err(WireError::Head);
    }
    out.extend_from_slice(match head.method {
        Method::Post => b"POST ",
        Method::Get => b"GET ",
    });
    out.extend_from_slice(head.path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(head.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in head.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(head.content_length.to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    Ok(())
}

/// Visible ASCII: what a request target or authority may hold.
fn is_target_byte(b: u8) -> bool {
    (0x21..0x7f).contains(&b)
}

/// Whether `value` may be sent as a header value: visible characters, space and tab only
/// (RFC 9110 §5.5), so never CR, LF or NUL.
pub(crate) fn is_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// How the answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
    /// Until the provider closes the connection.
    Close,
}

/// The parts of an answer's head the gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    pub status: u16,
    pub framing: Framing,
    /// Whether the connection may carry another request once this body has been read.
    pub keep_alive: bool,
    /// `Retry-After` in seconds (the delay form only; a date or anything else is ignored),
    /// at most [`MAX_RETRY_AFTER_SECS`].
    pub retry_after_secs: Option<u32>,
}

/// A `Retry-After` longer than this is read as this: an hour is already "not now".
pub(crate) const MAX_RETRY_AFTER_SECS: u32 = 3_600;

/// Parses an answer head at the start of `buf`. `Ok(None)`: not all of it has arrived yet.
/// On success, also returns how many bytes the head took. A `1xx` interim answer is returned
/// like any other; the caller skips it.
pub(crate) fn parse_response(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, WireError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    // Only the first `MAX_HEAD` bytes are looked at, so whether a head is refused, and why,
    // does not depend on how much of what follows has arrived.
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let consumed = match response.parse(window) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(WireError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(WireError::HeadTooLarge),
        Err(_) => return Err(WireError::Head),
    };
    let status = response.code.ok_or(WireError::Head)?;
    let http11 = response.version == Some(1);
    if status == 101 {
        return Err(WireError::Upgrade);
    }

    let mut content_length: Option<u64> = None;
    let mut chunked_last = false;
    let mut has_transfer_encoding = false;
    let mut close = !http11;
    let mut retry_after_secs = None;
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            // A list of equal values is tolerated (RFC 9110 §8.6); differing values are not.
            for part in header.value.split(|&b| b == b',') {
                let value = parse_length(trim(part)).ok_or(WireError::ContentLength)?;
                if content_length.is_some_and(|seen| seen != value) {
                    return Err(WireError::ContentLength);
                }
                content_length = Some(value);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            has_transfer_encoding = true;
            // Only the last coding of the last line decides whether the body is chunked.
            let last = header.value.rsplit(|&b| b == b',').next().unwrap_or(&[]);
            chunked_last = trim(last).eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after_secs = parse_length(trim(header.value)).map(|secs| {
                u32::try_from(secs)
                    .unwrap_or(u32::MAX)
                    .min(MAX_RETRY_AFTER_SECS)
            });
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    close = false;
                }
            }
        }
    }

    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Length(0)
    } else if has_transfer_encoding {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3); an answer that sends
        // both is suspect, so its connection is not reused.
        if content_length.is_some() {
            close = true;
        }
        if chunked_last {
            Framing::Chunked
        } else {
            close = true;
            Framing::Close
        }
    } else if let Some(length) = content_length {
        Framing::Length(length)
    } else {
        close = true;
        Framing::Close
    };
    Ok(Some((
        ResponseHead {
            status,
            framing,
            keep_alive: !close,
            retry_after_secs,
        },
        consumed,
    )))
}

/// Takes the final answer's head off the front of `buf`, dropping the `1xx` interim answers
/// before it. `Ok(None)`: more bytes are needed.
pub(crate) fn take_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, WireError> {
    while let Some((head, used)) = parse_response(buf)? {
        buf.advance(used);
        if !(100..200).contains(&head.status) {
            return Ok(Some(head));
        }
    }
    Ok(None)
}

/// Reads `wire` as a whole answer (head, then body to its end or to the end of `wire`), fed
/// `step` bytes at a time as reads would deliver it: the status and body, or why it was
/// refused. What the fuzz target checks: never a panic, and the same result at every step.
pub fn read_answer(wire: &[u8], step: usize) -> Result<(u16, Vec<u8>), WireError> {
    let step = step.max(1);
    let mut pieces = wire.chunks(step);
    let mut buf = BytesMut::new();
    let head = loop {
        if let Some(head) = take_head(&mut buf)? {
            break head;
        }
        match pieces.next() {
            Some(piece) => buf.extend_from_slice(piece),
            None => return Err(WireError::CutShort),
        }
    };
    let mut decoder = BodyDecoder::new(head.framing);
    let mut body = Vec::new();
    loop {
        match decoder.decode(&mut buf)? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::End => return Ok((head.status, body)),
            Decoded::NeedMore => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None if decoder.ends_at_close() => return Ok((head.status, body)),
                None => return Err(WireError::CutShort),
            },
        }
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// Decimal digits only, no sign, no overflow.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |total, &b| {
        let digit = u64::from(b.checked_sub(b'0').filter(|d| *d <= 9)?);
        total.checked_mul(10)?.checked_add(digit)
    })
}

/// One step of decoding a body from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Body bytes, split off the read buffer without a copy.
    Data(Bytes),
    /// The body is complete; what is left in the buffer follows it.
    End,
    /// More bytes must be read first.
    NeedMore,
}

/// Where a body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyDecoder {
    Length(u64),
    Close,
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk, with this many bytes of it still to come.
    ChunkData(u64),
    /// After a chunk's data, before its CRLF.
    ChunkEnd,
    /// After the last chunk, in the trailers; `seen` bytes of them so far.
    Trailers {
        seen: usize,
    },
    Done,
}

impl BodyDecoder {
    pub(crate) fn new(framing: Framing) -> Self {
        match framing {
            Framing::Length(0) => BodyDecoder::Done,
            Framing::Length(length) => BodyDecoder::Length(length),
            Framing::Chunked => BodyDecoder::ChunkSize,
            Framing::Close => BodyDecoder::Close,
        }
    }

    /// Takes the next piece of body out of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        loop {
            match *self {
                BodyDecoder::Done => return Ok(Decoded::End),
                BodyDecoder::Close => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                BodyDecoder::Length(remaining) | BodyDecoder::ChunkData(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                    let left = remaining - take as u64;
                    *self = match (*self, left) {
                        (BodyDecoder::Length(_), 0) => BodyDecoder::Done,
                        (BodyDecoder::Length(_), left) => BodyDecoder::Length(left),
                        (_, 0) => BodyDecoder::ChunkEnd,
                        (_, left) => BodyDecoder::ChunkData(left),
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                BodyDecoder::ChunkSize => {
                    // httparse reads an empty size as zero; a size line must start with a digit.
                    match buf.first() {
                        None => return Ok(Decoded::NeedMore),
                        Some(b) if !b.is_ascii_hexdigit() => return Err(WireError::Chunked),
                        Some(_) => {}
                    }
                    let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
                    match httparse::parse_chunk_size(window) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            buf.advance(used);
                            *self = if size == 0 {
                                BodyDecoder::Trailers { seen: 0 }
                            } else {
                                BodyDecoder::ChunkData(size)
                            };
                        }
                        Ok(httparse::Status::Partial) if buf.len() >= MAX_CHUNK_LINE => {
                            return Err(WireError::Chunked)
                        }
                        Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                        Err(_) => return Err(WireError::Chunked),
                    }
                }
                BodyDecoder::ChunkEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|b| *b != b'\r') {
                            return Err(WireError::Chunked);
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::Chunked);
                    }
                    buf.advance(2);
                    *self = BodyDecoder::ChunkSize;
                }
                BodyDecoder::Trailers { seen } => {
                    let Some(newline) = memchr::memchr(b'\n', buf) else {
                        if seen + buf.len() >= MAX_TRAILERS {
                            return Err(WireError::Chunked);
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let line = &buf[..newline];
                    if line.last() != Some(&b'\r') {
                        return Err(WireError::Chunked);
                    }
                    let empty = line.len() == 1;
                    let seen = seen + newline + 1;
                    if seen > MAX_TRAILERS {
                        return Err(WireError::Chunked);
                    }
                    buf.advance(newline + 1);
                    *self = if empty {
                        BodyDecoder::Done
                    } else {
                        BodyDecoder::Trailers { seen }
                    };
                }
            }
        }
    }

    /// The connection closed: whether that ends the body (only a close-delimited one), as
    /// opposed to cutting it short.
    pub(crate) fn ends_at_close(&self) -> bool {
        matches!(self, BodyDecoder::Close | BodyDecoder::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(ResponseHead, usize)>, WireError> {
        parse_response(text.as_bytes())
    }

    fn complete(text: &str) -> ResponseHead {
        let (head, used) = head(text).unwrap().expect("complete head");
        assert_eq!(used, text.find("\r\n\r\n").unwrap() + 4);
        head
    }

    /// Feeds `wire` to a decoder `step` bytes at a time and returns the body and what followed.
    fn decode_all(
        framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let mut decoder = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => {
                    assert!(!data.is_empty(), "empty data piece");
                    body.extend_from_slice(&data);
                }
                Decoded::End => return Ok((body, buf.to_vec())),
                Decoded::NeedMore => {
                    if fed == wire.len() {
                        assert!(decoder.ends_at_close(), "cut short: {decoder:?}");
                        return Ok((body, Vec::new()));
                    }
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn request_head_is_written_in_order_with_its_length() {
        let mut out = Vec::new();
        encode_request(
            &RequestHead {
                method: Method::Post,
                path_and_query: "/v1/chat/completions",
                authority: "127.0.0.1:8000",
                headers: &[
                    ("content-type", b"application/json"),
                    ("authorization", b"Bearer sk-1"),
                ],
                content_length: 42,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8000\r\ncontent-type: application/json\r\nauthorization: Bearer sk-1\r\ncontent-length: 42\r\n\r\n"
        );
    }

    #[test]
    fn request_head_refuses_anything_that_could_split_it() {
        let splitting: [&[u8]; 4] = [b"a\r\nx-injected: 1", b"a\nb", b"a\0b", b"a\x7fb"];
        for value in splitting {
            let mut out = Vec::new();
            let result = encode_request(
                &RequestHead {
                    method: Method::Post,
                    path_and_query: "/v1/x",
                    authority: "h",
                    headers: &[("x-request-id", value)],
                    content_length: 0,
                },
                &mut out,
            );
            assert_eq!(result, Err(WireError::Head), "{value:?}");
            assert!(out.is_empty(), "nothing is written for a refused head");
        }
        for (path, authority) in [
            ("/a b", "h"),
            ("noslash", "h"),
            ("/a", "h\r\nx: y"),
            ("/a", ""),
        ] {
            let head = RequestHead {
                method: Method::Post,
                path_and_query: path,
                authority,
                headers: &[],
                content_length: 0,
            };
            assert_eq!(
                encode_request(&head, &mut Vec::new()),
                Err(WireError::Head),
                "{path:?} {authority:?}"
            );
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = complete("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n");
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (200, Framing::Length(12), true)
        );

        let h = complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));

        // Both: the coding wins and the connection is not trusted again.
        let h =
            complete("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));

        // A coding that is not chunked last: read to the close.
        let h = complete("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));

        let h = complete("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));

        for status in ["204 No Content", "304 Not Modified", "100 Continue"] {
            let h = complete(&format!(
                "HTTP/1.1 {status}\r\ntransfer-encoding: chunked\r\n\r\n"
            ));
            assert_eq!(h.framing, Framing::Length(0), "{status}");
        }

        let h = complete(
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\nConnection: keep-alive, Close\r\n\r\n",
        );
        assert!(!h.keep_alive);
        let h = complete("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let h = complete("HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\n");
        assert!(h.keep_alive);

        let h = complete("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\ncontent-length: 7\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(7));
    }

    #[test]
    fn malformed_heads_are_errors() {
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-length: 8\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 7, 8\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0x10\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        ] {
            assert_eq!(head(bad), Err(WireError::ContentLength), "{bad:?}");
        }
        for bad in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx: a\0b\r\n\r\n",
        ] {
            assert_eq!(head(bad), Err(WireError::Head), "{bad:?}");
        }
        assert_eq!(
            head("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"),
            Err(WireError::Upgrade)
        );
    }

    #[test]
    fn heads_arrive_in_pieces_and_have_a_size_limit() {
        let full = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        for cut in 0..full.len() - 2 {
            assert_eq!(head(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(head(full).unwrap().unwrap().1, full.len() - 2);

        let mut huge = String::from("HTTP/1.1 200 OK\r\n");
        while huge.len() < MAX_HEAD {
            huge.push_str("x-filler: 0123456789abcdef0123456789abcdef0123456789abcdef\r\n");
        }
        assert_eq!(head(&huge), Err(WireError::HeadTooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(
            head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")),
            Err(WireError::HeadTooLarge)
        );
    }

    #[test]
    fn length_bodies_stop_at_their_length_at_every_split() {
        for step in [1, 2, 3, 7, 64] {
            let (body, rest) = decode_all(Framing::Length(5), b"helloHTTP/1.1", step).unwrap();
            assert_eq!(body, b"hello");
            // What follows the body stays in the buffer (the caller will not reuse such a
            // connection); it is never part of the body.
            assert!(b"HTTP/1.1".starts_with(&rest), "{rest:?}");
        }
    }

    #[test]
    fn bodies_cut_short_are_not_complete() {
        for (framing, wire, data) in [
            (Framing::Length(10), &b"hello"[..], &b"hello"[..]),
            (Framing::Chunked, b"5\r\nhel", b"hel"),
        ] {
            let mut decoder = BodyDecoder::new(framing);
            let mut buf = BytesMut::from(wire);
            assert_eq!(
                decoder.decode(&mut buf),
                Ok(Decoded::Data(Bytes::copy_from_slice(data)))
            );
            assert_eq!(decoder.decode(&mut buf), Ok(Decoded::NeedMore));
            assert!(!decoder.ends_at_close(), "{framing:?}");
        }
    }

    #[test]
    fn chunked_bodies_decode_at_every_split() {
        let wire = b"5\r\nhello\r\n6;ext=\"x\"\r\n world\r\nA  \r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in 1..=wire.len() {
            let (body, rest) = decode_all(Framing::Chunked, wire, step).unwrap();
            assert_eq!(body, b"hello world0123456789", "step {step}");
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [
            &b"\r\nhello\r\n0\r\n\r\n"[..], // no size at all
            b"5\r\nhelloXX0\r\n\r\n",       // data overruns its size
            b"g\r\n",                       // not hex
            b"-5\r\n",
            b"5 6\r\nhello\r\n",
            b"1ffffffffffffffff\r\n", // more than 64 bits
            b"5\nhello\r\n",          // bare LF
            b"0\r\nx: 1\n\r\n",       // trailer line without CR
        ] {
            let result = decode_all(Framing::Chunked, bad, 1);
            assert_eq!(
                result,
                Err(WireError::Chunked),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // An endless size line or trailer section is refused once it passes its limit.
        let mut endless = b"5;".to_vec();
        endless.resize(MAX_CHUNK_LINE + 10, b'x');
        assert_eq!(
            decode_all(Framing::Chunked, &endless, 512),
            Err(WireError::Chunked)
        );
        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() < MAX_TRAILERS + 100 {
            trailers.extend_from_slice(b"x-t: 1\r\n");
        }
        assert_eq!(
            decode_all(Framing::Chunked, &trailers, 512),
            Err(WireError::Chunked)
        );
    }

    #[test]
    fn how_an_answer_is_split_never_changes_how_it_is_read() {
        let long_line = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE));
        let big_head = format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "y".repeat(MAX_HEAD));
        // The answer on the wire, and its status and body or why it is refused.
        type Case = (&'static [u8], Result<(u16, &'static [u8]), WireError>);
        let cases: [Case; 8] = [
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA", Ok((200, b"ok"))),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nt: 1\r\n\r\n",
                Ok((200, b"ok")),
            ),
            (b"HTTP/1.1 500 Oops\r\n\r\nto the end", Ok((500, b"to the end"))),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok", Err(WireError::CutShort)),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n", Err(WireError::ContentLength)),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", Err(WireError::Chunked)),
            // A size line over the limit is refused even when all of it has arrived.
            (
                format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{long_line}").into_bytes().leak(),
                Err(WireError::Chunked),
            ),
            (big_head.into_bytes().leak(), Err(WireError::HeadTooLarge)),
        ];
        for (wire, expected) in cases {
            let expected = expected.map(|(status, body)| (status, body.to_vec()));
            // Byte-sized steps over the large cases would re-parse 64 KiB heads 64 Ki times.
            let steps = [wire.len(), 1, 2, 3, 5, 8, 13, 777, 4096];
            for step in steps.into_iter().filter(|s| wire.len() < 4096 || *s >= 777) {
                assert_eq!(
                    read_answer(wire, step),
                    expected,
                    "step {step}: {:?}",
                    String::from_utf8_lossy(&wire[..wire.len().min(80)])
                );
            }
        }
    }

    #[test]
    fn a_close_delimited_body_is_everything_until_the_close() {
        let (body, _) = decode_all(Framing::Close, b"anything\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!(body, b"anything\r\n0\r\n\r\n");
    }
}
