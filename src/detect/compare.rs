//! The inner loops of detection: the zero test and the block classifier.

use crate::geometry::ExtentKind;

/// Whether every byte of `bytes` is zero.
///
/// Works on 64-byte chunks that the compiler turns into vector ORs, and
/// stops at the first chunk with a set bit.
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(64);
    for chunk in &mut chunks {
        if chunk.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// What one target block is relative to the base.
///
/// `target` is the block's bytes; `base` is the base's bytes over the same
/// range, shorter (possibly empty) where the base ends inside the block:
/// the missing bytes read as zeros. `None` means unchanged.
pub fn classify(base: &[u8], target: &[u8]) -> Option<ExtentKind> {
    debug_assert!(base.len() <= target.len());
    let (head, tail) = target.split_at(base.len());
    if head == base && is_zero(tail) {
        None
    } else if is_zero(target) {
        Some(ExtentKind::Zero)
    } else {
        Some(ExtentKind::Data)
    }
}

/// The base's bytes over `[offset, offset + len)`, cut at the base's end.
pub fn base_range(base: &[u8], offset: usize, len: usize) -> &[u8] {
    let start = offset.min(base.len());
    let end = offset.saturating_add(len).min(base.len());
    &base[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_test_finds_a_single_set_bit_anywhere() {
        for len in [0usize, 1, 63, 64, 65, 4096, 4097] {
            let mut v = vec![0u8; len];
            assert!(is_zero(&v));
            for i in 0..len {
                v[i] = 1;
                assert!(!is_zero(&v), "len {len} bit at {i}");
                v[i] = 0;
            }
        }
    }

    #[test]
    fn classify_treats_bytes_past_the_base_as_zeros() {
        assert_eq!(classify(b"ab", b"ab\0\0"), None);
        assert_eq!(classify(b"ab", b"ab\0x"), Some(ExtentKind::Data));
        assert_eq!(classify(b"ab", b"\0\0\0\0"), Some(ExtentKind::Zero));
        assert_eq!(classify(b"", b"\0\0"), None);
        assert_eq!(classify(b"\0\0", b"\0\0"), None);
        assert_eq!(base_range(b"abcdef", 4, 4), b"ef");
        assert_eq!(base_range(b"abcdef", 8, 4), b"");
    }
}
