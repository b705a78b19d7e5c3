//! Rebuild a target from its base and an export.
//!
//! The result is written under a temporary name beside the output, checked
//! (every record's checksums, the base's identity, the whole result's
//! digest when the export carries one), synced and only then renamed, so a
//! failed apply leaves nothing under the output's name.

use crate::crypt::{refuse_unused_key, CustomerKey};
use crate::detect::is_zero;
use crate::digest::image_digest;
use crate::error::{Error, IoContext, Result};
use crate::export::{Phase, Progress};
use crate::format::extent_list::{ExtentListReader, ListHeader, Record};
use crate::format::qcow2::{Mapping, Qcow2Reader};
use crate::format::raw_sparse::{self, map_path};
use crate::format::rbd_diff::{RbdDiffReader, RbdRecord};
use crate::format::{cut_in_signature, sniff, Recognised};
use crate::image::{Image, Source};
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
    apply_with_key(base, export, output, force, None, progress)
}

/// [`apply()`] of an export that may be encrypted: an encrypted
/// extent-list stream needs its `key`; a missing or wrong key is refused
/// before anything is written.
pub fn apply_with_key(
    base: Option<&Path>,
    export: &ExportInput,
    output: &Path,
    force: bool,
    key: Option<&CustomerKey>,
    progress: &mut dyn FnMut(Progress),
) -> Result<ApplySummary> {
    let started = Instant::now();
    crate::output::refuse_existing(output, force)?;
    let base_image = base.map(Image::open).transpose()?;
    let base_source = base_image
        .as_ref()
        .map_or_else(|| Source::from_bytes(&[]), Image::source);
    let base_bytes = &base_source;
    let mut summary = match export {
        ExportInput::Stdin => {
            let stdin = std::io::stdin().lock();
            let (kind, input) = sniff(stdin).at(Path::new("-"))?;
            match kind {
                Some(Recognised::RbdDiff) => {
                    refuse_unused_key(key, "the rbd diff")?;
                    apply_rbd_diff(base_bytes, BufReader::new(input), output, force, progress)?
                }
                Some(Recognised::Qcow2) => {
                    return Err(Error::Unsupported(
                        "a qcow2 export cannot be read from standard input: give its path".into(),
                    ))
                }
                _ => apply_stream(
                    base_bytes,
                    BufReader::new(input),
                    output,
                    force,
                    key,
                    progress,
                )?,
            }
        }
        ExportInput::Path(path) if raw_sparse::is_raw_sparse(path) => {
            refuse_unused_key(key, "the raw sparse export")?;
            apply_raw_sparse(base_bytes, path, output, force, progress)?
        }
        ExportInput::Path(path) => {
            // Open once (a FIFO cannot be opened twice) and decide by content.
            let file = File::open(path).at(path)?;
            let regular = file.metadata().at(path)?.is_file();
            let (kind, input) = sniff(file).at(path)?;
            match kind {
                Some(Recognised::ExtentList) => apply_stream(
                    base_bytes,
                    BufReader::new(input),
                    output,
                    force,
                    key,
                    progress,
                )?,
                Some(Recognised::RbdDiff) => {
                    refuse_unused_key(key, "the rbd diff")?;
                    apply_rbd_diff(base_bytes, BufReader::new(input), output, force, progress)?
                }
                Some(Recognised::Qcow2) if !regular => {
                    return Err(Error::Unsupported(format!(
                        "{}: a qcow2 export must be a regular file (its tables are read at random)",
                        path.display()
                    )))
                }
                Some(Recognised::Qcow2) => {
                    refuse_unused_key(key, "the qcow2 export")?;
                    apply_qcow2(base_bytes, base.is_some(), path, output, force, progress)?
                }
                None if map_path(path).exists() => {
                    refuse_unused_key(key, "the raw sparse export")?;
                    apply_raw_sparse(base_bytes, path, output, force, progress)?
                }
                None => {
                    if let Some(e) = cut_in_signature(input.get_ref().0.get_ref()) {
                        return Err(e);
                    }
                    return Err(Error::Unsupported(format!(
                        "{} is not an export snapdelta reads (extent-list, qcow2, rbd diff), \
                         and no change map {} lies beside it as a raw sparse export needs",
                        path.display(),
                        map_path(path).display()
                    )));
                }
            }
        }
    };
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn apply_stream<R: Read>(
    base: &Source<'_>,
    input: R,
    output: &Path,
    force: bool,
    key: Option<&CustomerKey>,
    progress: &mut dyn FnMut(Progress),
) -> Result<ApplySummary> {
    let mut reader = ExtentListReader::with_key(input, key)?;
    let header = reader.header().clone();
    if !header.payloads {
        return Err(Error::Unsupported(
            "a METADATA_ONLY export holds the change map without the data and cannot be applied"
                .into(),
        ));
    }
    let mut target = Target::start(base, &Expect::from(&header), output, force)?;
    while let Some(record) = reader.next_record()? {
        match record {
            Record::Data {
                offset,
                base_crc,
                payload,
                ..
            } => target.data(
                offset,
                payload.expect("payloads checked above"),
                Some(base_crc),
            )?,
            Record::Zero {
                offset,
                length,
                base_crc,
            } => target.zero(offset, length, Some(base_crc))?,
        }
        progress(target.progress());
    }
    let trailer = reader.trailer().expect("set after the last record");
    target.finish(trailer.target_digest, "METADATA_AND_DATA")
}

fn apply_raw_sparse(
    base: &Source<'_>,
    data_path: &Path,
    output: &Path,
    force: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<ApplySummary> {
    let (data, mut reader) = raw_sparse::open(data_path)?;
    let header = reader.header().clone();
    let mut target = Target::start(base, &Expect::from(&header), output, force)?;
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
                raw_sparse::read_range(&data, data_path, offset, bytes, data_crc)?;
                target.data(offset, bytes, Some(base_crc))?;
            }
            Record::Zero {
                offset,
                length,
                base_crc,
            } => target.zero(offset, length, Some(base_crc))?,
        }
        progress(target.progress());
    }
    let trailer = reader.trailer().expect("set after the last record");
    target.finish(trailer.target_digest, "RAW_SPARSE")
}

