//! A small, bounded reader of GGUF headers (the key/value metadata and tensor table at the front
//! of a llama.cpp model file): architecture, name, size label, quantization (`general.file_type`),
//! context length, split information, and a parameter count summed from the tensor shapes.
//!
//! Written here rather than taken from crates.io: the parsers there materialize every metadata
//! array (tokenizer vocabularies of 100k+ strings) and return `anyhow` errors; this one keeps
//! only short scalar values and skips everything else while reading. Files come from an
//! operator's directory, so every length in the file is treated as hostile: the header may use
//! at most [`MAX_HEADER_BYTES`], key and kept-value sizes, entry counts, array lengths and
//! nesting are capped, and nothing is allocated from a length before that many bytes have been
//! read. It never panics on any input (proptest below; `fuzz/fuzz_targets/gguf_header.rs`).

use std::collections::BTreeMap;
use std::io::Read;

/// Most bytes the header (metadata and tensor table) may take.
pub const MAX_HEADER_BYTES: u64 = 512 * 1024 * 1024;
/// Most metadata entries.
pub const MAX_KV_COUNT: u64 = 1 << 20;
/// Most tensors.
pub const MAX_TENSORS: u64 = 1 << 22;
/// Longest key or tensor name.
pub const MAX_KEY_BYTES: u64 = 64 * 1024;
/// Longest string value kept (longer ones, such as chat templates, are skipped).
pub const MAX_KEPT_STRING_BYTES: u64 = 1024;
/// Most metadata values kept.
pub const MAX_KEPT_VALUES: usize = 4096;
/// Deepest array nesting.
pub const MAX_ARRAY_DEPTH: u32 = 3;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// What the header says about a model.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct GgufHeader {
    pub version: u32,
    pub tensor_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `general.size_label` (e.g. `8B`) when the file has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_label: Option<String>,
    /// The sum of every tensor's element count in this file (one shard of a split model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter_count: Option<u64>,
    /// `general.file_type` as llama.cpp names it (`Q4_K_M`, `F16`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// `{architecture}.context_length`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u64>,
    /// `split.count` / `split.no` for files of a split model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_index: Option<u64>,
}

/// Why a header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file")]
    BadMagic,
    #[error("GGUF version {0} is not supported")]
    UnsupportedVersion(u32),
    #[error("the header ends early")]
    Truncated,
    #[error("the header is larger than allowed: {0}")]
    TooLarge(&'static str),
    #[error("unknown value type {0}")]
    BadValueType(u32),
    #[error("read error: {0}")]
    Io(String),
}

/// A metadata value kept from the header.
#[derive(Debug, Clone, PartialEq)]
enum Kept {
    Unsigned(u64),
    Signed(i64),
    Text(String),
}

/// Reads the header from `reader` (the file from its first byte).
pub fn read_header(reader: impl Read) -> Result<GgufHeader, GgufError> {
    let mut input = Input {
        reader: reader.take(MAX_HEADER_BYTES),
        wide: true,
    };
    let mut magic = [0u8; 4];
    input.exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic);
    }
    let version = input.u32()?;
    if !(1..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    // Version 1 wrote counts and string lengths as 32 bits.
    input.wide = version >= 2;
    let tensor_count = input.count()?;
    let kv_count = input.count()?;
    if tensor_count > MAX_TENSORS {
        return Err(GgufError::TooLarge("tensor count"));
    }
    if kv_count > MAX_KV_COUNT {
        return Err(GgufError::TooLarge("metadata count"));
    }

    let mut kept: BTreeMap<String, Kept> = BTreeMap::new();
    for _ in 0..kv_count {
        let key = input.string(MAX_KEY_BYTES)?;
        let value_type = input.u32()?;
        let value = input.value(value_type, 0)?;
        if let (Some(value), true) = (value, kept.len() < MAX_KEPT_VALUES) {
            kept.insert(key, value);
        }
    }

    let mut parameters: Option<u64> = Some(0);
    for _ in 0..tensor_count {
        input.skip_string(MAX_KEY_BYTES)?;
        let dims = input.u32()?;
        if dims > MAX_DIMS {
            return Err(GgufError::TooLarge("tensor dimensions"));
        }
        let mut elements: Option<u64> = Some(1);
        for _ in 0..dims {
            let dim = input.u64()?;
            elements = elements.and_then(|e| e.checked_mul(dim));
        }
        let _ggml_type = input.u32()?;
        let _offset = input.u64()?;
        parameters = match (parameters, elements) {
            (Some(sum), Some(elements)) => sum.checked_add(elements),
            _ => None,
        };
    }

    Ok(summarize(version, tensor_count, &kept, parameters))
}

