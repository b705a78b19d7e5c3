//! The image digest: what an export records to identify its base and its
//! target, and what apply checks.
//!
//! It is the BLAKE3 hash of the image's size (8 bytes, little-endian)
//! followed by the BLAKE3 hash of each consecutive 1 MiB chunk of the
//! image (the last one may be shorter). Hashing chunk by chunk lets the
//! chunks be hashed in parallel, in the same pass that compares them, and
//! lets a chunk that is a hole take the precomputed hash of zeros instead
//! of being read: a sparse image is hashed in time that follows its stored
//! bytes, not its size.

use crate::error::Result;
use crate::image::Source;
use rayon::prelude::*;
use std::sync::OnceLock;

/// The chunk size of the image digest.
pub const CHUNK: u64 = 1 << 20;

/// How many chunks one parallel window hashes before pages are released
/// and progress is reported.
const WINDOW_CHUNKS: u64 = 256;

/// BLAKE3 digests of a base and a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digests {
    /// Image digest of the base (of no bytes, without a base).
    pub base: [u8; 32],
    /// Image digest of the target.
    pub target: [u8; 32],
}

impl Digests {
    /// Hashes two byte slices (see [`image_digest`]).
    pub fn compute(base: &[u8], target: &[u8]) -> Self {
        let digest = |bytes| {
            image_digest(&Source::from_bytes(bytes), &mut |_| {})
                .expect("a slice in memory reads without error")
        };
        Digests {
            base: digest(base),
            target: digest(target),
        }
    }
}

