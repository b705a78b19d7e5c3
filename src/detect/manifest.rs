//! The block-hashing pass: one read of an image, its blocks hashed in
//! parallel, for writing its manifest, comparing it with the manifest of a
//! base, or both at once.
//!
//! Each block is tested for zeros; a block that is not all zeros gets its
//! block digest (a BLAKE3 subtree chaining value, see `docs/manifest.md`)
//! and, when a manifest is written, its CRC-32C. The image digest comes
//! from the same digests, merged along BLAKE3's tree into the 1 MiB chunk
//! hashes, so the bytes are hashed once. Runs of holes are skipped as in
//! [`super::scan`].

use super::{read_group, ChangeMap, BUFFERS, GROUPS_PER_WINDOW, GROUP_BYTES};
use crate::detect::is_zero;
use crate::digest::{chunk_digests, ImageHasher, CHUNK};
use crate::error::{Error, Result};
use crate::format::extent_list::crc_append_zeros;
use crate::geometry::{BlockSize, Extent, ExtentKind};
use crate::image::Source;
use crate::manifest::{BlockDigest, BlockEntry, ManifestReader, ManifestWriter, Run};
use crate::sink::BaseChecksums;
use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode,
};
use rayon::prelude::*;
use std::io::{Read, Write};

type Cv = [u8; 32];

/// What [`scan_blocks`] found.
pub struct BlockScan {
    /// The changes from the manifest's image to the scanned one (empty
    /// without a manifest to compare with).
    pub map: ChangeMap,
    /// The scanned image's image digest.
    pub digest: [u8; 32],
    /// The base's CRC-32C of every changed block the base does not hold as
    /// zeros, for the checksums of the export's records.
    pub base_crcs: BaseCrcs,
}

/// The CRC-32C of the base's bytes over the changed ranges of an export
/// made from a manifest: kept for the changed blocks that are not zero in
/// the base, computed by combination for any range of whole blocks.
///
/// Its memory grows with the changes: 16 bytes per changed block (4 MiB
/// for 1 GiB changed in 4 KiB blocks, 4 GiB for 1 TiB).
pub struct BaseCrcs {
    block_size: u64,
    base_size: u64,
    entries: Vec<(u64, u32)>,
}

impl BaseChecksums for BaseCrcs {
    fn crc(&self, offset: u64, length: u64) -> u32 {
        let bs = self.block_size;
        let end = offset + length;
        let first = offset / bs;
        let lo = self.entries.partition_point(|&(i, _)| i < first);
        let mut crc = 0u32;
        let mut pos = offset;
        for &(i, c) in self.entries[lo..].iter() {
            let start = i * bs;
            if start >= end {
                break;
            }
            let len = (start + bs).min(self.base_size) - start;
            debug_assert!(
                start >= pos && start + len <= end,
                "range cuts a base block"
            );
            crc = crc_append_zeros(crc, start - pos);
            crc = crc32c::crc32c_combine(crc, c, len as usize);
            pos = start + len;
        }
        crc_append_zeros(crc, end - pos)
    }
}

/// Block digests for one block size, with the digests of zero blocks
/// worked out once.
pub(super) struct BlockHasher {
    bs: u64,
    /// For blocks below 1 MiB: the chaining value of a whole zero block at
    /// each position of a chunk.
    zero_cvs: Vec<Cv>,
    zero_chunk: [u8; 32],
}

impl BlockHasher {
    pub(super) fn new(block_size: BlockSize) -> Self {
        let bs = block_size.get();
        let zeros = vec![0u8; bs.min(CHUNK) as usize];
        let zero_cvs = if bs < CHUNK {
            (0..CHUNK / bs).map(|k| cv_at(&zeros, k * bs)).collect()
        } else {
            Vec::new()
        };
        BlockHasher {
            bs,
            zero_cvs,
            zero_chunk: *blake3::hash(&vec![0u8; CHUNK as usize]).as_bytes(),
        }
    }

    /// The digest of a block (or a block's first bytes) starting `pos`
    /// bytes into its chunk (below 1 MiB) or block.
    fn digest(&self, bytes: &[u8], pos: u64) -> [u8; 32] {
        if self.bs < CHUNK {
            cv_at(bytes, pos)
        } else {
            let mut h = blake3::Hasher::new();
            for c in bytes.chunks(CHUNK as usize) {
                h.update(blake3::hash(c).as_bytes());
            }
            *h.finalize().as_bytes()
        }
    }

