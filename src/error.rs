//! The library's one error type.
//!
//! Every fallible call returns [`Error`]. Its variants are the kinds a
//! caller may want to tell apart: a bad argument (with the field at fault),
//! an I/O failure (with the path), corrupt input (with the byte offset), a
//! mismatch between an export and the image it is applied to, and a valid
//! but unsupported request.

use std::io;
use std::path::{Path, PathBuf};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument is out of range or inconsistent with another.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The argument or field at fault, as the caller names it.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved; `-` for standard input or output.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An export or other input does not follow its format.
    #[error("corrupt {what} at byte {offset}: {message}")]
    Corrupt {
        /// Which input: for example `extent-list stream`.
        what: &'static str,
        /// Byte offset in that input where the fault was found.
        offset: u64,
        /// What is wrong there.
        message: String,
    },

    /// An input is valid but not the one expected: the wrong base for an
    /// export, or a result that does not match the recorded digest.
    #[error("mismatch: {0}")]
    Mismatch(String),

    /// A valid request that this build does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// An [`Error::InvalidArgument`] for `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

/// Adds a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    /// Turns the error into an [`Error::Io`] naming `path`.
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
