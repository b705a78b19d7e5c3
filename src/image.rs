//! A raw image, opened read-only and memory-mapped.
//!
//! This is the only module that maps files. A mapping is only sound while
//! nobody changes the file: see [`Image::open`] for what that means.

use crate::error::{Error, IoContext, Result};
use crate::format::extent_list::crc_with_zeros;
use memmap2::{Advice, Mmap, MmapOptions};
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A raw snapshot image: a regular file or block device, mapped read-only.
#[derive(Debug)]
pub struct Image {
    path: PathBuf,
    file: std::fs::File,
    map: Option<Mmap>,
    size: u64,
    allocation: Allocation,
    /// What `fstat` said at open, to tell later whether the file changed.
    stamp: Stamp,
}

/// The parts of a file's status that any write or truncation changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Which byte ranges of an image are stored; the rest are holes that read
/// as zeros. Found with `SEEK_DATA` and `SEEK_HOLE`; a file system or
/// device that cannot tell reports the whole image as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Sorted, disjoint `[start, end)` ranges of stored bytes.
    ranges: Vec<(u64, u64)>,
}

impl Allocation {
    /// An image of `size` bytes stored in full.
    pub fn full(size: u64) -> Self {
        Allocation {
            ranges: if size == 0 {
                Vec::new()
            } else {
                vec![(0, size)]
            },
        }
    }

    /// The stored ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Bytes stored in all.
    pub fn stored_bytes(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// Whether `[start, end)` holds no stored byte: it reads as zeros
    /// without being read.
    pub fn is_hole(&self, start: u64, end: u64) -> bool {
        // The first range that ends after `start`.
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        self.ranges.get(i).is_none_or(|&(s, _)| s >= end)
    }

    /// The first stored byte at or after `pos`, if any.
    pub fn next_data(&self, pos: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|&(_, e)| e <= pos);
        self.ranges.get(i).map(|&(s, _)| s.max(pos))
    }

    /// Reads the allocation of `file` (of `size` bytes).
    fn of(file: &std::fs::File, size: u64) -> Self {
        use rustix::fs::{seek, SeekFrom as At};
        let mut ranges = Vec::new();
        let mut pos = 0;
        while pos < size {
            let start = match seek(file, At::Data(pos)) {
                Ok(start) => start,
                // ENXIO: no data after `pos`.
                Err(rustix::io::Errno::NXIO) => break,
                // No SEEK_DATA here: treat everything as stored.
                Err(_) => return Allocation::full(size),
            };
            if start >= size {
                break;
            }
            let end = match seek(file, At::Hole(start)) {
                Ok(end) => end.min(size),
                Err(_) => return Allocation::full(size),
            };
            if end <= start {
                return Allocation::full(size);
            }
            ranges.push((start, end));
            pos = end;
        }
        Allocation { ranges }
    }
}