    /// The blocks and chunk hashes of `[start, end)` of `src`, a hole.
    pub(super) fn hole_group(&self, src: &Source<'_>, start: u64, end: u64) -> Result<GroupOut> {
        Ok(GroupOut {
            blocks: vec![BlockEntry::Zero; (end.min(src.len()) - start).div_ceil(self.bs) as usize],
            chunks: chunk_digests(src, start, end)?,
            boundary: None,
        })
    }

    fn zero_chunk_hash(&self, len: usize) -> [u8; 32] {
        if len as u64 == CHUNK {
            self.zero_chunk
        } else {
            *blake3::hash(&vec![0u8; len]).as_bytes()
        }
    }

    /// Hashes one piece read from the image: a chunk when blocks are
    /// smaller, else one block. `at` is where the piece starts.
    pub(super) fn piece(
        &self,
        bytes: &[u8],
        at: u64,
        want_crc: bool,
        base_size: u64,
        out: &mut GroupOut,
    ) {
        let bs = self.bs as usize;
        let boundary = |out: &mut GroupOut, b: &[u8], off: u64, pos: u64| {
            if off < base_size && base_size < off + b.len() as u64 {
                let cut = (base_size - off) as usize;
                out.boundary = Some((
                    off / self.bs,
                    self.digest(&b[..cut], pos),
                    is_zero(&b[cut..]),
                ));
            }
        };
        if self.bs < CHUNK {
            let mut cvs: Vec<Option<Cv>> = Vec::with_capacity(bytes.len().div_ceil(bs));
            for (k, b) in bytes.chunks(bs).enumerate() {
                let pos = (k * bs) as u64;
                if is_zero(b) {
                    out.blocks.push(BlockEntry::Zero);
                    cvs.push(None);
                } else {
                    let cv = cv_at(b, pos);
                    let crc = if want_crc { crc32c::crc32c(b) } else { 0 };
                    out.blocks
                        .push(BlockEntry::Data(BlockDigest { digest: cv, crc }));
                    cvs.push(Some(cv));
                    boundary(out, b, at + pos, pos);
                }
            }
            let hash = if cvs.iter().all(Option::is_none) {
                self.zero_chunk_hash(bytes.len())
            } else if bytes.len() <= bs {
                *blake3::hash(bytes).as_bytes()
            } else {
                let cvs: Vec<Cv> = cvs
                    .iter()
                    .enumerate()
                    .map(|(k, cv)| match cv {
                        Some(cv) => *cv,
                        None => {
                            let len = bs.min(bytes.len() - k * bs);
                            if len == bs {
                                self.zero_cvs[k]
                            } else {
                                cv_at(&vec![0u8; len], (k * bs) as u64)
                            }
                        }
                    })
                    .collect();
                root(&cvs, bytes.len() as u64, self.bs)
            };
            out.chunks.push(hash);
        } else if is_zero(bytes) {
            out.blocks.push(BlockEntry::Zero);
            for c in bytes.chunks(CHUNK as usize) {
                out.chunks.push(self.zero_chunk_hash(c.len()));
            }
        } else {
            let mut h = blake3::Hasher::new();
            for c in bytes.chunks(CHUNK as usize) {
                let hash = *blake3::hash(c).as_bytes();
                h.update(&hash);
                out.chunks.push(hash);
            }
            let crc = if want_crc { crc32c::crc32c(bytes) } else { 0 };
            out.blocks.push(BlockEntry::Data(BlockDigest {
                digest: *h.finalize().as_bytes(),
                crc,
            }));
            boundary(out, bytes, at, 0);
        }
    }
}

/// The BLAKE3 chaining value of `bytes` as the subtree starting `pos`
/// bytes into its tree.
fn cv_at(bytes: &[u8], pos: u64) -> Cv {
    let mut h = blake3::Hasher::new();
    if pos > 0 {
        h.set_input_offset(pos);
    }
    h.update(bytes);
    h.finalize_non_root()
}

/// The chaining value of the subtree of `len` bytes made of the blocks
/// whose chaining values are `cvs`.
fn merge(cvs: &[Cv], len: u64, bs: u64) -> Cv {
    if len <= bs {
        return cvs[0];
    }
    let left = left_subtree_len(len);
    let k = (left / bs) as usize;
    merge_subtrees_non_root(
        &merge(&cvs[..k], left, bs),
        &merge(&cvs[k..], len - left, bs),
        Mode::Hash,
    )
}

/// The BLAKE3 hash of a chunk of `len` bytes (more than one block) from
/// the chaining values of its blocks.
fn root(cvs: &[Cv], len: u64, bs: u64) -> [u8; 32] {
    let left = left_subtree_len(len);
    let k = (left / bs) as usize;
    *merge_subtrees_root(
        &merge(&cvs[..k], left, bs),
        &merge(&cvs[k..], len - left, bs),
        Mode::Hash,
    )
    .as_bytes()
}

