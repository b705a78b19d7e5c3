//! Block sizes, extents and byte sizes with units.

use crate::error::{Error, Result};
use serde::Serialize;
use std::fmt;

/// The unit of change detection: a power of two from 4 KiB to 2 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockSize(u32);

impl BlockSize {
    /// The smallest block size, 4 KiB.
    pub const MIN: u32 = 4096;
    /// The largest block size, 2 MiB.
    pub const MAX: u32 = 2 * 1024 * 1024;
    /// The default block size, 64 KiB.
    pub const DEFAULT: BlockSize = BlockSize(64 * 1024);

    /// A block size of `bytes`, which must be a power of two from
    /// [`BlockSize::MIN`] to [`BlockSize::MAX`].
    pub fn new(bytes: u64) -> Result<Self> {
        if !bytes.is_power_of_two() || bytes < Self::MIN as u64 || bytes > Self::MAX as u64 {
            return Err(Error::invalid(
                "block size",
                format!("{bytes} is not a power of two from 4 KiB to 2 MiB"),
            ));
        }
        Ok(BlockSize(bytes as u32))
    }

    /// The size in bytes.
    pub fn get(self) -> u64 {
        u64::from(self.0)
    }

    /// The number of blocks that cover `size` bytes (the last may be short).
    pub fn blocks_in(self, size: u64) -> u64 {
        size.div_ceil(self.get())
    }
}

impl Default for BlockSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.get()))
    }
}

/// What a changed range of the target holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtentKind {
    /// The target's bytes differ from the base and are not all zero.
    Data,
    /// The target's bytes differ from the base and are all zero.
    Zero,
}

impl fmt::Display for ExtentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExtentKind::Data => "data",
            ExtentKind::Zero => "zero",
        })
    }
}

/// A changed byte range of the target.
///
/// Its offset is a multiple of the block size; its length too, except
/// where it ends at the target's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Extent {
    /// First byte of the range.
    pub offset: u64,
    /// Length of the range in bytes, never 0.
    pub length: u64,
    /// Whether the range holds data or reads as zeros.
    pub kind: ExtentKind,
}

impl Extent {
    /// One past the last byte of the range.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Appends `extent` to `extents`, merging it into the last one when they
/// touch and are of one kind.
pub fn push_merged(extents: &mut Vec<Extent>, extent: Extent) {
    match extents.last_mut() {
        Some(last) if last.end() == extent.offset && last.kind == extent.kind => {
            last.length += extent.length
        }
        _ => extents.push(extent),
    }
}

/// Parses a byte size such as `4096`, `64K`, `64KiB`, `1M` or `1GiB`.
///
/// Units are binary (K = 1024) whether or not they carry the `i`; a
/// trailing `B` is optional.
pub fn parse_size(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    let bad = || {
        Error::invalid(
            "size",
            format!("'{text}' is not a size like 4096, 64K or 1GiB"),
        )
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    number.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Formats a byte count with a binary unit, exact where it can be
/// (`65536` as `64 KiB`, `1000` as `1000 B`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while unit + 1 < UNITS.len() && value >= 1024 && value.is_multiple_of(1024) {
        value /= 1024;
        unit += 1;
    }
    format!("{value} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_size_bounds() {
        assert!(BlockSize::new(4096).is_ok());
        assert!(BlockSize::new(2 << 20).is_ok());
        assert!(BlockSize::new(2048).is_err());
        assert!(BlockSize::new(4 << 20).is_err());
        assert!(BlockSize::new(12288).is_err());
        assert_eq!(BlockSize::new(4096).unwrap().blocks_in(10000), 3);
        assert_eq!(BlockSize::new(4096).unwrap().blocks_in(0), 0);
    }

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2 MiB").unwrap(), 2 << 20);
        assert!(parse_size("").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(format_size(65536), "64 KiB");
        assert_eq!(format_size(1000), "1000 B");
    }
}
