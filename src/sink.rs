//! The [`Sink`] trait: the one interface through which a diff reaches an
//! encoder, or a library user's own code.
//!
//! The export pipeline calls a sink in a fixed order:
//!
//! 1. [`Sink::begin`] once, with an [`ExportHeader`] whose totals are
//!    exact (detection is complete before streaming starts);
//! 2. [`Sink::data`] and [`Sink::zero`] for the extents, in increasing
//!    offset order, never overlapping. A zero extent comes in one call; a
//!    data extent longer than [`crate::export::PIECE`] (8 MiB) comes as
//!    consecutive pieces of at most that size, each starting on a block
//!    boundary, so that memory stays flat however long it is. The header's
//!    counts count whole extents;
//! 3. [`Sink::finish`] once, after the last extent.
//!
//! When a call returns an error the pipeline stops at once and does not
//! call `finish`.

use crate::error::Result;
use crate::geometry::{BlockSize, Extent};
use crate::image::Source;
use std::fmt;

/// What a sink learns before the first extent: the totals, and the whole
/// change map with the target's bytes for encoders that lay out their
/// output before writing it (qcow2 writes its tables first).
#[derive(Clone, Copy)]
pub struct ExportHeader<'a> {
    /// The block size of the diff.
    pub block_size: BlockSize,
    /// The base image's size in bytes (0 without a base).
    pub base_size: u64,
    /// The target image's size in bytes.
    pub target_size: u64,
    /// Number of data extents that will follow.
    pub data_extents: u64,
    /// Number of zero extents that will follow.
    pub zero_extents: u64,
    /// Total bytes of the data extents.
    pub data_bytes: u64,
    /// Total bytes of the zero extents.
    pub zero_bytes: u64,
    /// BLAKE3 digest of the whole base, when the pipeline computed it.
    pub base_digest: Option<[u8; 32]>,
    /// BLAKE3 digest of the whole target, when the pipeline computed it.
    pub target_digest: Option<[u8; 32]>,
    /// Every extent that will follow, in the order it will come.
    pub extents: &'a [Extent],
    /// The whole target image, borrowed from its mapping (with its holes,
    /// and a way to release pages after reading them).
    pub target: &'a Source<'a>,
    /// The whole base image (empty without a base, and in an export made
    /// from a block manifest of the base, whose extents carry the base's
    /// checksums instead).
    pub base: &'a Source<'a>,
}

impl fmt::Debug for ExportHeader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportHeader")
            .field("block_size", &self.block_size)
            .field("base_size", &self.base_size)
            .field("target_size", &self.target_size)
            .field("data_extents", &self.data_extents)
            .field("zero_extents", &self.zero_extents)
            .field("data_bytes", &self.data_bytes)
            .field("zero_bytes", &self.zero_bytes)
            .field("base_digest", &self.base_digest.is_some())
            .field("target_digest", &self.target_digest.is_some())
            .field("extents", &self.extents.len())
            .finish()
    }
}

/// A data extent: the target's bytes over a changed range.
#[derive(Clone, Copy, Debug)]
pub struct DataExtent<'a> {
    /// Where the range starts in the target.
    pub offset: u64,
    /// The target's bytes, borrowed from the mapped image.
    pub bytes: &'a [u8],
    /// The base's bytes over the same range, shorter (or empty) where the
    /// base ends inside it; the missing bytes read as zeros. Empty in an
    /// export made from a block manifest: see `base_crc`.
    pub base: &'a [u8],
    /// In an export made from a block manifest of the base, which has no
    /// base bytes: the base's checksums. `None` when `base` holds the bytes.
    pub base_crc: Option<&'a dyn BaseChecksums>,
}

/// A zero extent: a changed range that reads as zeros in the target.
#[derive(Clone, Copy, Debug)]
pub struct ZeroExtent {
    /// Where the range starts in the target.
    pub offset: u64,
    /// Its length in bytes.
    pub length: u64,
    /// CRC-32C of the base's bytes over the same range, zeros past the
    /// base's end. A zero extent can be as long as the disk, so the base's
    /// bytes are not handed over, only their checksum.
    pub base_crc: u32,
}

/// The base's checksums in an export made without its bytes, from a block
/// manifest (see [`crate::manifest`]).
pub trait BaseChecksums: Sync {
    /// CRC-32C of the base's bytes over `[offset, offset + length)`, the
    /// bytes past the base's end reading as zeros. The range starts on a
    /// block boundary and ends on one or at the target's end.
    fn crc(&self, offset: u64, length: u64) -> u32;
}

impl fmt::Debug for dyn BaseChecksums + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BaseChecksums")
    }
}

/// What a sink reports when it finishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkSummary {
    /// Bytes the sink wrote to its output (0 for a sink that writes none).
    pub bytes_written: u64,
}

/// Receives one diff as a stream of extents.
///
/// # Example
///
/// A sink that only counts what it is given:
///
/// ```
/// use snapdelta::{detect, export_map, BlockSize, DataExtent, ExportHeader, Result, Sink,
///                 SinkSummary, ZeroExtent};
///
/// #[derive(Default)]
/// struct Counter { data: u64, zero: u64 }
///
/// impl Sink for Counter {
///     fn begin(&mut self, _header: &ExportHeader) -> Result<()> { Ok(()) }
///     fn data(&mut self, extent: &DataExtent<'_>) -> Result<()> {
///         self.data += extent.bytes.len() as u64;
///         Ok(())
///     }
///     fn zero(&mut self, extent: &ZeroExtent) -> Result<()> {
///         self.zero += extent.length;
///         Ok(())
///     }
///     fn finish(&mut self) -> Result<SinkSummary> { Ok(SinkSummary::default()) }
/// }
///
/// let base = vec![1u8; 16384];
/// let mut target = base.clone();
/// target[4096..8192].fill(2);
/// target[12288..].fill(0);
/// let map = detect(&base, &target, BlockSize::new(4096)?);
/// let mut counter = Counter::default();
/// export_map(&map, &base, &target, None, &mut counter)?;
/// assert_eq!((counter.data, counter.zero), (4096, 4096));
/// # Ok::<(), snapdelta::Error>(())
/// ```
pub trait Sink {
    /// Called once, before any extent.
    fn begin(&mut self, header: &ExportHeader) -> Result<()>;
    /// Called for each data extent (or piece of one), in offset order.
    fn data(&mut self, extent: &DataExtent<'_>) -> Result<()>;
    /// Called for each zero extent, in offset order.
    fn zero(&mut self, extent: &ZeroExtent) -> Result<()>;
    /// Called once after the last extent; flushes and reports.
    fn finish(&mut self) -> Result<SinkSummary>;
}
