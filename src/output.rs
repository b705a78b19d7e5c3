//! Outputs that appear atomically: written under a temporary name beside
//! the final one, synced, then renamed.

use crate::error::{Error, IoContext, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// A file being written; it takes its final name only on
/// [`AtomicFile::commit`]. Dropped uncommitted, it is removed.
///
/// The temporary file is created with mode 0600 in the final file's
/// directory, so the rename cannot cross file systems and nothing is ever
/// readable by other users, not even while it is written.
#[derive(Debug)]
pub struct AtomicFile {
    temp: NamedTempFile,
    path: PathBuf,
    force: bool,
}

impl AtomicFile {
    /// Starts a file that will be named `path`. Without `force`, an
    /// existing `path` is refused now and again at commit.
    pub fn create(path: &Path, force: bool) -> Result<Self> {
        refuse_existing(path, force)?;
        if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"),
            ));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| Error::invalid("output", format!("{} names no file", path.display())))?;
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".partial")
            .tempfile_in(dir)
            .at(path)?;
        Ok(AtomicFile {
            temp,
            path: path.to_path_buf(),
            force,
        })
    }

    /// The open temporary file.
    pub fn file(&self) -> &File {
        self.temp.as_file()
    }

    /// The open temporary file, mutably.
    pub fn file_mut(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    /// The temporary file's current path.
    pub fn temp_path(&self) -> &Path {
        self.temp.path()
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the file and gives it its final name. With `force` an
    /// existing file (or symbolic link) of that name is replaced, never
    /// followed; without it, an existing name is an error.
    pub fn commit(self) -> Result<()> {
        self.temp.as_file().sync_all().at(&self.path)?;
        let path = self.path;
        if self.force {
            self.temp
                .persist(&path)
                .map_err(|e| Error::io(&path, e.error))?;
        } else {
            self.temp
                .persist_noclobber(&path)
                .map_err(|e| Error::io(&path, e.error))?;
        }
        sync_parent(&path)
    }
}

/// A file written front to back whose pages are handed to the disk every
/// few MiB as it goes (`POSIX_FADV_DONTNEED` starts their writeback and
/// lets the kernel drop them once written), so that the final sync waits
/// for the last stretch only, and a large output does not crowd the page
/// cache.
#[derive(Debug)]
pub struct StreamingFile {
    file: File,
    written: u64,
    flushed: u64,
}

impl StreamingFile {
    /// How much is written between two hand-overs.
    const STRETCH: u64 = 32 << 20;

    /// Wraps `file`, positioned at its start.
    pub fn new(file: File) -> Self {
        StreamingFile {
            file,
            written: 0,
            flushed: 0,
        }
    }
}

impl std::io::Write for StreamingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.flushed >= Self::STRETCH {
            // A hint: an error here changes nothing about the data.
            let len = std::num::NonZeroU64::new(self.written - self.flushed);
            let _ =
                rustix::fs::fadvise(&self.file, self.flushed, len, rustix::fs::Advice::DontNeed);
            self.flushed = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Refuses an existing `path` unless `force`.
pub fn refuse_existing(path: &Path, force: bool) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    // Not even --force replaces a device, a FIFO or a socket with a file:
    // `-o /dev/null --force` must not destroy the system's /dev/null.
    if let Ok(meta) = path.symlink_metadata() {
        let t = meta.file_type();
        if t.is_char_device() || t.is_block_device() || t.is_fifo() || t.is_socket() {
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "is a device, FIFO or socket; outputs are regular files",
                ),
            ));
        }
    }
    if !force && path.symlink_metadata().is_ok() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "already exists (use --force to replace it)",
            ),
        ));
    }
    Ok(())
}

fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn appears_only_on_commit_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let mut f = AtomicFile::create(&path, false).unwrap();
        f.file_mut().write_all(b"hello").unwrap();
        let mode = f.file().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        assert!(!path.exists());
        f.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        assert!(AtomicFile::create(&path, false).is_err());
        let dropped = AtomicFile::create(&path, true).unwrap();
        drop(dropped);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
