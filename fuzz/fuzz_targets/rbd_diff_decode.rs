//! See `checks::rbd_diff_decode`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::rbd_diff_decode(data));