impl Image {
    /// Opens and maps the image at `path`.
    ///
    /// A missing path, a directory, a file of another type or an unreadable
    /// file is an [`Error::Io`] or [`Error::InvalidArgument`] naming the
    /// path. The file is never written.
    ///
    /// Snapshot images are immutable by nature. The engine reads them with
    /// system calls ([`Source::read_at`]), so a file truncated underneath
    /// is an error, not a `SIGBUS`; [`Image::check_unchanged`] tells whether
    /// a regular file was written since it was opened. The mapping behind
    /// [`Image::bytes`] is there for callers that want a slice: reading it
    /// past the end of a file truncated underneath raises `SIGBUS`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        // Non-blocking, so that a FIFO given by mistake is refused below
        // instead of waiting for a writer; reads of files are unaffected.
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .at(path)?;
        let meta = file.metadata().at(path)?;
        let kind = meta.file_type();
        let size = if kind.is_file() {
            meta.len()
        } else if kind.is_block_device() {
            file.seek(SeekFrom::End(0)).at(path)?
        } else {
            let what = if kind.is_dir() {
                "a directory"
            } else {
                "not a regular file or block device"
            };
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("is {what}")),
            ));
        };
        // Reads of a file opened non-blocking take a slow path: clear the
        // flag now that the file is known to be a file or a device.
        let flags = rustix::fs::fcntl_getfl(&file)
            .map_err(std::io::Error::from)
            .at(path)?;
        rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)
            .map_err(std::io::Error::from)
            .at(path)?;
        let allocation = if kind.is_file() {
            Allocation::of(&file, size)
        } else {
            Allocation::full(size)
        };
        let map = if size == 0 {
            None
        } else {
            let len = usize::try_from(size).map_err(|_| {
                Error::Unsupported(format!(
                    "{}: too large to map on this platform",
                    path.display()
                ))
            })?;
            // SAFETY: the map is read-only and private to this `Image`; no
            // code of ours writes the file. Another process changing the
            // file underneath is outside what Rust can rule out for a
            // mapping; `open` documents the consequences (SIGBUS on
            // truncation, mixed states on rewrite).
            let map = unsafe { MmapOptions::new().len(len).map(&file) }.at(path)?;
            // Advice is a hint; a kernel that refuses it changes nothing.
            let _ = map.advise(Advice::Sequential);
            Some(map)
        };
        Ok(Image {
            path: path.to_path_buf(),
            file,
            map,
            size,
            allocation,
            stamp: Stamp {
                size,
                ..Stamp::of(&meta)
            },
        })
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fails if the image was written, truncated or extended since it was
    /// opened: its size, modification time or change time differ. The
    /// change time cannot be set back by a writer, so any write through the
    /// file system shows. A block device's times do not follow writes to
    /// the device, so for a device only a change of size is seen.
    pub fn check_unchanged(&self) -> Result<()> {
        let now = self.file.metadata().at(&self.path)?;
        let now = if now.file_type().is_block_device() {
            let size = (&self.file).seek(SeekFrom::End(0)).at(&self.path)?;
            Stamp { size, ..self.stamp }
        } else {
            Stamp::of(&now)
        };
        if now == self.stamp {
            return Ok(());
        }
        Err(Error::io(
            &self.path,
            std::io::Error::other(
                "the image changed while it was being read (its size or modification time \
                 differs from when it was opened); export again from a snapshot that does not change",
            ),
        ))
    }

    /// The image's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Which ranges are stored and which are holes.
    pub fn allocation(&self) -> &Allocation {
        &self.allocation
    }

    /// The image as a [`Source`] for detection and hashing.
    pub fn source(&self) -> Source<'_> {
        Source {
            bytes: self.bytes(),
            allocation: std::borrow::Cow::Borrowed(&self.allocation),
            image: Some(self),
        }
    }

    /// Lets the kernel drop the mapped pages of `[start, end)` from this
    /// process (they stay in the page cache), so that resident memory does
    /// not grow with the image as a scan moves through it. A hint: errors
    /// are ignored. Slices of the range stay valid and read the file again.
    pub fn release(&self, start: u64, end: u64) {
        let Some(map) = &self.map else {
            return;
        };
        // The page cache maps files in folios of up to 2 MiB, and touching
        // one byte can map the whole folio: release whole aligned 2 MiB
        // spans around the range (releasing more than was used costs only
        // a later fault).
        let span = 2 << 20;
        let start = start / span * span;
        let end = end.div_ceil(span).saturating_mul(span).min(self.size);
        if end <= start {
            return;
        }
        // SAFETY: the mapping is read-only and backed by a file that this
        // process never writes. MADV_DONTNEED on such a mapping only drops
        // the page table entries; the next access faults the same bytes in
        // from the page cache or the file, so every slice handed out stays
        // valid and reads unchanged contents. The range lies inside the
        // mapping and starts on a page boundary.
        let _ = unsafe {
            map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start as usize,
                (end - start) as usize,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.img");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[1u8; 4096], 32 << 20).unwrap();
        drop(f);
        let image = Image::open(&path).unwrap();
        let a = image.allocation();
        assert!(
            a.stored_bytes() >= 4096 && a.stored_bytes() < 64 << 20,
            "{a:?}"
        );
        assert!(a.is_hole(0, 1 << 20));
        assert!(!a.is_hole(32 << 20, (32 << 20) + 1));
        assert!(!a.is_hole(0, 64 << 20));
        let full = Allocation::full(100);
        assert!(!full.is_hole(99, 100));
        assert!(full.is_hole(100, 200));
        assert!(Allocation::full(0).is_hole(0, 10));
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.img");
        let err = Image::open(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.img"), "{err}");
        let err = Image::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("directory"), "{err}");
    }

    #[test]
    fn empty_and_small_files() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.img");
        std::fs::write(&empty, b"").unwrap();
        let image = Image::open(&empty).unwrap();
        assert_eq!(image.size(), 0);
        assert!(image.bytes().is_empty());
        let small = dir.path().join("small.img");
        std::fs::write(&small, b"abc").unwrap();
        assert_eq!(Image::open(&small).unwrap().bytes(), b"abc");
    }
}

