//! Provider answers (HTTP/1.1 head and body): any bytes, delivered in pieces of any size, never
//! panic, and how the bytes are split never changes the status, the body or the refusal.
#![no_main]
use cortex_upstream::fuzzing::read_answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let step = data.first().map_or(1, |b| usize::from(*b % 16) + 1);
    let whole = read_answer(data, data.len());
    assert_eq!(whole, read_answer(data, 1));
    assert_eq!(whole, read_answer(data, step));
});