fn summarize(
    version: u32,
    tensor_count: u64,
    kept: &BTreeMap<String, Kept>,
    parameters: Option<u64>,
) -> GgufHeader {
    let text = |key: &str| match kept.get(key) {
        Some(Kept::Text(text)) => Some(text.clone()),
        _ => None,
    };
    let number = |key: &str| match kept.get(key) {
        Some(Kept::Unsigned(n)) => Some(*n),
        Some(Kept::Signed(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    let architecture = text("general.architecture");
    let context_length = architecture
        .as_ref()
        .and_then(|arch| number(&format!("{arch}.context_length")));
    let quantization = number("general.file_type").map(file_type_name);
    GgufHeader {
        version,
        tensor_count,
        name: text("general.name"),
        size_label: text("general.size_label"),
        parameter_count: parameters.filter(|count| *count > 0),
        quantization,
        context_length,
        split_count: number("split.count"),
        split_index: number("split.no"),
        architecture,
    }
}

/// llama.cpp's `llama_ftype` names (`include/llama.h`).
pub fn file_type_name(file_type: u64) -> String {
    let name = match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        39 => "NVFP4",
        other => return format!("file_type {other}"),
    };
    name.to_owned()
}

struct Input<R> {
    reader: std::io::Take<R>,
    /// Counts and string lengths are 64 bits (version 2 and later) rather than 32.
    wide: bool,
}

impl<R: Read> Input<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        self.reader
            .read_exact(buf)
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::UnexpectedEof if self.reader.limit() == 0 => {
                    GgufError::TooLarge("header bytes")
                }
                std::io::ErrorKind::UnexpectedEof => GgufError::Truncated,
                _ => GgufError::Io(error.kind().to_string()),
            })
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.exact(&mut buf)?;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn count(&mut self) -> Result<u64, GgufError> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    /// Skips `len` bytes by reading them through a small buffer: no allocation from `len`.
    fn skip(&mut self, mut len: u64) -> Result<(), GgufError> {
        let mut scratch = [0u8; 8192];
        while len > 0 {
            let step = usize::try_from(len.min(scratch.len() as u64)).unwrap_or(scratch.len());
            let chunk = scratch.get_mut(..step).ok_or(GgufError::Truncated)?;
            self.exact(chunk)?;
            len -= step as u64;
        }
        Ok(())
    }

    /// A string of at most `max` bytes (longer is an error), read only after its length checked.
    fn string(&mut self, max: u64) -> Result<String, GgufError> {
        let len = self.count()?;
        if len > max {
            return Err(GgufError::TooLarge("string length"));
        }
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| GgufError::TooLarge("string"))?];
        self.exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn skip_string(&mut self, max: u64) -> Result<(), GgufError> {
        let len = self.count()?;
        if len > max {
            return Err(GgufError::TooLarge("string length"));
        }
        self.skip(len)
    }

    /// Reads one value of `value_type`; returns it when it is worth keeping.
    fn value(&mut self, value_type: u32, depth: u32) -> Result<Option<Kept>, GgufError> {
        let kept = match value_type {
            0 => Kept::Unsigned(u64::from(self.array::<1>()?[0])),
            1 => Kept::Signed(i64::from(i8::from_le_bytes(self.array()?))),
            2 => Kept::Unsigned(u64::from(u16::from_le_bytes(self.array()?))),
            3 => Kept::Signed(i64::from(i16::from_le_bytes(self.array()?))),
            4 => Kept::Unsigned(u64::from(self.u32()?)),
            5 => Kept::Signed(i64::from(i32::from_le_bytes(self.array()?))),
            6 => {
                self.skip(4)?;
                return Ok(None);
            }
            7 => Kept::Unsigned(u64::from(self.array::<1>()?[0])),
            8 => {
                let len = self.count()?;
                if len > MAX_KEPT_STRING_BYTES {
                    self.skip(len)?;
                    return Ok(None);
                }
                let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
                self.exact(&mut buf)?;
                Kept::Text(String::from_utf8_lossy(&buf).into_owned())
            }
            9 => {
                self.skip_array(depth)?;
                return Ok(None);
            }
            10 => Kept::Unsigned(self.u64()?),
            11 => Kept::Signed(i64::from_le_bytes(self.array()?)),
            12 => {
                self.skip(8)?;
                return Ok(None);
            }
            other => return Err(GgufError::BadValueType(other)),
        };
        Ok(Some(kept))
    }

    fn skip_array(&mut self, depth: u32) -> Result<(), GgufError> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::TooLarge("array nesting"));
        }
        let element_type = self.u32()?;
        let len = self.count()?;
        let fixed = match element_type {
            0 | 1 | 7 => Some(1u64),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            8 | 9 => None,
            other => return Err(GgufError::BadValueType(other)),
        };
        match fixed {
            Some(size) => {
                let bytes = len.checked_mul(size).ok_or(GgufError::TooLarge("array"))?;
                self.skip(bytes)
            }
            None => {
                // Each element costs at least its length field, so a hostile count ends at the
                // header limit rather than spinning.
                for _ in 0..len {
                    if element_type == 8 {
                        let element_len = self.count()?;
                        self.skip(element_len)?;
                    } else {
                        self.skip_array(depth + 1)?;
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf_writer::{llama_header, Writer};
    use proptest::prelude::*;

    #[test]
    fn reads_the_metadata_that_matters() {
        let header = read_header(&llama_header().bytes()[..]).unwrap();
        assert_eq!(header.version, 3);
        assert_eq!(header.architecture.as_deref(), Some("llama"));
        assert_eq!(header.name.as_deref(), Some("Tiny"));
        assert_eq!(header.quantization.as_deref(), Some("Q4_K_M"));
        assert_eq!(header.context_length, Some(4096));
        assert_eq!(header.tensor_count, 2);
        assert_eq!(header.parameter_count, Some(64 * 32 + 64));
        assert_eq!(header.split_count, None);
    }

    #[test]
    fn split_metadata_is_read() {
        let bytes = Writer::default()
            .u32("split.count", 3)
            .u32("split.no", 1)
            .bytes();
        let header = read_header(&bytes[..]).unwrap();
        assert_eq!((header.split_count, header.split_index), (Some(3), Some(1)));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            read_header(&b"GGML\x03\0\0\0"[..]),
            Err(GgufError::BadMagic)
        );
        assert_eq!(
            read_header(&b"GGUF\x09\0\0\0"[..]),
            Err(GgufError::UnsupportedVersion(9))
        );
        assert_eq!(read_header(&b"GGUF\x03\0\0"[..]), Err(GgufError::Truncated));
        let bytes = llama_header().bytes();
        assert_eq!(
            read_header(&bytes[..bytes.len() - 3]),
            Err(GgufError::Truncated)
        );
    }

    /// A length of 2^63 must not allocate or loop: it is refused or ends at EOF.
    #[test]
    fn hostile_lengths_are_bounded() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.extend((1u64 << 63).to_le_bytes()); // key length
        assert_eq!(
            read_header(&bytes[..]),
            Err(GgufError::TooLarge("string length"))
        );

        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.push(b'k');
        bytes.extend(9u32.to_le_bytes()); // array
        bytes.extend(8u32.to_le_bytes()); // of strings
        bytes.extend(u64::MAX.to_le_bytes());
        assert_eq!(read_header(&bytes[..]), Err(GgufError::Truncated));

        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        assert_eq!(
            read_header(&bytes[..]),
            Err(GgufError::TooLarge("tensor count"))
        );
    }

    #[test]
    fn file_type_names() {
        assert_eq!(file_type_name(1), "F16");
        assert_eq!(file_type_name(7), "Q8_0");
        assert_eq!(file_type_name(32), "BF16");
        assert_eq!(file_type_name(999), "file_type 999");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = read_header(&bytes[..]);
        }

        /// A valid header with arbitrary bytes spliced in never panics either.
        #[test]
        fn corrupted_headers_never_panic(
            position in 0usize..400,
            noise in proptest::collection::vec(any::<u8>(), 1..16),
        ) {
            let mut bytes = llama_header().bytes();
            let at = position.min(bytes.len());
            for (i, b) in noise.iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + i) {
                    *slot = *b;
                }
            }
            let _ = read_header(&bytes[..]);
        }
    }
}
