//! Change detection: which blocks of the target differ from the base.
//!
//! The target is cut into blocks of one [`BlockSize`]. Each block is
//! unchanged, data or zero (see [`ExtentKind`]); past the shorter image's
//! end, that image reads as zeros. Blocks are classified in parallel, in
//! groups, and the results merge in offset order into a [`ChangeMap`],
//! whose memory grows with the number of extents, not with the images.

mod compare;
pub mod manifest;

pub(crate) use compare::base_range;
pub use compare::{classify, is_zero};
pub use manifest::scan_blocks;

use crate::digest::{chunk_digests, digest_range, Digests, ImageHasher, CHUNK};
use crate::error::Result;
use crate::geometry::{push_merged, BlockSize, Extent, ExtentKind};
use crate::image::Source;
use crate::manifest::ManifestWriter;
use manifest::{BlockHasher, GroupOut};
use rayon::prelude::*;
use serde::Serialize;
use std::cell::RefCell;
use std::io::Write;

/// The sorted, non-overlapping, merged extents of one diff, with both
/// image sizes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChangeMap {
    /// The block size the diff was made with, in bytes.
    #[serde(serialize_with = "serialize_block_size")]
    pub block_size: BlockSize,
    /// The base image's size in bytes (0 without a base).
    pub base_size: u64,
    /// The target image's size in bytes.
    pub target_size: u64,
    /// The changed extents, in increasing offset order; adjacent extents
    /// are never of the same kind.
    pub extents: Vec<Extent>,
}

fn serialize_block_size<S: serde::Serializer>(bs: &BlockSize, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(bs.get())
}

impl ChangeMap {
    /// An empty map for images of the given sizes.
    pub fn new(block_size: BlockSize, base_size: u64, target_size: u64) -> Self {
        ChangeMap {
            block_size,
            base_size,
            target_size,
            extents: Vec::new(),
        }
    }

    /// Appends an extent after the last one, merging it into the last one
    /// when they touch and are of one kind.
    ///
    /// # Panics
    ///
    /// If the extent starts before the end of the last one (a bug in the
    /// caller, never a property of the input).
    pub fn push(&mut self, extent: Extent) {
        if let Some(last) = self.extents.last() {
            assert!(extent.offset >= last.end(), "extents pushed out of order");
        }
        push_merged(&mut self.extents, extent);
    }

    /// Number of extents of `kind`.
    pub fn count(&self, kind: ExtentKind) -> u64 {
        self.extents.iter().filter(|e| e.kind == kind).count() as u64
    }

    /// Total bytes in extents of `kind`.
    pub fn bytes(&self, kind: ExtentKind) -> u64 {
        self.extents
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.length)
            .sum()
    }

    /// Whether the target equals the base (as sizes allow).
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }
}

/// How many bytes of target one parallel task classifies: a multiple of
/// the digest chunk and of every block size.
const GROUP_BYTES: u64 = 4 << 20;
/// How many groups run between two progress reports (256 MiB); each task
/// releases its own group's pages, so memory does not depend on it.
const GROUPS_PER_WINDOW: u64 = 64;

/// Detects the changes from `base` to `target`, in parallel.
///
/// An empty `base` means no base: every non-zero block is data.
pub fn detect(base: &[u8], target: &[u8], block_size: BlockSize) -> ChangeMap {
    detect_with_progress(base, target, block_size, &mut |_| {})
}

/// [`detect`], calling `progress` with the number of target bytes done
/// after each window of work (it only rises, and ends at the target size).
pub fn detect_with_progress(
    base: &[u8],
    target: &[u8],
    block_size: BlockSize,
    progress: &mut dyn FnMut(u64),
) -> ChangeMap {
    let (map, _) = scan(
        &Source::from_bytes(base),
        &Source::from_bytes(target),
        block_size,
        false,
        progress,
    )
    .expect("reading from memory cannot fail");
    map
}