/// What one parallel task found in its group of blocks.
#[derive(Default)]
pub(super) struct GroupOut {
    pub(super) blocks: Vec<BlockEntry>,
    pub(super) chunks: Vec<[u8; 32]>,
    /// The block that holds the base's end inside it: its index, the digest
    /// of its bytes up to the base's end, and whether the rest is zeros.
    boundary: Option<(u64, Cv, bool)>,
}

fn hash_group(
    src: &Source<'_>,
    hasher: &BlockHasher,
    start: u64,
    end: u64,
    want_crc: bool,
    base_size: u64,
) -> Result<GroupOut> {
    let bs = hasher.bs;
    if src.is_hole(start, end) {
        return hasher.hole_group(src, start, end);
    }
    BUFFERS.with(|cell| {
        let (buf, _) = &mut *cell.borrow_mut();
        let piece = CHUNK.max(bs);
        let mut out = GroupOut::default();
        let mut at = start;
        while at < end {
            let piece_end = (at + piece).min(end);
            let bytes = read_group(src, buf, at, piece_end)?;
            hasher.piece(bytes, at, want_crc, base_size, &mut out);
            at = piece_end;
        }
        Ok(out)
    })
}

/// Compares blocks of the scanned image with the next blocks of the
/// manifest, pushing the changes to `map` and the base's checksums of the
/// changed blocks to `crcs`.
struct Comparer {
    bs: u64,
    base_size: u64,
    target_size: u64,
}

impl Comparer {
    /// `first` is the index of the first block; `blocks` the scanned
    /// blocks, or `None` for `n` zero blocks.
    #[allow(clippy::too_many_arguments)]
    fn compare<R: Read>(
        &self,
        base: &mut ManifestReader<R>,
        first: u64,
        n: u64,
        blocks: Option<&[BlockEntry]>,
        boundary: Option<(u64, Cv, bool)>,
        map: &mut ChangeMap,
        crcs: &mut BaseCrcs,
    ) -> Result<()> {
        let mut i = first;
        while i < first + n {
            match base.next_run(first + n - i)? {
                Run::Zero(k) => {
                    if let Some(blocks) = blocks {
                        for j in i..i + k {
                            if blocks[(j - first) as usize] != BlockEntry::Zero {
                                map.push(self.extent(j, ExtentKind::Data));
                            }
                        }
                    }
                    i += k;
                }
                Run::Data(ds) => {
                    for d in ds {
                        let t = blocks.map_or(BlockEntry::Zero, |b| b[(i - first) as usize]);
                        if let Some(kind) = self.classify(i, &t, d, boundary)? {
                            map.push(self.extent(i, kind));
                            crcs.entries.push((i, d.crc));
                        }
                        i += 1;
                    }
                }
            }
        }
        Ok(())
    }

    fn extent(&self, i: u64, kind: ExtentKind) -> Extent {
        let offset = i * self.bs;
        Extent {
            offset,
            length: (offset + self.bs).min(self.target_size) - offset,
            kind,
        }
    }

    /// Block `i` where the base holds a non-zero block `d`.
    fn classify(
        &self,
        i: u64,
        t: &BlockEntry,
        d: &BlockDigest,
        boundary: Option<(u64, Cv, bool)>,
    ) -> Result<Option<ExtentKind>> {
        let o = i * self.bs;
        let target_end = (o + self.bs).min(self.target_size);
        let base_end = (o + self.bs).min(self.base_size);
        if target_end < base_end {
            return Err(Error::Unsupported(format!(
                "the target ends at byte {} inside the block at {o}, which the base fills further \
                 with bytes that are not all zeros; a manifest cannot tell whether the part the \
                 target keeps changed: export from the base image, or with a block size that \
                 divides the target's size",
                self.target_size
            )));
        }
        Ok(match t {
            BlockEntry::Zero => Some(ExtentKind::Zero),
            BlockEntry::Data(td) => {
                let same = if target_end > base_end {
                    match boundary {
                        Some((b, digest, rest_zero)) if b == i => rest_zero && digest == d.digest,
                        _ => false,
                    }
                } else {
                    td.digest == d.digest
                };
                (!same).then_some(ExtentKind::Data)
            }
        })
    }
}

