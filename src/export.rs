//! The export pipeline: open, detect, stream into a sink, finish.

use crate::detect::{scan, ChangeMap};
use crate::digest::Digests;
use crate::error::Result;
use crate::geometry::{BlockSize, ExtentKind};
use crate::image::{Image, Source};
use crate::sink::{BaseChecksums, DataExtent, ExportHeader, Sink, ZeroExtent};
use serde::Serialize;
use std::time::Instant;

/// The most bytes of a data extent one [`Sink::data`] call carries: a
/// multiple of every block size and of every record size.
pub const PIECE: u64 = 8 << 20;

/// How to run an export.
#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    /// The block size of change detection.
    pub block_size: BlockSize,
    /// Whether to compute the image digests of the base and the target
    /// (see [`crate::digest`]) for the header, in the same pass as the
    /// comparison; it costs hashing every stored byte of both images.
    pub digests: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            block_size: BlockSize::DEFAULT,
            digests: true,
        }
    }
}

/// The stage an export is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Comparing blocks; `done` and `total` count target bytes.
    Detect,
    /// Writing extents to the sink; `done` and `total` count changed bytes.
    Write,
}

/// A progress report. Within one phase `done` only rises; phases come in
/// the order of [`Phase`], and a phase may be skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The current stage.
    pub phase: Phase,
    /// Work done in this stage.
    pub done: u64,
    /// Work in this stage in all.
    pub total: u64,
}

/// What an export did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExportSummary {
    /// Block size in bytes.
    pub block_size: u64,
    /// The base image's size in bytes (0 without a base).
    pub base_size: u64,
    /// The target image's size in bytes.
    pub target_size: u64,
    /// Number of data extents.
    pub data_extents: u64,
    /// Number of zero extents.
    pub zero_extents: u64,
    /// Bytes in data extents.
    pub data_bytes: u64,
    /// Bytes in zero extents.
    pub zero_bytes: u64,
    /// Bytes the sink wrote.
    pub bytes_written: u64,
    /// Wall time of the whole export, in seconds.
    pub seconds: f64,
}

/// Exports the changes from `base` (none: an empty base) to `target` into
/// `sink`, reporting progress as it goes.
pub fn export_images(
    base: Option<&Image>,
    target: &Image,
    sink: &mut dyn Sink,
    options: &ExportOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExportSummary> {
    let started = Instant::now();
    let base = base.map_or_else(|| Source::from_bytes(&[]), Image::source);
    let target = target.source();
    let total = target.len();
    let (map, digests) = scan(
        &base,
        &target,
        options.block_size,
        options.digests,
        &mut |done| {
            progress(Progress {
                phase: Phase::Detect,
                done,
                total,
            })
        },
    )?;
    let mut summary = stream(&map, &base, &target, digests.as_ref(), None, sink, progress)?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Streams an already computed change map into `sink`.
///
/// `map` must have been detected from these `base` and `target` bytes.
pub fn export_map(
    map: &ChangeMap,
    base: &[u8],
    target: &[u8],
    digests: Option<&Digests>,
    sink: &mut dyn Sink,
) -> Result<ExportSummary> {
    let started = Instant::now();
    let (base, target) = (Source::from_bytes(base), Source::from_bytes(target));
    let mut summary = stream(map, &base, &target, digests, None, sink, &mut |_| {})?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The header a sink receives for `map` over `target`.
pub fn header_for<'a>(
    map: &'a ChangeMap,
    base: &'a Source<'a>,
    target: &'a Source<'a>,
    digests: Option<&Digests>,
) -> ExportHeader<'a> {
    ExportHeader {
        block_size: map.block_size,
        base_size: map.base_size,
        target_size: map.target_size,
        data_extents: map.count(ExtentKind::Data),
        zero_extents: map.count(ExtentKind::Zero),
        data_bytes: map.bytes(ExtentKind::Data),
        zero_bytes: map.bytes(ExtentKind::Zero),
        base_digest: digests.map(|d| d.base),
        target_digest: digests.map(|d| d.target),
        extents: &map.extents,
        target,
        base,
    }
}

/// Streams `map` into `sink`; `base_crc` stands for the base's bytes in
/// an export made from a block manifest.
pub(crate) fn stream(
    map: &ChangeMap,
    base: &Source<'_>,
    target: &Source<'_>,
    digests: Option<&Digests>,
    base_crc: Option<&dyn BaseChecksums>,
    sink: &mut dyn Sink,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExportSummary> {
    assert_eq!(
        map.target_size,
        target.len(),
        "change map of another target"
    );
    let header = header_for(map, base, target, digests);
    let total = header.data_bytes + header.zero_bytes;
    sink.begin(&header)?;
    let mut done = 0;
    // Pieces are read with system calls, not through the mapping, so that
    // an image cut short underneath is an error rather than a SIGBUS.
    let (mut new, mut old) = (Vec::new(), Vec::new());
    for extent in &map.extents {
        // Data extents go out in pieces, so that memory stays bounded.
        let step = if extent.kind == ExtentKind::Data {
            PIECE
        } else {
            extent.length
        };
        let mut offset = extent.offset;
        while offset < extent.end() {
            let length = step.min(extent.end() - offset);
            match extent.kind {
                ExtentKind::Data => sink.data(&DataExtent {
                    offset,
                    bytes: target.read_clipped(offset, length, &mut new)?,
                    base: match base_crc {
                        Some(_) => &[],
                        None => base.read_clipped(offset, length, &mut old)?,
                    },
                    base_crc,
                })?,
                ExtentKind::Zero => sink.zero(&ZeroExtent {
                    offset,
                    length,
                    base_crc: match base_crc {
                        Some(b) => b.crc(offset, length),
                        None => base.crc32c(offset, length)?,
                    },
                })?,
            }
            target.release(offset, offset + length);
            base.release(offset, offset + length);
            offset += length;
            done += length;
            progress(Progress {
                phase: Phase::Write,
                done,
                total,
            });
        }
    }
    // Whatever was read, in either pass, is one state of each image only
    // if neither changed since it was opened: otherwise no end record.
    target.check_unchanged()?;
    base.check_unchanged()?;
    let finished = sink.finish()?;
    Ok(ExportSummary {
        block_size: header.block_size.get(),
        base_size: header.base_size,
        target_size: header.target_size,
        data_extents: header.data_extents,
        zero_extents: header.zero_extents,
        data_bytes: header.data_bytes,
        zero_bytes: header.zero_bytes,
        bytes_written: finished.bytes_written,
        seconds: 0.0,
    })
}