/// Bytes to scan, with what is known of their holes: an [`Image`], or a
/// plain slice (all of it stored).
#[derive(Clone, Debug)]
pub struct Source<'a> {
    /// The bytes.
    pub bytes: &'a [u8],
    /// Which of them are stored.
    pub allocation: std::borrow::Cow<'a, Allocation>,
    /// The image they come from, to release pages behind a scan.
    image: Option<&'a Image>,
}

impl<'a> Source<'a> {
    /// A slice stored in full.
    pub fn from_bytes(bytes: &'a [u8]) -> Self {
        Source {
            bytes,
            allocation: std::borrow::Cow::Owned(Allocation::full(bytes.len() as u64)),
            image: None,
        }
    }

    /// The size in bytes.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether `[start, end)` is a hole (or lies past the end).
    pub fn is_hole(&self, start: u64, end: u64) -> bool {
        start >= self.len() || self.allocation.is_hole(start, end.min(self.len()))
    }

    /// The first stored byte at or after `pos`, if there is one before
    /// the end.
    pub fn next_data(&self, pos: u64) -> Option<u64> {
        self.allocation.next_data(pos).filter(|&p| p < self.len())
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`: with a system
    /// call for an image (so that a file cut short underneath is an error,
    /// not a `SIGBUS`, and no pages are mapped), from memory for a slice.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match self.image {
            Some(image) => {
                use std::os::unix::fs::FileExt;
                image.file.read_exact_at(buf, offset).map_err(|e| {
                    let e = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        std::io::Error::new(
                            e.kind(),
                            "the image is shorter than when it was opened: it changed during the export",
                        )
                    } else {
                        e
                    };
                    Error::io(&image.path, e)
                })
            }
            None => {
                let start = offset as usize;
                buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
                Ok(())
            }
        }
    }

    /// Reads the part of `[offset, offset + len)` that lies before the end
    /// into `buf` and returns it: shorter than `len`, or empty, where the
    /// range runs past the end. Holes are filled with zeros without being
    /// read. Like [`Source::read_at`], a file cut short underneath is an
    /// error, never a `SIGBUS`.
    pub fn read_clipped<'b>(
        &self,
        offset: u64,
        len: u64,
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b [u8]> {
        let start = offset.min(self.len());
        let end = offset.saturating_add(len).min(self.len());
        buf.clear();
        buf.resize((end - start) as usize, 0);
        if start < end && !self.is_hole(start, end) {
            self.read_at(buf, start)?;
        }
        Ok(buf)
    }

    /// CRC-32C of the bytes of `[offset, offset + length)`, zeros past the
    /// end. Holes count as zeros without being read, so the time follows
    /// the stored bytes in the range, not its length.
    pub fn crc32c(&self, offset: u64, length: u64) -> Result<u32> {
        const CHUNK: u64 = 1 << 20;
        let end = offset.saturating_add(length);
        let stored_end = self.len().min(end);
        let (mut crc, mut at, mut buf) = (0, offset, Vec::new());
        while at < end {
            let next = match self.next_data(at) {
                Some(data) if data < stored_end => data,
                _ => end,
            };
            let (part, next) = if next > at {
                (crc_with_zeros(&[], next - at), next)
            } else {
                let next = (at / CHUNK + 1).saturating_mul(CHUNK).min(stored_end);
                (
                    crc32c::crc32c(self.read_clipped(at, next - at, &mut buf)?),
                    next,
                )
            };
            crc = crc32c::crc32c_combine(crc, part, (next - at) as usize);
            at = next;
        }
        Ok(crc)
    }

    /// See [`Image::check_unchanged`]; always true of a plain slice.
    pub fn check_unchanged(&self) -> Result<()> {
        self.image.map_or(Ok(()), Image::check_unchanged)
    }

    /// See [`Image::release`]; nothing for a plain slice.
    pub fn release(&self, start: u64, end: u64) {
        if let Some(image) = self.image {
            image.release(start, end);
        }
    }
}
