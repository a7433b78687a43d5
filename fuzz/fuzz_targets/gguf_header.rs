//! GGUF headers from an operator's models directory: any bytes are read or refused, never a
//! panic, never an allocation sized by a length in the file (libFuzzer's RSS limit catches
//! one), and a header that reads has its split index below its split count.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = cortex_engines::gguf::read_header(data) {
        assert!(header.version >= 1 && header.version <= 3);
        if let Some(name) = &header.name {
            assert!(name.len() <= 4 * cortex_engines::gguf::MAX_KEPT_STRING_BYTES as usize);
        }
    }
});