/// [`detect`] on one thread: the reference the parallel path must match.
pub fn detect_serial(base: &[u8], target: &[u8], block_size: BlockSize) -> ChangeMap {
    let (b, t) = (Source::from_bytes(base), Source::from_bytes(target));
    let mut map = ChangeMap::new(block_size, b.len(), t.len());
    for extent in classify_blocks(base, target, 0, &b, &t, block_size) {
        map.push(extent);
    }
    map
}

/// What one parallel task found in its group of blocks.
struct GroupResult {
    extents: Vec<Extent>,
    /// The target's blocks for its manifest, with its chunk hashes (then
    /// not repeated in `target_digests`).
    blocks: Option<GroupOut>,
    target_digests: Vec<[u8; 32]>,
    base_digests: Vec<[u8; 32]>,
}

/// Detects the changes from `base` to `target` (hole-aware: a range that
/// is a hole in both is unchanged without being read) and, with
/// `digests`, computes both image digests in the same pass. Mapped pages
/// are released behind the scan.
pub fn scan(
    base: &Source<'_>,
    target: &Source<'_>,
    block_size: BlockSize,
    digests: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<(ChangeMap, Option<Digests>)> {
    let (map, digests, _) =
        scan_inner::<std::io::Sink>(base, target, block_size, digests, None, progress)?;
    Ok((map, digests))
}

/// [`scan`], also writing the target's block manifest to `out` in the
/// same pass (every block, but not the end record: give the returned
/// target image digest to [`ManifestWriter::finish`]).
pub fn scan_with_manifest<W: Write>(
    base: &Source<'_>,
    target: &Source<'_>,
    block_size: BlockSize,
    digests: bool,
    out: &mut ManifestWriter<W>,
    progress: &mut dyn FnMut(u64),
) -> Result<(ChangeMap, Option<Digests>, [u8; 32])> {
    scan_inner(base, target, block_size, digests, Some(out), progress)
}

fn scan_inner<W: Write>(
    base: &Source<'_>,
    target: &Source<'_>,
    block_size: BlockSize,
    digests: bool,
    mut out: Option<&mut ManifestWriter<W>>,
    progress: &mut dyn FnMut(u64),
) -> Result<(ChangeMap, Option<Digests>, [u8; 32])> {
    let hasher = out.is_some().then(|| BlockHasher::new(block_size));
    let mut map = ChangeMap::new(block_size, base.len(), target.len());
    let bs = block_size.get();
    let group = (GROUP_BYTES / bs).max(1) * bs;
    let groups = target.len().div_ceil(group);
    let mut target_hasher = ImageHasher::new(target.len());
    let mut base_hasher = ImageHasher::new(base.len());
    let mut first = 0;
    while first < groups {
        // Jump over groups that are holes in both images.
        let pos = first * group;
        let next = match (target.next_data(pos), base.next_data(pos)) {
            (None, None) => target.len(),
            (t, b) => t.unwrap_or(u64::MAX).min(b.unwrap_or(u64::MAX)),
        };
        let skip_to = (next / group).min(groups);
        if skip_to > first {
            let end = (skip_to * group).min(target.len());
            if digests || out.is_some() {
                target_hasher.push_holes(target.len(), pos, end);
            }
            if digests {
                base_hasher.push_holes(base.len(), pos, end);
            }
            if let Some(out) = out.as_deref_mut() {
                out.push_zeros((end - pos).div_ceil(bs))?;
            }
            first = skip_to;
            progress(end);
            continue;
        }
        let last = (first + GROUPS_PER_WINDOW).min(groups);
        let parts: Vec<GroupResult> = (first..last)
            .into_par_iter()
            .map(|g| {
                let start = g * group;
                let end = (start + group).min(target.len());
                scan_group(
                    base,
                    target,
                    block_size,
                    start,
                    end,
                    digests,
                    hasher.as_ref(),
                )
            })
            .collect::<Result<_>>()?;
        for part in parts {
            for extent in part.extents {
                map.push(extent);
            }
            if let (Some(out), Some(blocks)) = (out.as_deref_mut(), &part.blocks) {
                for b in &blocks.blocks {
                    out.push(b)?;
                }
                target_hasher.push(&blocks.chunks);
            }
            target_hasher.push(&part.target_digests);
            base_hasher.push(&part.base_digests);
        }
        let done = (last * group).min(target.len());
        first = last;
        progress(done);
    }
    let digests = if digests {
        // The base's chunks past the target's end, when it is longer.
        let from = target.len().div_ceil(CHUNK) * CHUNK;
        digest_range(base, from, &mut base_hasher, &mut |_| {})?;
        Some(Digests {
            base: base_hasher.finish(),
            target: target_hasher.finish(),
        })
    } else {
        None
    };
    Ok((map, digests, target_hasher.finish()))
}

thread_local! {
    /// Each worker's buffers for one group of the target and of the base.
    static BUFFERS: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Reads `[start, end)` of `src` into `buf` and returns the bytes, as
/// zeros without reading where it is a hole. The bytes start on a page
/// boundary inside `buf`: the kernel copies into an aligned buffer several
/// times faster than into one a few bytes off.
fn read_group<'b>(
    src: &Source<'_>,
    buf: &'b mut Vec<u8>,
    start: u64,
    end: u64,
) -> Result<&'b mut [u8]> {
    const PAGE: usize = 4096;
    let end = end.min(src.len());
    let len = end.saturating_sub(start) as usize;
    if buf.len() < len + PAGE {
        buf.resize(len + PAGE, 0);
    }
    let skip = buf.as_ptr().align_offset(PAGE).min(PAGE);
    let bytes = &mut buf[skip..skip + len];
    if len > 0 {
        if src.is_hole(start, end) {
            bytes.fill(0);
        } else {
            src.read_at(bytes, start)?;
        }
    }
    Ok(bytes)
}

