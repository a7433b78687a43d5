//! Config parsing: any `cortex.toml` text is either refused with a ConfigError or resolved;
//! never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(file) = cortex_config::FileConfig::parse(text) {
            let _ = cortex_config::Config::resolve(file, None, &|_| None);
        }
    }
});
