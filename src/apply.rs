//! Rebuild a target from its base and an export.
//!
//! The result is written under a temporary name beside the output, checked
//! (every record's checksums, the base's identity, the whole result's
//! digest when the export carries one), synced and only then renamed, so a
//! failed apply leaves nothing under the output's name.

use crate::detect::{base_range, is_zero};
use crate::error::{Error, IoContext, Result};
use crate::export::{digest, Phase, Progress};
use crate::format::extent_list::{
    crc_with_zeros, ExtentListReader, ListHeader, Record, Trailer, MAGIC,
};
use crate::format::raw_sparse::map_path;
use crate::image::Image;
use crate::output::AtomicFile;
use serde::Serialize;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What an apply did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApplySummary {
    /// The kind of export applied (`METADATA_AND_DATA` or `RAW_SPARSE`).
    pub output_type: &'static str,
    /// Size of the rebuilt image.
    pub target_size: u64,
    /// Data and zero records applied.
    pub records: u64,
    /// Bytes written from data records.
    pub data_bytes: u64,
    /// Bytes zeroed by zero records.
    pub zero_bytes: u64,
    /// Whether the result was checked against the target's digest.
    pub target_digest_verified: bool,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Where an export comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportInput {
    /// A file: an extent-list stream, or a raw sparse file with its
    /// change map beside it.
    Path(PathBuf),
    /// An extent-list stream on standard input.
    Stdin,
}

impl ExportInput {
    /// `-` means standard input, anything else a path.
    pub fn from_arg(arg: &Path) -> Self {
        if arg == Path::new("-") {
            ExportInput::Stdin
        } else {
            ExportInput::Path(arg.to_path_buf())
        }
    }
}

/// Rebuilds the target into `output` from `base` (none: an empty base)
/// and `export`. Without `force` an existing `output` is refused.
pub fn apply(
    base: Option<&Path>,
    export: &ExportInput,
    output: &Path,
    force: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<ApplySummary> {
    let started = Instant::now();
    crate::output::refuse_existing(output, force)?;
    let base_image = base.map(Image::open).transpose()?;
    let base_bytes = base_image.as_ref().map(Image::bytes).unwrap_or(&[]);
    let mut summary = match export {
        ExportInput::Stdin => {
            let stdin = std::io::stdin().lock();
            apply_stream(base_bytes, BufReader::new(stdin), output, force, progress)?
        }
        ExportInput::Path(path) => {
            // Open once (a FIFO cannot be opened twice) and decide by content.
            let mut file = File::open(path).at(path)?;
            let mut magic = [0u8; 8];
            let n = read_up_to(&mut file, &mut magic).at(path)?;
            let map = map_path(path);
            if n == magic.len() && magic == MAGIC {
                let input = BufReader::new(std::io::Cursor::new(magic).chain(file));
                apply_stream(base_bytes, input, output, force, progress)?
            } else if map.exists() {
                apply_raw_sparse(base_bytes, path, &map, output, force, progress)?
            } else {
                return Err(Error::Unsupported(format!(
                    "{} is not an extent-list stream, and no change map {} lies beside it \
                     as a raw sparse export needs",
                    path.display(),
                    map.display()
                )));
            }
        }
    };
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Reads until `buf` is full or the input ends; returns the count.
pub(crate) fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn apply_stream<R: Read>(
    base: &[u8],
    input: R,
    output: &Path,
    force: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<ApplySummary> {
    let mut reader = ExtentListReader::new(input)?;
    let header = reader.header().clone();
    if !header.payloads {
        return Err(Error::Unsupported(
            "a METADATA_ONLY export holds the change map without the data and cannot be applied"
                .into(),
        ));
    }
    let mut target = Target::start(base, &header, output, force)?;
    while let Some(record) = reader.next_record()? {
        match record {
            Record::Data {
                offset,
                base_crc,
                payload,
                ..
            } => target.data(offset, payload.expect("payloads checked above"), base_crc)?,
            Record::Zero {
                offset,
                length,
                base_crc,
            } => target.zero(offset, length, base_crc)?,
        }
        progress(target.progress());
    }
    let trailer = reader.trailer().expect("set after the last record").clone();
    target.finish(&trailer, "METADATA_AND_DATA")
}

fn apply_raw_sparse(
    base: &[u8],
    data_path: &Path,
    map: &Path,
    output: &Path,
    force: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<ApplySummary> {
    let map_file = File::open(map).at(map)?;
    let mut reader = ExtentListReader::new(BufReader::new(map_file))?;
    let header = reader.header().clone();
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
    let mut target = Target::start(base, &header, output, force)?;
    let mut buf = vec![0u8; header.record_limit as usize];
    while let Some(record) = reader.next_record()? {
        match record {
            Record::Data {
                offset,
                length,
                data_crc,
                base_crc,
                ..
            } => {
                let bytes = &mut buf[..length as usize];
                crate::info::read_raw_range(&data, data_path, offset, bytes, data_crc)?;
                target.data(offset, bytes, base_crc)?;
            }
            Record::Zero {
                offset,
                length,
                base_crc,
            } => target.zero(offset, length, base_crc)?,
        }
        progress(target.progress());
    }
    let trailer = reader.trailer().expect("set after the last record").clone();
    target.finish(&trailer, "RAW_SPARSE")
}

/// The image being rebuilt.
struct Target<'a> {
    base: &'a [u8],
    out: AtomicFile,
    size: u64,
    records: u64,
    data_bytes: u64,
    zero_bytes: u64,
    total: u64,
}

impl<'a> Target<'a> {
    /// Checks the base against the header, then starts the output as a
    /// copy of the base cut or extended to the target's size.
    fn start(base: &'a [u8], header: &ListHeader, output: &Path, force: bool) -> Result<Self> {
        let base_size = base.len() as u64;
        if base_size != header.base_size {
            let hint = if header.base_size == 0 {
                " (the export was made without a base: give no --base, or an empty file)"
                    .to_string()
            } else {
                String::new()
            };
            return Err(Error::Mismatch(format!(
                "the base is {base_size} bytes, but the export was made against a base of {} bytes{hint}",
                header.base_size
            )));
        }
        if let Some(expected) = header.base_digest {
            if digest(base) != expected {
                return Err(Error::Mismatch(
                    "the base's BLAKE3 digest differs from the one the export was made against"
                        .into(),
                ));
            }
        }
        let out = AtomicFile::create(output, force)?;
        let file = out.file();
        file.set_len(header.target_size).at(output)?;
        // Copy the base, leaving holes where it is zero: the new file reads
        // zeros there already.
        let keep = &base[..base.len().min(header.target_size as usize)];
        for (i, chunk) in keep.chunks(1 << 20).enumerate() {
            if !is_zero(chunk) {
                file.write_all_at(chunk, (i as u64) << 20).at(output)?;
            }
        }
        Ok(Target {
            base,
            out,
            size: header.target_size,
            records: 0,
            data_bytes: 0,
            zero_bytes: 0,
            total: header.data_bytes + header.zero_bytes,
        })
    }

    fn check_base(&self, offset: u64, length: u64, expected: u32) -> Result<()> {
        let old = base_range(self.base, offset as usize, length as usize);
        if crc_with_zeros(old, length - old.len() as u64) != expected {
            return Err(Error::Mismatch(format!(
                "the base differs from the one the export was made against: its bytes at {offset}+{length} do not match"
            )));
        }
        Ok(())
    }

    fn data(&mut self, offset: u64, bytes: &[u8], base_crc: u32) -> Result<()> {
        self.check_base(offset, bytes.len() as u64, base_crc)?;
        self.out
            .file()
            .write_all_at(bytes, offset)
            .at(self.out.path())?;
        self.records += 1;
        self.data_bytes += bytes.len() as u64;
        Ok(())
    }

    fn zero(&mut self, offset: u64, length: u64, base_crc: u32) -> Result<()> {
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        self.check_base(offset, length, base_crc)?;
        // The output reads as zeros already wherever the copied base was
        // zero and past the base's end; overwrite only the rest.
        let old = base_range(self.base, offset as usize, length as usize);
        for (i, chunk) in old.chunks(ZEROS.len()).enumerate() {
            if !is_zero(chunk) {
                let at = offset + (i * ZEROS.len()) as u64;
                self.out
                    .file()
                    .write_all_at(&ZEROS[..chunk.len()], at)
                    .at(self.out.path())?;
            }
        }
        self.records += 1;
        self.zero_bytes += length;
        Ok(())
    }

    fn progress(&self) -> Progress {
        Progress {
            phase: Phase::Write,
            done: self.data_bytes + self.zero_bytes,
            total: self.total,
        }
    }

    /// Verifies the result against the target digest, then commits it.
    fn finish(self, trailer: &Trailer, output_type: &'static str) -> Result<ApplySummary> {
        if let Some(expected) = trailer.target_digest {
            let written = Image::open(self.out.temp_path())?;
            if digest(written.bytes()) != expected {
                return Err(Error::Mismatch(
                    "the rebuilt image's BLAKE3 digest differs from the target's recorded in the \
                     export: the base or the export is not the right one"
                        .into(),
                ));
            }
        }
        let summary = ApplySummary {
            output_type,
            target_size: self.size,
            records: self.records,
            data_bytes: self.data_bytes,
            zero_bytes: self.zero_bytes,
            target_digest_verified: trailer.target_digest.is_some(),
            seconds: 0.0,
        };
        self.out.commit()?;
        Ok(summary)
    }
}