/// The chunk hashes of `src` for the chunks that start in `[start, end)`,
/// from `buf` (which holds `src` from `start`) where it covers them.
fn group_digests(src: &Source<'_>, buf: &[u8], start: u64, end: u64) -> Result<Vec<[u8; 32]>> {
    let held = start + buf.len() as u64;
    (start..end.min(src.len()))
        .step_by(CHUNK as usize)
        .map(|c| {
            let e = (c + CHUNK).min(src.len());
            Ok(if e <= held && !src.is_hole(c, e) {
                *blake3::hash(&buf[(c - start) as usize..(e - start) as usize]).as_bytes()
            } else {
                chunk_digests(src, c, c + 1)?[0]
            })
        })
        .collect()
}

/// Detects one group of blocks, `[start, end)` of the target. Both images
/// are read with system calls into this worker's buffers rather than
/// through their mappings: a copy from the page cache into a buffer that
/// stays in the CPU's cache costs less than mapping and releasing the
/// pages, and a file cut short underneath is an error, not a `SIGBUS`.
fn scan_group(
    base: &Source<'_>,
    target: &Source<'_>,
    block_size: BlockSize,
    start: u64,
    end: u64,
    digests: bool,
    hasher: Option<&BlockHasher>,
) -> Result<GroupResult> {
    if target.is_hole(start, end) && base.is_hole(start, end) {
        return Ok(GroupResult {
            extents: Vec::new(),
            blocks: hasher
                .map(|h| h.hole_group(target, start, end))
                .transpose()?,
            target_digests: if digests && hasher.is_none() {
                chunk_digests(target, start, end)?
            } else {
                Vec::new()
            },
            base_digests: if digests {
                chunk_digests(base, start, end)?
            } else {
                Vec::new()
            },
        });
    }
    BUFFERS.with(|cell| {
        let (tbuf, bbuf) = &mut *cell.borrow_mut();
        // Read a digest chunk (or a block, if larger) at a time, so that
        // the bytes are still in the CPU's cache when they are compared.
        let piece = CHUNK.max(block_size.get());
        let mut result = GroupResult {
            extents: Vec::new(),
            blocks: hasher.map(|_| GroupOut::default()),
            target_digests: Vec::new(),
            base_digests: Vec::new(),
        };
        let mut at = start;
        while at < end {
            let piece_end = (at + piece).min(end);
            let t = read_group(target, tbuf, at, piece_end)?;
            let b = read_group(base, bbuf, at, piece_end)?;
            for extent in classify_blocks(b, t, at, base, target, block_size) {
                push_merged(&mut result.extents, extent);
            }
            if let (Some(h), Some(blocks)) = (hasher, &mut result.blocks) {
                h.piece(t, at, true, 0, blocks);
            } else if digests {
                result
                    .target_digests
                    .extend(group_digests(target, t, at, piece_end)?);
            }
            if digests {
                result
                    .base_digests
                    .extend(group_digests(base, b, at, piece_end)?);
            }
            at = piece_end;
        }
        Ok(result)
    })
}

