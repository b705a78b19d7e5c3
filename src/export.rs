//! The export pipeline: open, detect, stream into a sink, finish.

use crate::detect::{base_range, detect_with_progress, ChangeMap};
use crate::error::Result;
use crate::geometry::{BlockSize, ExtentKind};
use crate::image::Image;
use crate::sink::{DataExtent, ExportHeader, Sink, ZeroExtent};
use serde::Serialize;
use std::time::Instant;

/// How to run an export.
#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    /// The block size of change detection.
    pub block_size: BlockSize,
    /// Whether to compute BLAKE3 digests of the whole base and target for
    /// the header (costs one more pass over both images, in parallel).
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
    /// Hashing whole images; `done` and `total` count bytes of both.
    Digest,
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

/// BLAKE3 digests of both whole images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digests {
    /// Digest of the base (of no bytes, without a base).
    pub base: [u8; 32],
    /// Digest of the target.
    pub target: [u8; 32],
}

impl Digests {
    /// Hashes both images, each in parallel.
    pub fn compute(base: &[u8], target: &[u8]) -> Self {
        Digests {
            base: digest(base),
            target: digest(target),
        }
    }
}

/// The BLAKE3 digest of `bytes`, computed in parallel.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update_rayon(bytes);
    *hasher.finalize().as_bytes()
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
    let base = base.map(Image::bytes).unwrap_or(&[]);
    let target = target.bytes();
    let total = target.len() as u64;
    let map = detect_with_progress(base, target, options.block_size, &mut |done| {
        progress(Progress {
            phase: Phase::Detect,
            done,
            total,
        })
    });
    let digests = options.digests.then(|| {
        let total = (base.len() + target.len()) as u64;
        let base_digest = digest(base);
        progress(Progress {
            phase: Phase::Digest,
            done: base.len() as u64,
            total,
        });
        let target_digest = digest(target);
        progress(Progress {
            phase: Phase::Digest,
            done: total,
            total,
        });
        Digests {
            base: base_digest,
            target: target_digest,
        }
    });
    let mut summary = stream(&map, base, target, digests.as_ref(), sink, progress)?;
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
    let mut summary = stream(map, base, target, digests, sink, &mut |_| {})?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The header a sink receives for `map` over `target`.
pub fn header_for<'a>(
    map: &'a ChangeMap,
    base: &'a [u8],
    target: &'a [u8],
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

fn stream(
    map: &ChangeMap,
    base: &[u8],
    target: &[u8],
    digests: Option<&Digests>,
    sink: &mut dyn Sink,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExportSummary> {
    assert_eq!(
        map.target_size,
        target.len() as u64,
        "change map of another target"
    );
    let header = header_for(map, base, target, digests);
    let total = header.data_bytes + header.zero_bytes;
    sink.begin(&header)?;
    let mut done = 0;
    for extent in &map.extents {
        let (o, l) = (extent.offset as usize, extent.length as usize);
        let base = base_range(base, o, l);
        match extent.kind {
            ExtentKind::Data => sink.data(&DataExtent {
                offset: extent.offset,
                bytes: &target[o..o + l],
                base,
            })?,
            ExtentKind::Zero => sink.zero(&ZeroExtent {
                offset: extent.offset,
                length: extent.length,
                base,
            })?,
        }
        done += extent.length;
        progress(Progress {
            phase: Phase::Write,
            done,
            total,
        });
    }
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
