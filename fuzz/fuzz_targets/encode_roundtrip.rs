//! See `checks::encode_roundtrip`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::encode_roundtrip(data));