/// Reads `src` once, hashing its blocks in parallel: compares them with
/// the manifest `base` (read up to `src`'s block count; the caller reads
/// the rest), writes them to `out` (without its end record), and returns
/// the change map and the image digest.
pub fn scan_blocks<R: Read, W: Write>(
    src: &Source<'_>,
    block_size: BlockSize,
    mut base: Option<&mut ManifestReader<R>>,
    mut out: Option<&mut ManifestWriter<W>>,
    progress: &mut dyn FnMut(u64),
) -> Result<BlockScan> {
    let bs = block_size.get();
    let base_size = base.as_ref().map_or(0, |b| b.header().image_size);
    let mut map = ChangeMap::new(block_size, base_size, src.len());
    let mut crcs = BaseCrcs {
        block_size: bs,
        base_size,
        entries: Vec::new(),
    };
    let cmp = Comparer {
        bs,
        base_size,
        target_size: src.len(),
    };
    let hasher = BlockHasher::new(block_size);
    let mut image = ImageHasher::new(src.len());
    let want_crc = out.is_some();
    let group = (GROUP_BYTES / bs).max(1) * bs;
    let groups = src.len().div_ceil(group);
    let mut first = 0;
    while first < groups {
        let pos = first * group;
        let skip_to = (src.next_data(pos).unwrap_or(src.len()) / group).min(groups);
        if skip_to > first {
            let end = (skip_to * group).min(src.len());
            let n = (end - pos).div_ceil(bs);
            image.push_holes(src.len(), pos, end);
            if let Some(out) = out.as_deref_mut() {
                out.push_zeros(n)?;
            }
            if let Some(base) = base.as_deref_mut() {
                cmp.compare(base, pos / bs, n, None, None, &mut map, &mut crcs)?;
            }
            first = skip_to;
            progress(end);
            continue;
        }
        let last = (first + GROUPS_PER_WINDOW).min(groups);
        let parts: Vec<GroupOut> = (first..last)
            .into_par_iter()
            .map(|g| {
                let start = g * group;
                let end = (start + group).min(src.len());
                hash_group(src, &hasher, start, end, want_crc, base_size)
            })
            .collect::<Result<_>>()?;
        for (g, part) in (first..last).zip(parts) {
            let n = part.blocks.len() as u64;
            if let Some(base) = base.as_deref_mut() {
                let at = g * group / bs;
                cmp.compare(
                    base,
                    at,
                    n,
                    Some(&part.blocks),
                    part.boundary,
                    &mut map,
                    &mut crcs,
                )?;
            }
            if let Some(out) = out.as_deref_mut() {
                for b in &part.blocks {
                    out.push(b)?;
                }
            }
            image.push(&part.chunks);
        }
        let done = (last * group).min(src.len());
        src.release(first * group, done);
        first = last;
        progress(done);
    }
    Ok(BlockScan {
        map,
        digest: image.finish(),
        base_crcs: crcs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::image_digest;

    #[test]
    fn image_digest_from_block_digests_matches_the_direct_one() {
        for bs in [4096u64, 8192, 65536, 512 << 10, 1 << 20, 2 << 20] {
            for size in [
                0u64,
                100,
                4096,
                5000,
                CHUNK,
                CHUNK + 4096 + 3,
                3 * CHUNK + 70000,
            ] {
                let mut bytes: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
                if size > 9000 {
                    bytes[4096..8192].fill(0);
                }
                let src = Source::from_bytes(&bytes);
                let scan = scan_blocks::<std::io::Empty, std::io::Sink>(
                    &src,
                    BlockSize::new(bs).unwrap(),
                    None,
                    None,
                    &mut |_| {},
                )
                .unwrap();
                assert_eq!(
                    scan.digest,
                    image_digest(&src, &mut |_| {}).unwrap(),
                    "{bs} {size}"
                );
            }
        }
    }

    #[test]
    fn combined_crcs_match_the_bytes() {
        let bs = 4096u64;
        let base: Vec<u8> = (0..(10 * bs + 300)).map(|i| (i % 249) as u8 + 1).collect();
        let entries = (0..11u64)
            .filter(|i| i % 3 != 1)
            .map(|i| {
                let s = (i * bs) as usize;
                let e = (s + bs as usize).min(base.len());
                (i, crc32c::crc32c(&base[s..e]))
            })
            .collect();
        let crcs = BaseCrcs {
            block_size: bs,
            base_size: base.len() as u64,
            entries,
        };
        let mut view = base.clone();
        for i in (0..11).filter(|i| i % 3 == 1) {
            let s = i * bs as usize;
            view[s..(s + bs as usize).min(base.len())].fill(0);
        }
        view.resize(14 * bs as usize, 0);
        for (o, l) in [
            (0, bs),
            (0, 11 * bs),
            (bs, 3 * bs),
            (9 * bs, 5 * bs),
            (12 * bs, bs),
        ] {
            let want = crc32c::crc32c(&view[o as usize..(o + l) as usize]);
            assert_eq!(crcs.crc(o, l), want, "{o} {l}");
        }
    }
}
