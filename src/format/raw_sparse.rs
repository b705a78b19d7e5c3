//! The raw sparse export (`docs/raw-sparse.md`): a file of the target's
//! size holding the changed ranges at their offsets and holes elsewhere,
//! plus its change map, a `METADATA_ONLY` extent-list stream kept beside
//! it as `NAME.map`.
//!
//! The map is what makes the file safe to apply. A raw file alone cannot
//! tell a block that changed to zeros from an unchanged one once a
//! sparse-aware copy has dropped the written zeros; the map says which
//! ranges changed and what their bytes hash to, so apply writes zeros
//! where it says zero and refuses a data file that no longer matches.

use crate::error::{Error, IoContext, Result};
use crate::format::extent_list::{ExtentListEncoder, ExtentListReader};
use crate::sink::{DataExtent, ExportHeader, Sink, SinkSummary, ZeroExtent};
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The change map's path for the raw sparse export at `export`:
/// `export` with `.map` appended.
pub fn map_path(export: &Path) -> PathBuf {
    let mut name = OsString::from(export.as_os_str());
    name.push(".map");
    PathBuf::from(name)
}

/// Opens a raw sparse export for reading: its data file and a reader of
/// its change map, checked to be a map (no payloads) of a target the data
/// file's size.
pub fn open(data_path: &Path) -> Result<(File, ExtentListReader<BufReader<File>>)> {
    let map = map_path(data_path);
    let map_file = File::open(&map).at(&map)?;
    let reader = ExtentListReader::new(BufReader::new(map_file))?;
    let header = reader.header();
    if header.payloads {
        return Err(Error::Unsupported(format!(
            "{} holds data: it is an extent-list export, not the change map of a raw sparse export",
            map.display()
        )));
    }
    let data = File::open(data_path).at(data_path)?;
    let size = data.metadata().at(data_path)?.len();
    if size != header.target_size {
        return Err(Error::Mismatch(format!(
            "{} is {size} bytes, but its change map describes a target of {} bytes",
            data_path.display(),
            header.target_size
        )));
    }
    Ok((data, reader))
}

/// Whether `data_path` is the data file of a raw sparse export: its change
/// map lies beside it and describes a target of exactly its size. Checked
/// before the file's own first bytes, because a disk's contents can begin
/// like any export (a qcow2 image kept on a volume, say).
pub fn is_raw_sparse(data_path: &Path) -> bool {
    // A FIFO is never a data file, and opening one would wait for a writer.
    std::fs::metadata(data_path).is_ok_and(|m| m.is_file())
        && map_path(data_path).is_file()
        && open(data_path).is_ok()
}

/// Reads `buf.len()` bytes at `offset` of a raw sparse data file and checks
/// that their CRC-32C is the one its change map records.
pub fn read_range(file: &File, path: &Path, offset: u64, buf: &mut [u8], crc: u32) -> Result<()> {
    file.read_exact_at(buf, offset).at(path)?;
    if crc32c::crc32c(buf) != crc {
        return Err(Error::Mismatch(format!(
            "{}: the bytes at {offset}+{} do not match its change map (the file was changed)",
            path.display(),
            buf.len()
        )));
    }
    Ok(())
}

/// Writes a raw sparse export: data into a seekable file, the change map
/// into any `io::Write`.
pub struct RawSparseEncoder<W: Write> {
    data: File,
    data_path: PathBuf,
    map: ExtentListEncoder<W>,
    target_size: u64,
    written: u64,
}

impl<W: Write> RawSparseEncoder<W> {
    /// An encoder writing ranges into `data` (an empty file, named
    /// `data_path` in errors) and the change map into `map`.
    pub fn new(data: File, data_path: &Path, map: W) -> Self {
        RawSparseEncoder {
            data,
            data_path: data_path.to_path_buf(),
            map: ExtentListEncoder::new(map, false, None),
            target_size: 0,
            written: 0,
        }
    }

    fn write_at(&mut self, bytes: &[u8], offset: u64) -> Result<()> {
        self.data.write_all_at(bytes, offset).at(&self.data_path)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

impl<W: Write> Sink for RawSparseEncoder<W> {
    fn begin(&mut self, header: &ExportHeader) -> Result<()> {
        self.target_size = header.target_size;
        self.data.set_len(header.target_size).at(&self.data_path)?;
        self.map.begin(header)
    }

    fn data(&mut self, extent: &DataExtent<'_>) -> Result<()> {
        self.write_at(extent.bytes, extent.offset)?;
        self.map.data(extent)
    }

    fn zero(&mut self, extent: &ZeroExtent) -> Result<()> {
        // Zeros are written, not left as holes, so the file alone still
        // shows the change to tools that read allocation; the map is what
        // apply trusts.
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        let mut done = 0;
        while done < extent.length {
            let n = (extent.length - done).min(ZEROS.len() as u64) as usize;
            self.write_at(&ZEROS[..n], extent.offset + done)?;
            done += n as u64;
        }
        self.map.zero(extent)
    }

    fn finish(&mut self) -> Result<SinkSummary> {
        let size = self.data.metadata().at(&self.data_path)?.len();
        if size != self.target_size {
            return Err(Error::Mismatch(format!(
                "{}: raw sparse file is {size} bytes, expected {}",
                self.data_path.display(),
                self.target_size
            )));
        }
        let map = self.map.finish()?;
        Ok(SinkSummary {
            bytes_written: self.written + map.bytes_written,
        })
    }
}