/// Classifies the blocks of one group into merged extents: `target` holds
/// the target's bytes from `start`, `base` the base's (shorter where the
/// base ends). A block that is a hole in both images is unchanged; a hole
/// on one side reads as zeros.
fn classify_blocks(
    base: &[u8],
    target: &[u8],
    start: u64,
    base_src: &Source<'_>,
    target_src: &Source<'_>,
    bs: BlockSize,
) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    let mut local = 0usize;
    while local < target.len() {
        let len = (bs.get() as usize).min(target.len() - local);
        let offset = start + local as u64;
        let old = base_range(base, local, len);
        let new = &target[local..local + len];
        let kind = match (
            target_src.is_hole(offset, offset + len as u64),
            base_src.is_hole(offset, offset + len as u64),
        ) {
            (true, true) => None,
            (true, false) => (!is_zero(old)).then_some(ExtentKind::Zero),
            (false, true) => (!is_zero(new)).then_some(ExtentKind::Data),
            (false, false) => classify(old, new),
        };
        if let Some(kind) = kind {
            push_merged(
                &mut out,
                Extent {
                    offset,
                    length: len as u64,
                    kind,
                },
            );
        }
        local += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs4k() -> BlockSize {
        BlockSize::new(4096).unwrap()
    }

    fn ext(offset: u64, length: u64, kind: ExtentKind) -> Extent {
        Extent {
            offset,
            length,
            kind,
        }
    }

    #[test]
    fn grown_target_and_short_tail() {
        let base = vec![0x11u8; 65536];
        let mut target = base.clone();
        target.resize(98304 + 100, 0);
        target[81920..86016].fill(0x22);
        target[12288..16384].fill(0x33);
        target[98304 + 99] = 1;
        let map = detect(&base, &target, bs4k());
        assert_eq!(
            map.extents,
            vec![
                ext(12288, 4096, ExtentKind::Data),
                ext(81920, 4096, ExtentKind::Data),
                ext(98304, 100, ExtentKind::Data),
            ]
        );
        assert_eq!(map, detect_serial(&base, &target, bs4k()));
    }

    #[test]
    fn groups_merge_across_boundaries() {
        // A data run that spans several parallel groups comes out whole.
        let base = vec![0u8; 40 << 20];
        let target = vec![7u8; 40 << 20];
        let map = detect(&base, &target, bs4k());
        assert_eq!(map.extents, vec![ext(0, 40 << 20, ExtentKind::Data)]);
        let zeroed = detect(&target, &base, bs4k());
        assert_eq!(zeroed.extents, vec![ext(0, 40 << 20, ExtentKind::Zero)]);
    }

    #[test]
    fn progress_rises_to_the_target_size() {
        let target = vec![1u8; 20 << 20];
        let mut seen = Vec::new();
        detect_with_progress(&[], &target, bs4k(), &mut |d| seen.push(d));
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(seen.last(), Some(&(20u64 << 20)));
    }
}