/// The BLAKE3 hash of one chunk.
fn chunk_digest(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// The hash of a chunk of `len` zero bytes, without reading anything for
/// a whole chunk.
fn zero_chunk_digest(len: u64) -> [u8; 32] {
    static FULL: OnceLock<[u8; 32]> = OnceLock::new();
    if len == CHUNK {
        *FULL.get_or_init(|| chunk_digest(&vec![0u8; CHUNK as usize]))
    } else {
        chunk_digest(&vec![0u8; len as usize])
    }
}

/// The hashes of the chunks that start in `[start, end)` (`start` on a
/// chunk boundary); a chunk runs to the next boundary or the end of `src`.
/// Chunks are read with system calls; holes are not read.
pub(crate) fn chunk_digests(src: &Source<'_>, start: u64, end: u64) -> Result<Vec<[u8; 32]>> {
    let len = src.len();
    let mut buf = Vec::new();
    (start..end.min(len))
        .step_by(CHUNK as usize)
        .map(|c| {
            let e = (c + CHUNK).min(len);
            Ok(if src.is_hole(c, e) {
                zero_chunk_digest(e - c)
            } else {
                chunk_digest(src.read_clipped(c, e - c, &mut buf)?)
            })
        })
        .collect()
}

/// Builds an image digest from its chunk hashes, in order.
pub(crate) struct ImageHasher(blake3::Hasher);

impl ImageHasher {
    /// Starts the digest of an image of `size` bytes.
    pub(crate) fn new(size: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(&size.to_le_bytes());
        ImageHasher(h)
    }

    /// Adds the next chunk hashes.
    pub(crate) fn push(&mut self, digests: &[[u8; 32]]) {
        for d in digests {
            self.0.update(d);
        }
    }

    /// Adds the hashes of the chunks of an image of `size` bytes that start
    /// in `[start, end)` (`start` on a chunk boundary) when all of them are
    /// holes, without reading or hashing chunk by chunk.
    pub(crate) fn push_holes(&mut self, size: u64, start: u64, end: u64) {
        let end = end.min(size);
        if start >= end {
            return;
        }
        let last = (end - 1) / CHUNK * CHUNK;
        let full = if last + CHUNK <= size {
            (last - start) / CHUNK + 1
        } else {
            (last - start) / CHUNK
        };
        let mut batch = [0u8; 32 * 1024];
        for d in batch.chunks_exact_mut(32) {
            d.copy_from_slice(&zero_chunk_digest(CHUNK));
        }
        let mut left = full * 32;
        while left > 0 {
            let n = left.min(batch.len() as u64) as usize;
            self.0.update(&batch[..n]);
            left -= n as u64;
        }
        if full * CHUNK < end - start {
            self.0.update(&zero_chunk_digest(size - last));
        }
    }

    /// The image digest.
    pub(crate) fn finish(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

/// The image digest of `src`, hashing chunks in parallel and skipping
/// holes. `progress` gets the bytes done after each window.
pub fn image_digest(src: &Source<'_>, progress: &mut dyn FnMut(u64)) -> Result<[u8; 32]> {
    let mut hasher = ImageHasher::new(src.len());
    digest_range(src, 0, &mut hasher, progress)?;
    Ok(hasher.finish())
}

/// Adds the hashes of the chunks from `start` (a chunk boundary) to the
/// end of `src` to `hasher`, window by window, releasing pages behind.
pub(crate) fn digest_range(
    src: &Source<'_>,
    start: u64,
    hasher: &mut ImageHasher,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let window = WINDOW_CHUNKS * CHUNK;
    let mut at = start;
    while at < src.len() {
        // Jump over whole chunks of holes.
        let skip_to = src.next_data(at).unwrap_or(src.len()) / CHUNK * CHUNK;
        if skip_to > at {
            hasher.push_holes(src.len(), at, skip_to);
            at = skip_to;
            progress(at);
            continue;
        }
        let end = (at + window).min(src.len());
        let parts: Vec<Vec<[u8; 32]>> = (at..end)
            .step_by((CHUNK * 16) as usize)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|s| chunk_digests(src, s, (s + CHUNK * 16).min(end)))
            .collect::<Result<_>>()?;
        for p in &parts {
            hasher.push(p);
        }
        src.release(at, end);
        at = end;
        progress(at);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_the_hash_of_size_and_chunk_hashes() {
        let bytes: Vec<u8> = (0..(2 * CHUNK + 5)).map(|i| (i % 251) as u8).collect();
        let mut outer = blake3::Hasher::new();
        outer.update(&(bytes.len() as u64).to_le_bytes());
        for chunk in bytes.chunks(CHUNK as usize) {
            outer.update(blake3::hash(chunk).as_bytes());
        }
        let got = image_digest(&Source::from_bytes(&bytes), &mut |_| {}).unwrap();
        assert_eq!(got, *outer.finalize().as_bytes());
        assert_ne!(
            got,
            image_digest(&Source::from_bytes(&bytes[1..]), &mut |_| {}).unwrap()
        );
        // The empty image has a digest too.
        let empty = image_digest(&Source::from_bytes(&[]), &mut |_| {}).unwrap();
        assert_eq!(empty, *blake3::hash(&0u64.to_le_bytes()).as_bytes());
    }

    #[test]
    fn hole_runs_hash_like_chunks_of_zeros() {
        for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 77] {
            for (start, end) in [(0, size), (CHUNK, size), (0, 2 * CHUNK), (CHUNK, 3 * CHUNK)] {
                let zeros = vec![0u8; size as usize];
                let mut bulk = ImageHasher::new(size);
                bulk.push_holes(size, start, end);
                let mut each = ImageHasher::new(size);
                each.push(&chunk_digests(&Source::from_bytes(&zeros), start, end).unwrap());
                assert_eq!(bulk.finish(), each.finish(), "{size} {start} {end}");
            }
        }
    }

    #[test]
    fn holes_hash_like_written_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = dir.path().join("sparse");
        let dense = dir.path().join("dense");
        let f = std::fs::File::create(&sparse).unwrap();
        f.set_len(3 * CHUNK + 100).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"x", CHUNK + 7).unwrap();
        let mut d = vec![0u8; (3 * CHUNK + 100) as usize];
        d[(CHUNK + 7) as usize] = b'x';
        std::fs::write(&dense, &d).unwrap();
        let a = crate::Image::open(&sparse).unwrap();
        let b = crate::Image::open(&dense).unwrap();
        assert_eq!(
            image_digest(&a.source(), &mut |_| {}).unwrap(),
            image_digest(&b.source(), &mut |_| {}).unwrap()
        );
    }
}
