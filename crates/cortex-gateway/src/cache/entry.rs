//! One cached answer, and its compact binary form for Redis.
//!
//! A whole answer is one chunk: the JSON body exactly as the client got it (only 200 answers
//! are stored). A streamed answer keeps the chunks exactly as they were sent to the client, so a
//! replay is byte-identical, with the original chunking.
//!
//! The encoding is hand-written and length-prefixed (all integers little-endian):
//!
//! ```text
//! "CXC" version:u8=1 flags:u8 (bit 0: streamed; others must be 0)
//! prompt_tokens:u64 completion_tokens:u64
//! provider_len:u16 provider (UTF-8)
//! chunk_count:u32 { chunk_len:u32 chunk }*
//! ```
//!
//! Decoding refuses anything else — a wrong tag or version, unknown flags, a length past the
//! end, bytes left over, a whole answer with other than one chunk, more bytes than the caller
//! allows — without panicking: what Redis hands back is not trusted.

use bytes::{BufMut, Bytes, BytesMut};
use cortex_wire::TokenUsage;

const MAGIC: &[u8; 3] = b"CXC";
const FORMAT_VERSION: u8 = 1;
const FLAG_STREAMED: u8 = 1;
/// A provider's name is short; anything longer is not ours.
const MAX_PROVIDER_BYTES: usize = 1024;
/// Bytes an entry costs beyond its chunks and provider name (bookkeeping, for the memory
/// bound), and per chunk.
const ENTRY_OVERHEAD: u64 = 128;
const CHUNK_OVERHEAD: u64 = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedAnswer {
    pub streamed: bool,
    pub chunks: Vec<Bytes>,
    /// The usage the original answer reported, charged again on a hit.
    pub usage: TokenUsage,
    /// The provider that made the answer.
    pub provider: String,
}

/// Why stored bytes are not an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the entry is larger than allowed")]
    TooLarge,
    #[error("the entry is malformed")]
    Malformed,
}

impl CachedAnswer {
    /// A whole (non-streamed) answer: its JSON body.
    pub fn whole(body: Bytes, usage: TokenUsage, provider: impl Into<String>) -> CachedAnswer {
        CachedAnswer {
            streamed: false,
            chunks: vec![body],
            usage,
            provider: provider.into(),
        }
    }

    /// A streamed answer: the chunks as they were sent to the client.
    pub fn streamed(
        chunks: Vec<Bytes>,
        usage: TokenUsage,
        provider: impl Into<String>,
    ) -> CachedAnswer {
        CachedAnswer {
            streamed: true,
            chunks,
            usage,
            provider: provider.into(),
        }
    }

    /// The answer's bytes (chunks joined); for a whole answer, its body.
    pub fn body_len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// What the entry costs in memory, roughly: its bytes plus bookkeeping. The memory bound
    /// and the per-entry limit count this.
    pub fn size_bytes(&self) -> u64 {
        ENTRY_OVERHEAD
            + self.provider.len() as u64
            + self
                .chunks
                .iter()
                .map(|c| c.len() as u64 + CHUNK_OVERHEAD)
                .sum::<u64>()
    }

    /// Whether the shape is one [`CachedAnswer::decode`] accepts (a whole answer is one
    /// chunk; lengths fit their prefixes).
    pub fn is_well_formed(&self) -> bool {
        (self.streamed || self.chunks.len() == 1)
            && self.provider.len() <= MAX_PROVIDER_BYTES
            && u32::try_from(self.chunks.len()).is_ok()
            && self.chunks.iter().all(|c| u32::try_from(c.len()).is_ok())
    }

    /// The binary form. `None` for an answer that is not well formed.
    pub fn encode(&self) -> Option<Bytes> {
        if !self.is_well_formed() {
            return None;
        }
        let len =
            3 + 2 + 16 + 2 + self.provider.len() + 4 + self.body_len() + 4 * self.chunks.len();
        let mut out = BytesMut::with_capacity(len);
        out.put_slice(MAGIC);
        out.put_u8(FORMAT_VERSION);
        out.put_u8(if self.streamed { FLAG_STREAMED } else { 0 });
        out.put_u64_le(self.usage.prompt_tokens);
        out.put_u64_le(self.usage.completion_tokens);
        out.put_u16_le(u16::try_from(self.provider.len()).ok()?);
        out.put_slice(self.provider.as_bytes());
        out.put_u32_le(u32::try_from(self.chunks.len()).ok()?);
        for chunk in &self.chunks {
            out.put_u32_le(u32::try_from(chunk.len()).ok()?);
            out.put_slice(chunk);
        }
        Some(out.freeze())
    }

    /// Reads the binary form; chunks share `data`'s buffer. Input longer than `max_bytes` is
    /// refused before anything else is read.
    pub fn decode(data: Bytes, max_bytes: usize) -> Result<CachedAnswer, DecodeError> {
        if data.len() > max_bytes {
            return Err(DecodeError::TooLarge);
        }
        let mut reader = Reader { data, at: 0 };
        if reader.take(3)? != MAGIC[..] || reader.u8()? != FORMAT_VERSION {
            return Err(DecodeError::Malformed);
        }
        let flags = reader.u8()?;
        if flags & !FLAG_STREAMED != 0 {
            return Err(DecodeError::Malformed);
        }
        let streamed = flags & FLAG_STREAMED != 0;
        let usage = TokenUsage {
            prompt_tokens: reader.u64()?,
            completion_tokens: reader.u64()?,
        };
        let provider_len = usize::from(reader.u16()?);
        if provider_len > MAX_PROVIDER_BYTES {
            return Err(DecodeError::Malformed);
        }
        let provider = String::from_utf8(reader.take(provider_len)?.to_vec())
            .map_err(|_| DecodeError::Malformed)?;
        let count = reader.u32()? as usize;
        // Each chunk takes at least its four-byte length: a count the rest cannot hold is a
        // lie, refused before anything is allocated for it.
        if count > reader.remaining() / 4 || (!streamed && count != 1) {
            return Err(DecodeError::Malformed);
        }
        let mut chunks = Vec::with_capacity(count);
        for _ in 0..count {
            let len = reader.u32()? as usize;
            chunks.push(reader.take(len)?);
        }
        if reader.remaining() != 0 {
            return Err(DecodeError::Malformed);
        }
        Ok(CachedAnswer {
            streamed,
            chunks,
            usage,
            provider,
        })
    }
}

