//! The SSE usage scanner: any bytes, split anywhere, never panic, and the buffered partial line
//! stays bounded; splitting must not change what is found.
#![no_main]
use cortex_wire::SseUsageScanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut whole = SseUsageScanner::new();
    whole.feed(data);
    let split_at = data.first().map(|b| usize::from(*b)).unwrap_or(0).min(data.len());
    let mut split = SseUsageScanner::new();
    let (a, b) = data.split_at(split_at);
    split.feed(a);
    split.feed(b);
    if data.len() < 60_000 {
        assert_eq!(whole.usage(), split.usage());
        assert_eq!(whole.saw_done(), split.saw_done());
    }
});
