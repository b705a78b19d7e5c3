//! Output types and their encoders and decoders, one module per format.

pub mod extent_list;
pub mod qcow2;
pub mod raw_sparse;
pub mod rbd_diff;

use crate::error::{Error, Result};
use crate::geometry::BlockSize;
use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

/// Which export the caller asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OutputType {
    /// The extent-list stream with the changed bytes (the default).
    #[default]
    MetadataAndData,
    /// The extent-list stream without payloads: the change map only.
    MetadataOnly,
    /// A file of the target's size with the changed ranges in place,
    /// holes elsewhere, and its change map beside it.
    RawSparse,
    /// A qcow2 version 3 overlay whose backing file is the base.
    Qcow2,
    /// Ceph's `rbd diff v1` stream.
    RbdDiff,
}

impl OutputType {
    /// The name used on the command line.
    pub fn cli_name(self) -> &'static str {
        match self {
            OutputType::MetadataAndData => "metadata-and-data",
            OutputType::MetadataOnly => "metadata-only",
            OutputType::RawSparse => "raw-sparse",
            OutputType::Qcow2 => "qcow2",
            OutputType::RbdDiff => "rbd-diff",
        }
    }

    /// The name the export API uses (`outputType`).
    pub fn api_name(self) -> &'static str {
        match self {
            OutputType::MetadataAndData => "METADATA_AND_DATA",
            OutputType::MetadataOnly => "METADATA_ONLY",
            OutputType::RawSparse => "RAW_SPARSE",
            OutputType::Qcow2 => "QCOW2",
            OutputType::RbdDiff => "RBD_DIFF",
        }
    }

    /// The block size the CLI uses for this type unless told otherwise,
    /// chosen from measured export sizes: 4 KiB, the file system's own
    /// block, for the types that carry changed ranges to a backup store
    /// (on ext4 pairs changed file by file their exports are up to half
    /// the size of 64 KiB ones, at the same detection speed); 64 KiB,
    /// qemu's default cluster size, for qcow2, whose overlay a VM may run
    /// on and whose metadata grows with the cluster count.
    pub fn default_block_size(self) -> BlockSize {
        match self {
            OutputType::Qcow2 => BlockSize::DEFAULT,
            _ => BlockSize::new(4096).expect("a valid block size"),
        }
    }

    /// Whether the export can be written to a pipe.
    pub fn streams(self) -> bool {
        !matches!(self, OutputType::RawSparse)
    }

    /// Every output type.
    pub const ALL: [OutputType; 5] = [
        OutputType::MetadataAndData,
        OutputType::MetadataOnly,
        OutputType::RawSparse,
        OutputType::Qcow2,
        OutputType::RbdDiff,
    ];
}

impl fmt::Display for OutputType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cli_name())
    }
}

impl FromStr for OutputType {
    type Err = Error;

    /// Accepts the CLI spelling (`raw-sparse`) and the API's
    /// (`RAW_SPARSE`); refuses the API's unset value `INVALID`.
    fn from_str(text: &str) -> Result<Self> {
        if text == "INVALID" {
            return Err(Error::invalid(
                "output type",
                "INVALID is the unset value of outputType; choose METADATA_AND_DATA or METADATA_ONLY",
            ));
        }
        OutputType::ALL
            .into_iter()
            .find(|t| text == t.cli_name() || text == t.api_name())
            .ok_or_else(|| {
                let names: Vec<_> = OutputType::ALL.iter().map(|t| t.cli_name()).collect();
                Error::invalid(
                    "output type",
                    format!(
                        "unknown output type '{text}' (one of: {})",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// A format recognised from an export's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recognised {
    /// An extent-list stream (`METADATA_AND_DATA` or `METADATA_ONLY`).
    ExtentList,
    /// A qcow2 image.
    Qcow2,
    /// A Ceph `rbd diff` stream, v1 or v2.
    RbdDiff,
}

/// What the first bytes of an export say it is. A raw sparse data file
/// has no signature: it is known by the change map beside it.
pub fn recognise(head: &[u8]) -> Option<Recognised> {
    if extent_list::has_magic(head) {
        Some(Recognised::ExtentList)
    } else if qcow2::has_magic(head) {
        Some(Recognised::Qcow2)
    } else if head.starts_with(b"rbd diff") {
        Some(Recognised::RbdDiff)
    } else {
        None
    }
}

/// The error for an input of fewer bytes than a signature that begins like
/// one (an empty input included): an export cut short, not a foreign file.
pub(crate) fn cut_in_signature(head: &[u8]) -> Option<Error> {
    let signatures: [&[u8]; 3] = [&extent_list::MAGIC, b"QFI\xfb", b"rbd diff"];
    signatures
        .iter()
        .any(|s| head.len() < s.len() && s.starts_with(head))
        .then(|| Error::Corrupt {
            what: "export",
            offset: head.len() as u64,
            message: "truncated: the input ends inside the signature of an export".into(),
        })
}

/// The reader `sniff` hands back: the bytes it read, then the rest.
pub(crate) type Sniffed<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Reads the first bytes of `input` (it may be a pipe: they are read once)
/// and returns what they say, with a reader that yields them again
/// followed by the rest.
pub(crate) fn sniff<R: Read>(mut input: R) -> io::Result<(Option<Recognised>, Sniffed<R>)> {
    let mut head = [0u8; 8];
    let n = read_up_to(&mut input, &mut head)?;
    let kind = recognise(&head[..n]);
    Ok((kind, io::Cursor::new(head[..n].to_vec()).chain(input)))
}

/// Reads until `buf` is full or the input ends; returns the count.
pub(crate) fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_parse() {
        for t in OutputType::ALL {
            assert_eq!(t.cli_name().parse::<OutputType>().unwrap(), t);
            assert_eq!(t.api_name().parse::<OutputType>().unwrap(), t);
        }
        assert!("INVALID"
            .parse::<OutputType>()
            .unwrap_err()
            .to_string()
            .contains("unset"));
        assert!("tar".parse::<OutputType>().is_err());
    }
}
