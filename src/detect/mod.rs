//! Change detection: which blocks of the target differ from the base.
//!
//! The target is cut into blocks of one [`BlockSize`]. Each block is
//! unchanged, data or zero (see [`ExtentKind`]); past the shorter image's
//! end, that image reads as zeros. Blocks are classified in parallel, in
//! groups, and the results merge in offset order into a [`ChangeMap`],
//! whose memory grows with the number of extents, not with the images.

mod compare;

pub(crate) use compare::base_range;
pub use compare::{classify, is_zero};

use crate::digest::{chunk_digests, digest_range, Digests, ImageHasher, CHUNK};
use crate::geometry::{push_merged, BlockSize, Extent, ExtentKind};
use crate::image::Source;
use rayon::prelude::*;
use serde::Serialize;

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
    );
    map
}

/// [`detect`] on one thread: the reference the parallel path must match.
pub fn detect_serial(base: &[u8], target: &[u8], block_size: BlockSize) -> ChangeMap {
    let (base, target) = (Source::from_bytes(base), Source::from_bytes(target));
    let mut map = ChangeMap::new(block_size, base.len(), target.len());
    for extent in classify_range(&base, &target, block_size, 0, target.len()) {
        map.push(extent);
    }
    map
}

/// What one parallel task found in its group of blocks.
struct GroupResult {
    extents: Vec<Extent>,
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
) -> (ChangeMap, Option<Digests>) {
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
            if digests {
                target_hasher.push_holes(target.len(), pos, end);
                base_hasher.push_holes(base.len(), pos, end);
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
                let result = GroupResult {
                    extents: classify_range(base, target, block_size, start, end),
                    target_digests: if digests {
                        chunk_digests(target, start, end)
                    } else {
                        Vec::new()
                    },
                    base_digests: if digests {
                        chunk_digests(base, start, end)
                    } else {
                        Vec::new()
                    },
                };
                // Each task releases what it read, so that no more than the
                // groups in flight are mapped at once.
                target.release(start, end);
                base.release(start, end);
                result
            })
            .collect();
        for part in parts {
            for extent in part.extents {
                map.push(extent);
            }
            target_hasher.push(&part.target_digests);
            base_hasher.push(&part.base_digests);
        }
        let done = (last * group).min(target.len());
        first = last;
        progress(done);
    }
    let digests = digests.then(|| {
        // The base's chunks past the target's end, when it is longer.
        let from = target.len().div_ceil(CHUNK) * CHUNK;
        digest_range(base, from, &mut base_hasher, &mut |_| {});
        Digests {
            base: base_hasher.finish(),
            target: target_hasher.finish(),
        }
    });
    (map, digests)
}

/// Classifies the blocks in `[start, end)` of the target (`start` on a
/// block boundary) into merged extents. A block that is a hole in both
/// images is unchanged unread; a hole on one side reads as zeros.
fn classify_range(
    base: &Source<'_>,
    target: &Source<'_>,
    bs: BlockSize,
    start: u64,
    end: u64,
) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    if target.is_hole(start, end) && base.is_hole(start, end) {
        return out;
    }
    let mut offset = start;
    while offset < end {
        let len = bs.get().min(end - offset);
        let (o, l) = (offset as usize, len as usize);
        let old = base_range(base.bytes, o, l);
        let kind = match (
            target.is_hole(offset, offset + len),
            base.is_hole(offset, offset + len),
        ) {
            (true, true) => None,
            (true, false) => (!is_zero(old)).then_some(ExtentKind::Zero),
            (false, true) => (!is_zero(&target.bytes[o..o + l])).then_some(ExtentKind::Data),
            (false, false) => classify(old, &target.bytes[o..o + l]),
        };
        if let Some(kind) = kind {
            push_merged(
                &mut out,
                Extent {
                    offset,
                    length: len,
                    kind,
                },
            );
        }
        offset += len;
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
