//! A raw image, opened read-only and memory-mapped.
//!
//! This is the only module that maps files. A mapping is only sound while
//! nobody changes the file: see [`Image::open`] for what that means.

use crate::error::{Error, IoContext, Result};
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
    map: Option<Mmap>,
    size: u64,
}

impl Image {
    /// Opens and maps the image at `path`.
    ///
    /// A missing path, a directory, a file of another type or an unreadable
    /// file is an [`Error::Io`] or [`Error::InvalidArgument`] naming the
    /// path. The file is never written.
    ///
    /// The mapping assumes the file does not change while the `Image`
    /// lives. Snapshot images are immutable by nature; if one is truncated
    /// underneath anyway, reading past its new end raises `SIGBUS`, and
    /// bytes rewritten underneath may be read in either state.
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
            map,
            size,
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

    /// The image's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