/// Applies a Ceph `rbd diff` stream. The format records neither the base's
/// size nor any checksum, so the wrong base cannot be detected; a stream
/// without its end record is still refused.
fn apply_rbd_diff<R: Read>(
    base: &Source<'_>,
    input: R,
    output: &Path,
    force: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<ApplySummary> {
    let mut reader = RbdDiffReader::new(input)?;
    let mut target: Option<Target<'_>> = None;
    let start = |size: u64| {
        let expect = Expect {
            base_size: None,
            base_digest: None,
            target_size: size,
            total: size,
        };
        Target::start(base, &expect, output, force)
    };
    while let Some(record) = reader.next_record()? {
        match record {
            RbdRecord::FromSnap(_) | RbdRecord::ToSnap(_) => {}
            RbdRecord::Size(size) => target = Some(start(size)?),
            RbdRecord::Write { offset, data } => {
                let t = target
                    .as_mut()
                    .expect("the reader refuses data before the size");
                t.data(offset, data, None)?;
                progress(t.progress_at(offset + data.len() as u64));
            }
            RbdRecord::Zero { offset, length } => {
                let t = target
                    .as_mut()
                    .expect("the reader refuses data before the size");
                t.zero(offset, length, None)?;
                progress(t.progress_at(offset + length));
            }
        }
    }
    let target = match target {
        Some(t) => t,
        None => start(base.len())?,
    };
    target.finish(None, "RBD_DIFF")
}

fn apply_qcow2(
    base: &Source<'_>,
    base_given: bool,
    path: &Path,
    output: &Path,
    force: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<ApplySummary> {
    let q = Qcow2Reader::open(path)?;
    match (q.backing_file(), base_given) {
        (Some(name), false) => {
            return Err(Error::invalid(
                "base",
                format!(
                    "{} is an overlay of the backing file {name:?}: give that image as --base",
                    path.display()
                ),
            ))
        }
        (None, _) if !base.is_empty() => {
            return Err(Error::Mismatch(format!(
                "{} has no backing file: give no --base, or an empty file",
                path.display()
            )))
        }
        _ => {}
    }
    if let Some(format) = q.backing_format().filter(|f| *f != "raw") {
        return Err(Error::Unsupported(format!(
            "qcow2 overlays of a {format:?} backing file (only raw)"
        )));
    }
    let record = q.record().copied();
    let target_size = match record {
        Some(r) if r.target_size > q.virtual_size() || q.virtual_size() - r.target_size >= 512 => {
            return Err(Error::Corrupt {
                what: "qcow2 image",
                offset: 24,
                message: format!(
                    "recorded target size {} does not round up to the virtual size {}",
                    r.target_size,
                    q.virtual_size()
                ),
            })
        }
        Some(r) => r.target_size,
        None => q.virtual_size(),
    };
    let expect = Expect {
        base_size: record.map(|r| r.base_size),
        base_digest: record.and_then(|r| r.base_digest),
        target_size,
        total: target_size,
    };
    let mut target = Target::start(base, &expect, output, force)?;
    let cs = q.cluster_size();
    let mut buf = vec![0u8; cs as usize];
    'tables: for i in 0..q.l1_len() {
        for (j, mapping) in q.l2_table(i)?.into_iter().enumerate() {
            let guest = (i as u64 * (cs / 8) + j as u64) * cs;
            if guest >= target_size {
                break 'tables;
            }
            let len = cs.min(target_size - guest);
            match mapping {
                Mapping::Unallocated => {}
                Mapping::Zero => target.zero(guest, len, None)?,
                Mapping::Data { .. } | Mapping::Compressed { .. } => {
                    q.read_cluster(mapping, &mut buf)?;
                    target.data(guest, &buf[..len as usize], None)?;
                }
            }
        }
        progress(Progress {
            phase: Phase::Write,
            done: ((i as u64 + 1) * (cs / 8) * cs).min(target_size),
            total: target_size,
        });
    }
    target.finish(record.and_then(|r| r.target_digest), "QCOW2")
}

/// What an export says about the base it needs and the image it makes.
struct Expect {
    /// The base's size, where the export records it.
    base_size: Option<u64>,
    /// The base's BLAKE3, where the export records it.
    base_digest: Option<[u8; 32]>,
    /// The rebuilt image's size.
    target_size: u64,
    /// Work in all, for progress.
    total: u64,
}

impl From<&ListHeader> for Expect {
    fn from(h: &ListHeader) -> Self {
        Expect {
            base_size: Some(h.base_size),
            base_digest: h.base_digest,
            target_size: h.target_size,
            total: h.data_bytes + h.zero_bytes,
        }
    }
}

/// The image being rebuilt.
struct Target<'a> {
    base: &'a Source<'a>,
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
    fn start(base: &'a Source<'a>, header: &Expect, output: &Path, force: bool) -> Result<Self> {
        let base_size = base.len();
        if header.base_size.is_some_and(|size| size != base_size) {
            let expected = header.base_size.unwrap_or_default();
            let hint = if expected == 0 {
                " (the export was made without a base: give no --base, or an empty file)"
                    .to_string()
            } else {
                String::new()
            };
            return Err(Error::Mismatch(format!(
                "the base is {base_size} bytes, but the export was made against a base of {expected} bytes{hint}"
            )));
        }
        if let Some(expected) = header.base_digest {
            if image_digest(base, &mut |_| {})? != expected {
                return Err(Error::Mismatch(
                    "the base's BLAKE3 digest differs from the one the export was made against"
                        .into(),
                ));
            }
        }
        let out = AtomicFile::create(output, force)?;
        let file = out.file();
        file.set_len(header.target_size).at(output)?;
        // Copy the base's stored ranges, leaving holes where it has holes
        // or zeros: the new file reads zeros there already.
        let keep = base.len().min(header.target_size);
        let mut buf = Vec::new();
        for &(start, end) in base.allocation.ranges() {
            let end = end.min(keep);
            let mut at = start;
            while at < end {
                let next = ((at >> 20) + 1) << 20;
                let chunk = base.read_clipped(at, next.min(end) - at, &mut buf)?;
                if !is_zero(chunk) {
                    file.write_all_at(chunk, at).at(output)?;
                }
                base.release(at, next.min(end));
                at = next.min(end);
            }
        }
        Ok(Target {
            base,
            out,
            size: header.target_size,
            records: 0,
            data_bytes: 0,
            zero_bytes: 0,
            total: header.total,
        })
    }

    fn check_base(&self, offset: u64, length: u64, expected: Option<u32>) -> Result<()> {
        let Some(expected) = expected else {
            return Ok(());
        };
        let crc = self.base.crc32c(offset, length)?;
        self.base.release(offset, offset + length);
        if crc != expected {
            return Err(Error::Mismatch(format!(
                "the base differs from the one the export was made against: its bytes at {offset}+{length} do not match"
            )));
        }
        Ok(())
    }

    fn data(&mut self, offset: u64, bytes: &[u8], base_crc: Option<u32>) -> Result<()> {
        self.check_base(offset, bytes.len() as u64, base_crc)?;
        self.out
            .file()
            .write_all_at(bytes, offset)
            .at(self.out.path())?;
        self.records += 1;
        self.data_bytes += bytes.len() as u64;
        Ok(())
    }

    fn zero(&mut self, offset: u64, length: u64, base_crc: Option<u32>) -> Result<()> {
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        self.check_base(offset, length, base_crc)?;
        // The output reads as zeros already wherever the copied base was
        // a hole or zero and past the base's end; overwrite only the rest.
        let stored_end = self.base.len().min(offset + length);
        let (mut at, mut buf) = (offset, Vec::new());
        while let Some(data) = self.base.next_data(at).filter(|&d| d < stored_end) {
            let next = (data + ZEROS.len() as u64).min(stored_end);
            if !is_zero(self.base.read_clipped(data, next - data, &mut buf)?) {
                self.out
                    .file()
                    .write_all_at(&ZEROS[..(next - data) as usize], data)
                    .at(self.out.path())?;
            }
            at = next;
        }
        self.base.release(offset, offset + length);
        self.records += 1;
        self.zero_bytes += length;
        Ok(())
    }

    /// Progress for exports whose records come in offset order without
    /// announced totals: how far into the image the last record reached.
    fn progress_at(&self, offset: u64) -> Progress {
        Progress {
            phase: Phase::Write,
            done: offset.min(self.size),
            total: self.size,
        }
    }

    fn progress(&self) -> Progress {
        Progress {
            phase: Phase::Write,
            done: self.data_bytes + self.zero_bytes,
            total: self.total,
        }
    }

    /// Verifies the result against the target digest, then commits it.
    fn finish(
        self,
        target_digest: Option<[u8; 32]>,
        output_type: &'static str,
    ) -> Result<ApplySummary> {
        if let Some(expected) = target_digest {
            let written = Image::open(self.out.temp_path())?;
            if image_digest(&written.source(), &mut |_| {})? != expected {
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
            target_digest_verified: target_digest.is_some(),
            seconds: 0.0,
        };
        self.out.commit()?;
        Ok(summary)
    }
}