struct Reader {
    data: Bytes,
    at: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.data.len() - self.at
    }

    fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::Malformed);
        }
        let part = self.data.slice(self.at..self.at + len);
        self.at += len;
        Ok(part)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let part = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&part);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: usize = 1 << 20;

    fn sample() -> CachedAnswer {
        CachedAnswer::streamed(
            vec![
                Bytes::from_static(b"data: {\"a\":1}\n\n"),
                Bytes::new(),
                Bytes::from_static(b"data: [DONE]\n\n"),
            ],
            TokenUsage {
                prompt_tokens: 12,
                completion_tokens: u64::MAX,
            },
            "openai-eu",
        )
    }

    #[test]
    fn round_trips_and_refuses_what_is_not_an_entry() {
        let answer = sample();
        let encoded = answer.encode().unwrap();
        assert_eq!(CachedAnswer::decode(encoded.clone(), LIMIT), Ok(answer));

        let whole = CachedAnswer::whole(
            Bytes::from_static(b"{\"id\":\"x\"}"),
            TokenUsage::default(),
            "p",
        );
        assert_eq!(
            CachedAnswer::decode(whole.encode().unwrap(), LIMIT),
            Ok(whole)
        );

        let refuse = |bytes: Vec<u8>, why: DecodeError| {
            assert_eq!(
                CachedAnswer::decode(Bytes::from(bytes.clone()), LIMIT),
                Err(why),
                "{bytes:?}"
            );
        };
        // Every truncation.
        for len in 0..encoded.len() {
            refuse(encoded[..len].to_vec(), DecodeError::Malformed);
        }
        // Trailing bytes.
        let mut longer = encoded.to_vec();
        longer.push(0);
        refuse(longer, DecodeError::Malformed);
        // Wrong tag, version, unknown flag.
        for (at, value) in [(0, b'X'), (3, 2), (4, 2)] {
            let mut bytes = encoded.to_vec();
            bytes[at] = value;
            refuse(bytes, DecodeError::Malformed);
        }
        // A chunk count the bytes cannot hold (no huge allocation happens).
        let mut bytes = encoded.to_vec();
        let count_at = 3 + 2 + 16 + 2 + "openai-eu".len();
        bytes[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        refuse(bytes, DecodeError::Malformed);
        // A whole answer with two chunks.
        let mut two = CachedAnswer::whole(Bytes::from_static(b"{}"), TokenUsage::default(), "p");
        two.chunks.push(Bytes::from_static(b"{}"));
        assert_eq!(two.encode(), None);
        let mut bytes = sample().encode().unwrap().to_vec();
        bytes[4] = 0;
        refuse(bytes, DecodeError::Malformed);
        // Not UTF-8 in the provider's name.
        let mut bytes = encoded.to_vec();
        bytes[3 + 2 + 16 + 2] = 0xff;
        refuse(bytes, DecodeError::Malformed);
        // Over the caller's limit.
        assert_eq!(
            CachedAnswer::decode(encoded.clone(), encoded.len() - 1),
            Err(DecodeError::TooLarge)
        );
    }

    #[test]
    fn size_counts_the_chunks() {
        let small = CachedAnswer::whole(Bytes::from_static(b"{}"), TokenUsage::default(), "p");
        let big = CachedAnswer::whole(Bytes::from(vec![b'x'; 10_000]), TokenUsage::default(), "p");
        assert!(big.size_bytes() >= 10_000);
        assert!(small.size_bytes() < 200);
    }

    fn answers() -> impl Strategy<Value = CachedAnswer> {
        (
            any::<bool>(),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            any::<u64>(),
            any::<u64>(),
            "[a-z0-9-]{0,20}",
        )
            .prop_map(|(streamed, chunks, prompt, completion, provider)| {
                let mut chunks: Vec<Bytes> = chunks.into_iter().map(Bytes::from).collect();
                if !streamed {
                    chunks.truncate(1);
                }
                CachedAnswer {
                    streamed,
                    chunks,
                    usage: TokenUsage {
                        prompt_tokens: prompt,
                        completion_tokens: completion,
                    },
                    provider,
                }
            })
    }

    proptest! {
        #[test]
        fn any_answer_round_trips(answer in answers()) {
            let encoded = answer.encode().unwrap();
            prop_assert_eq!(CachedAnswer::decode(encoded, LIMIT), Ok(answer));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = CachedAnswer::decode(Bytes::from(bytes), LIMIT);
        }

        #[test]
        fn damaged_entries_never_panic(answer in answers(), at in any::<usize>(), value in any::<u8>()) {
            let mut bytes = answer.encode().unwrap().to_vec();
            let at = at % bytes.len();
            bytes[at] = value;
            if let Ok(decoded) = CachedAnswer::decode(Bytes::from(bytes), LIMIT) {
                prop_assert!(decoded.is_well_formed());
            }
        }
    }
}
