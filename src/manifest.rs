//! Block manifests: the digests of an image's blocks, so that a later
//! image can be exported against it without the image itself.
//!
//! The format is specified in `docs/manifest.md`: a 64-byte header, runs of
//! zero blocks (12 bytes each, however long) and of data blocks (a BLAKE3
//! digest and a CRC-32C per block), and an end record with the image
//! digest. Every part is checksummed. [`ManifestWriter`] writes one front
//! to back; [`ManifestReader`] reads one run at a time, never allocating
//! more than one record.
//!
//! The hashing pass that makes a manifest, or compares an image with one,
//! is [`crate::detect::manifest`]; [`export_with_manifest`] exports from a
//! manifest of the base.

use crate::detect::manifest::{scan_blocks, BaseCrcs};
use crate::error::{Error, Result};
use crate::export::{stream, ExportOptions, ExportSummary, Phase, Progress};
use crate::geometry::BlockSize;
use crate::image::{Image, Source};
use crate::sink::Sink;
use serde::Serialize;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::time::Instant;

/// A manifest's first eight bytes.
pub const MAGIC: [u8; 8] = *b"\x89SDM\r\n\x1a\n";
/// The version this module writes and reads.
pub const VERSION: u16 = 1;
/// The most blocks one data record holds.
pub const MAX_DATA_RUN: u32 = 4096;

const HEADER_LEN: usize = 64;
const END_LEN: usize = 52;
const ENTRY_LEN: usize = 36;
const TAG_ZERO: u8 = b'Z';
const TAG_DATA: u8 = b'D';
const TAG_END: u8 = b'E';
const WHAT: &str = "block manifest";

/// The digest and checksum of one block that is not all zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDigest {
    /// The block digest (see `docs/manifest.md`).
    pub digest: [u8; 32],
    /// CRC-32C of the block's bytes.
    pub crc: u32,
}

/// What a manifest says of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockEntry {
    /// Every byte of the block is zero.
    Zero,
    /// The block holds a non-zero byte.
    Data(BlockDigest),
}

/// The fixed fields of a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestHeader {
    /// The block size the image was cut into.
    pub block_size: BlockSize,
    /// The image's size in bytes.
    pub image_size: u64,
}

impl ManifestHeader {
    /// The number of blocks, the last one possibly short.
    pub fn block_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size.get())
    }
}

fn crc_of(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Writes a manifest to any `io::Write`, front to back.
///
/// Blocks are given in order with [`ManifestWriter::push`] (or runs of zero
/// blocks with [`ManifestWriter::push_zeros`]); [`ManifestWriter::finish`]
/// writes the end record once every block of the header's count is in.
pub struct ManifestWriter<W: Write> {
    out: W,
    header: ManifestHeader,
    entries: Vec<u8>,
    data_run: u32,
    zero_run: u64,
    blocks: u64,
    written: u64,
}

impl<W: Write> ManifestWriter<W> {
    /// Starts a manifest of an image described by `header`, writing the
    /// header to `out`.
    pub fn new(out: W, header: ManifestHeader) -> Result<Self> {
        if header.image_size > i64::MAX as u64 {
            return Err(Error::invalid("image size", "larger than 2^63 - 1 bytes"));
        }
        let mut buf = [0u8; HEADER_LEN];
        buf[..8].copy_from_slice(&MAGIC);
        buf[8..10].copy_from_slice(&VERSION.to_le_bytes());
        buf[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        buf[16..20].copy_from_slice(&(header.block_size.get() as u32).to_le_bytes());
        buf[24..32].copy_from_slice(&header.image_size.to_le_bytes());
        buf[32..40].copy_from_slice(&header.block_count().to_le_bytes());
        let crc = crc_of(&buf[..60]);
        buf[60..64].copy_from_slice(&crc.to_le_bytes());
        let mut w = ManifestWriter {
            out,
            header,
            entries: Vec::with_capacity(8 + ENTRY_LEN * MAX_DATA_RUN as usize + 4),
            data_run: 0,
            zero_run: 0,
            blocks: 0,
            written: 0,
        };
        w.put(&buf)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("manifest output", e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn room(&self, n: u64) -> Result<()> {
        if self.blocks + n > self.header.block_count() {
            return Err(Error::invalid(
                "manifest",
                format!(
                    "more blocks than the {} of the image",
                    self.header.block_count()
                ),
            ));
        }
        Ok(())
    }

    /// Adds the next block.
    pub fn push(&mut self, entry: &BlockEntry) -> Result<()> {
        match entry {
            BlockEntry::Zero => self.push_zeros(1),
            BlockEntry::Data(d) => {
                self.room(1)?;
                self.flush_zeros()?;
                if self.data_run == 0 {
                    self.entries.clear();
                    self.entries
                        .extend_from_slice(&[TAG_DATA, 0, 0, 0, 0, 0, 0, 0]);
                }
                self.entries.extend_from_slice(&d.digest);
                self.entries.extend_from_slice(&d.crc.to_le_bytes());
                self.data_run += 1;
                self.blocks += 1;
                if self.data_run == MAX_DATA_RUN {
                    self.flush_data()?;
                }
                Ok(())
            }
        }
    }

    /// Adds `n` zero blocks.
    pub fn push_zeros(&mut self, n: u64) -> Result<()> {
        self.room(n)?;
        self.flush_data()?;
        self.zero_run += n;
        self.blocks += n;
        Ok(())
    }

    fn flush_data(&mut self) -> Result<()> {
        if self.data_run == 0 {
            return Ok(());
        }
        let count = self.data_run.to_le_bytes();
        self.entries[4..8].copy_from_slice(&count);
        let crc = crc_of(&self.entries);
        self.entries.extend_from_slice(&crc.to_le_bytes());
        let entries = std::mem::take(&mut self.entries);
        let result = self.put(&entries);
        self.entries = entries;
        self.data_run = 0;
        result
    }

    fn flush_zeros(&mut self) -> Result<()> {
        while self.zero_run > 0 {
            let n = self.zero_run.min(u32::MAX as u64) as u32;
            let mut rec = [0u8; 12];
            rec[0] = TAG_ZERO;
            rec[4..8].copy_from_slice(&n.to_le_bytes());
            let crc = crc_of(&rec[..8]);
            rec[8..12].copy_from_slice(&crc.to_le_bytes());
            self.put(&rec)?;
            self.zero_run -= n as u64;
        }
        Ok(())
    }

    /// Writes the end record with the image digest and flushes; returns the
    /// manifest's size in bytes.
    pub fn finish(&mut self, image_digest: &[u8; 32]) -> Result<u64> {
        if self.blocks != self.header.block_count() {
            return Err(Error::invalid(
                "manifest",
                format!(
                    "{} blocks given of the {} of the image",
                    self.blocks,
                    self.header.block_count()
                ),
            ));
        }
        self.flush_data()?;
        self.flush_zeros()?;
        let mut buf = [0u8; END_LEN];
        buf[0] = TAG_END;
        buf[8..16].copy_from_slice(&self.blocks.to_le_bytes());
        buf[16..48].copy_from_slice(image_digest);
        let crc = crc_of(&buf[..48]);
        buf[48..52].copy_from_slice(&crc.to_le_bytes());
        self.put(&buf)?;
        self.out
            .flush()
            .map_err(|e| Error::io("manifest output", e))?;
        Ok(self.written)
    }

    /// Gives back the output.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// A run of consecutive blocks, as [`ManifestReader::next_run`] gives it.
#[derive(Debug)]
pub enum Run<'a> {
    /// This many zero blocks.
    Zero(u64),
    /// These data blocks, in order.
    Data(&'a [BlockDigest]),
}

/// Reads a manifest run by run, checking every checksum as it goes.
pub struct ManifestReader<R: Read> {
    input: R,
    header: ManifestHeader,
    offset: u64,
    block: u64,
    zeros_left: u64,
    data: Vec<BlockDigest>,
    data_at: usize,
    raw: Vec<u8>,
    image_digest: Option<[u8; 32]>,
}

fn corrupt(offset: u64, message: impl Into<String>) -> Error {
    Error::Corrupt {
        what: WHAT,
        offset,
        message: message.into(),
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("eight bytes"))
}

impl<R: Read> ManifestReader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Self> {
        let mut buf = [0u8; HEADER_LEN];
        read_full(&mut input, &mut buf, 0, "header")?;
        if buf[..8] != MAGIC {
            return Err(corrupt(0, "not a snapdelta block manifest (bad magic)"));
        }
        let version = u16::from_le_bytes([buf[8], buf[9]]);
        if version != VERSION {
            return Err(Error::Unsupported(format!(
                "block manifest version {version} (this build reads version {VERSION})"
            )));
        }
        if crc_of(&buf[..60]) != u32_at(&buf, 60) {
            return Err(corrupt(60, "header checksum mismatch"));
        }
        if u16::from_le_bytes([buf[10], buf[11]]) as usize != HEADER_LEN {
            return Err(corrupt(10, "header length is not 64"));
        }
        if u32_at(&buf, 12) != 0 {
            return Err(corrupt(12, "unknown flags"));
        }
        if buf[20..24] != [0; 4] || buf[40..60] != [0; 20] {
            return Err(corrupt(20, "reserved header bytes are set"));
        }
        let block_size = BlockSize::new(u32_at(&buf, 16) as u64)
            .map_err(|e| corrupt(16, format!("block size: {e}")))?;
        let image_size = u64_at(&buf, 24);
        if image_size > i64::MAX as u64 {
            return Err(corrupt(24, "image size larger than 2^63 - 1"));
        }
        let header = ManifestHeader {
            block_size,
            image_size,
        };
        if u64_at(&buf, 32) != header.block_count() {
            return Err(corrupt(
                32,
                format!(
                    "block count {} is not that of {image_size} bytes in blocks of {block_size}",
                    u64_at(&buf, 32)
                ),
            ));
        }
        Ok(ManifestReader {
            input,
            header,
            offset: HEADER_LEN as u64,
            block: 0,
            zeros_left: 0,
            data: Vec::new(),
            data_at: 0,
            raw: Vec::new(),
            image_digest: None,
        })
    }

    /// The header.
    pub fn header(&self) -> &ManifestHeader {
        &self.header
    }

    /// The next run of at most `max` blocks (at least one). Past the
    /// manifest's last block, blocks read as zero blocks (an image reads as
    /// zeros past its end); the end record has then been read and checked.
    pub fn next_run(&mut self, max: u64) -> Result<Run<'_>> {
        assert!(max > 0, "a run of no blocks");
        if self.zeros_left == 0 && self.data_at == self.data.len() {
            if self.block == self.header.block_count() {
                self.read_end()?;
                return Ok(Run::Zero(max));
            }
            self.read_record()?;
        }
        if self.zeros_left > 0 {
            let n = self.zeros_left.min(max);
            self.zeros_left -= n;
            self.block += n;
            return Ok(Run::Zero(n));
        }
        let n = ((self.data.len() - self.data_at) as u64).min(max) as usize;
        let from = self.data_at;
        self.data_at += n;
        self.block += n as u64;
        Ok(Run::Data(&self.data[from..from + n]))
    }

    fn read_record(&mut self) -> Result<()> {
        let at = self.offset;
        let mut head = [0u8; 8];
        read_full(&mut self.input, &mut head, at, "record")?;
        let count = u32_at(&head, 4) as u64;
        if head[1..4] != [0; 3] {
            return Err(corrupt(at + 1, "reserved record bytes are set"));
        }
        let left = self.header.block_count() - self.block;
        match head[0] {
            TAG_ZERO | TAG_DATA if count == 0 => return Err(corrupt(at + 4, "a run of no blocks")),
            TAG_ZERO | TAG_DATA if count > left => {
                return Err(corrupt(
                    at + 4,
                    format!("a run of {count} blocks where {left} are left"),
                ))
            }
            TAG_DATA if count > MAX_DATA_RUN as u64 => {
                return Err(corrupt(
                    at + 4,
                    format!("a data run of {count} blocks (at most {MAX_DATA_RUN})"),
                ))
            }
            TAG_ZERO => {
                let mut crc = [0u8; 4];
                read_full(&mut self.input, &mut crc, at + 8, "record")?;
                if crc_of(&head) != u32::from_le_bytes(crc) {
                    return Err(corrupt(at + 8, "record checksum mismatch"));
                }
                self.offset += 12;
                self.zeros_left = count;
            }
            TAG_DATA => {
                let len = count as usize * ENTRY_LEN;
                self.raw.clear();
                self.raw.extend_from_slice(&head);
                self.raw.resize(8 + len + 4, 0);
                read_full(&mut self.input, &mut self.raw[8..], at + 8, "record")?;
                let crc = u32_at(&self.raw, 8 + len);
                if crc_of(&self.raw[..8 + len]) != crc {
                    return Err(corrupt(at + 8 + len as u64, "record checksum mismatch"));
                }
                self.data.clear();
                self.data_at = 0;
                self.data
                    .extend(
                        self.raw[8..8 + len]
                            .chunks_exact(ENTRY_LEN)
                            .map(|e| BlockDigest {
                                digest: e[..32].try_into().expect("32 bytes"),
                                crc: u32_at(e, 32),
                            }),
                    );
                self.offset += (8 + len + 4) as u64;
            }
            TAG_END => {
                return Err(corrupt(
                    at,
                    format!(
                        "end record after {} of {} blocks",
                        self.block,
                        self.header.block_count()
                    ),
                ))
            }
            tag => return Err(corrupt(at, format!("unknown record tag {tag:#04x}"))),
        }
        Ok(())
    }

    fn read_end(&mut self) -> Result<[u8; 32]> {
        if let Some(d) = self.image_digest {
            return Ok(d);
        }
        let at = self.offset;
        let mut buf = [0u8; END_LEN];
        read_full(&mut self.input, &mut buf, at, "end record")?;
        if buf[0] != TAG_END {
            return Err(corrupt(
                at,
                format!("{:#04x} where the end record belongs", buf[0]),
            ));
        }
        if crc_of(&buf[..48]) != u32_at(&buf, 48) {
            return Err(corrupt(at + 48, "end record checksum mismatch"));
        }
        if buf[1..8] != [0; 7] {
            return Err(corrupt(at + 1, "reserved end record bytes are set"));
        }
        if u64_at(&buf, 8) != self.header.block_count() {
            return Err(corrupt(at + 8, "end record block count differs"));
        }
        let mut extra = [0u8; 1];
        loop {
            match self.input.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => return Err(corrupt(at + END_LEN as u64, "bytes after the end record")),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("manifest", e)),
            }
        }
        self.offset += END_LEN as u64;
        let digest: [u8; 32] = buf[16..48].try_into().expect("32 bytes");
        self.image_digest = Some(digest);
        Ok(digest)
    }

    /// Reads (and checks) the rest of the manifest and returns the image
    /// digest of its end record.
    pub fn finish(&mut self) -> Result<[u8; 32]> {
        while self.block < self.header.block_count() {
            self.next_run(u64::MAX)?;
        }
        self.read_end()
    }
}

fn read_full(input: &mut impl Read, buf: &mut [u8], at: u64, what: &str) -> Result<()> {
    input.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            corrupt(
                at,
                format!("truncated: the manifest ends inside its {what}"),
            )
        } else {
            Error::io("manifest", e)
        }
    })
}

/// What a manifest holds, as `snapdelta info` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ManifestInfo {
    /// Always `manifest`.
    pub kind: &'static str,
    /// Format version.
    pub version: u16,
    /// Block size in bytes.
    pub block_size: u64,
    /// The image's size in bytes.
    pub image_size: u64,
    /// Blocks in all.
    pub blocks: u64,
    /// Blocks that are not all zeros.
    pub data_blocks: u64,
    /// Blocks that are all zeros.
    pub zero_blocks: u64,
    /// The image digest, in hex.
    pub image_digest: String,
}

/// Reads a whole manifest, checking it, and summarises it.
pub fn inspect_manifest(input: impl Read) -> Result<ManifestInfo> {
    let mut reader = ManifestReader::new(input)?;
    let (mut data, mut zero) = (0, 0);
    while reader.block < reader.header.block_count() {
        match reader.next_run(u64::MAX)? {
            Run::Zero(n) => zero += n,
            Run::Data(d) => data += d.len() as u64,
        }
    }
    let digest = reader.finish()?;
    Ok(ManifestInfo {
        kind: "manifest",
        version: VERSION,
        block_size: reader.header.block_size.get(),
        image_size: reader.header.image_size,
        blocks: reader.header.block_count(),
        data_blocks: data,
        zero_blocks: zero,
        image_digest: hex(&digest),
    })
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the manifest of `image` to `out`, hashing its blocks in
/// parallel; returns the manifest's size in bytes.
pub fn write_manifest<W: Write>(
    image: &Source<'_>,
    block_size: BlockSize,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let header = ManifestHeader {
        block_size,
        image_size: image.len(),
    };
    let mut writer = ManifestWriter::new(out, header)?;
    let scan = scan_blocks::<io::Empty, W>(image, block_size, None, Some(&mut writer), progress)?;
    // A manifest mixing two states of the image gets no end record.
    image.check_unchanged()?;
    writer.finish(&scan.digest)
}

/// Checks that `image` is the image `manifest` describes: same size, and
/// every block the same. The error names the first block that differs.
pub fn verify_image<R: Read>(
    image: &Source<'_>,
    manifest: &mut ManifestReader<R>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let h = *manifest.header();
    if image.len() != h.image_size {
        return Err(Error::Mismatch(format!(
            "the base is {} bytes, the manifest describes an image of {} bytes",
            image.len(),
            h.image_size
        )));
    }
    let scan = scan_blocks::<R, io::Sink>(image, h.block_size, Some(manifest), None, progress)?;
    image.check_unchanged()?;
    if let Some(first) = scan.map.extents.first() {
        return Err(Error::Mismatch(format!(
            "the base differs from the manifest at byte {} (in its block of {} bytes)",
            first.offset,
            h.block_size.get()
        )));
    }
    if manifest.finish()? != scan.digest {
        return Err(Error::Mismatch(
            "the base's image digest differs from the manifest's".into(),
        ));
    }
    Ok(())
}

/// Exports the changes from the image `base` describes to `target` into
/// `sink`, reading the target only; with `manifest_out`, writes the
/// target's manifest in the same pass.
///
/// The export equals the one [`crate::export_images`] makes from the base
/// image itself. `options.block_size` must be the manifest's. A target
/// that ends inside a block the base fills further with non-zero bytes is
/// refused as [`Error::Unsupported`] (see `docs/manifest.md`).
pub fn export_with_manifest<R: Read, W: Write>(
    base: &mut ManifestReader<R>,
    target: &Image,
    sink: &mut dyn Sink,
    options: &ExportOptions,
    manifest_out: Option<&mut ManifestWriter<W>>,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExportSummary> {
    let started = Instant::now();
    let h = *base.header();
    if h.block_size != options.block_size {
        return Err(Error::invalid(
            "block-size",
            format!(
                "the manifest's blocks are {}, the export's {}: leave out --block-size, or give {}",
                h.block_size,
                options.block_size,
                h.block_size.get()
            ),
        ));
    }
    let source = target.source();
    let total = source.len();
    let mut manifest_out = manifest_out;
    let scan = scan_blocks(
        &source,
        h.block_size,
        Some(&mut *base),
        manifest_out.as_deref_mut(),
        &mut |done| {
            progress(Progress {
                phase: Phase::Detect,
                done,
                total,
            })
        },
    )?;
    let base_digest = base.finish()?;
    let digests = options.digests.then_some(crate::digest::Digests {
        base: base_digest,
        target: scan.digest,
    });
    let empty = Source::from_bytes(&[]);
    let crcs: &BaseCrcs = &scan.base_crcs;
    let mut summary = stream(
        &scan.map,
        &empty,
        &source,
        digests.as_ref(),
        Some(crcs),
        sink,
        progress,
    )?;
    if let Some(out) = manifest_out {
        out.finish(&scan.digest)?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// [`crate::export_images`], writing the target's manifest to `out` in
/// the same pass over the target (with `base`, that pass reads both
/// images; the manifest is of the target alone).
pub fn export_writing_manifest<W: Write>(
    base: Option<&Image>,
    target: &Image,
    sink: &mut dyn Sink,
    options: &ExportOptions,
    out: &mut ManifestWriter<W>,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExportSummary> {
    let started = Instant::now();
    if out.header.block_size != options.block_size || out.header.image_size != target.size() {
        return Err(Error::invalid(
            "manifest",
            "the manifest's header does not describe the target at the export's block size",
        ));
    }
    let base = base.map_or_else(|| Source::from_bytes(&[]), Image::source);
    let target = target.source();
    let total = target.len();
    let (map, digests, target_digest) = crate::detect::scan_with_manifest(
        &base,
        &target,
        options.block_size,
        options.digests,
        out,
        &mut |done| {
            progress(Progress {
                phase: Phase::Detect,
                done,
                total,
            })
        },
    )?;
    let mut summary = stream(&map, &base, &target, digests.as_ref(), None, sink, progress)?;
    out.finish(&target_digest)?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Opens the block manifest at `path` and checks its header; a damaged
/// header is an error naming the file.
pub fn open_manifest(path: &Path) -> Result<ManifestReader<BufReader<File>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    ManifestReader::new(BufReader::with_capacity(1 << 20, file)).map_err(|e| match e {
        Error::Corrupt {
            what,
            offset,
            message,
        } => Error::Corrupt {
            what,
            offset,
            message: format!("{message} (in {})", path.display()),
        },
        e => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(size: u64) -> ManifestHeader {
        ManifestHeader {
            block_size: BlockSize::new(4096).unwrap(),
            image_size: size,
        }
    }

    fn entry(i: u8) -> BlockEntry {
        BlockEntry::Data(BlockDigest {
            digest: [i; 32],
            crc: i as u32 * 7,
        })
    }

    #[test]
    fn runs_round_trip() {
        let size = 4096 * 10_000 + 5;
        let mut w = ManifestWriter::new(Vec::new(), header(size)).unwrap();
        let mut want = Vec::new();
        for i in 0..10_001u64 {
            let e = if i % 7 < 3 {
                BlockEntry::Zero
            } else {
                entry(i as u8)
            };
            w.push(&e).unwrap();
            want.push(e);
        }
        assert!(w.push(&BlockEntry::Zero).is_err());
        w.finish(&[9; 32]).unwrap();
        let bytes = w.into_inner();
        let mut r = ManifestReader::new(&bytes[..]).unwrap();
        let mut got = Vec::new();
        while got.len() < want.len() {
            match r.next_run(5000).unwrap() {
                Run::Zero(n) => got.extend((0..n).map(|_| BlockEntry::Zero)),
                Run::Data(d) => got.extend(d.iter().map(|d| BlockEntry::Data(*d))),
            }
        }
        assert_eq!(got, want);
        assert!(matches!(r.next_run(3).unwrap(), Run::Zero(3)));
        assert_eq!(r.finish().unwrap(), [9; 32]);
        let info = inspect_manifest(&bytes[..]).unwrap();
        assert_eq!(info.data_blocks + info.zero_blocks, 10_001);
    }

    #[test]
    fn every_truncation_and_flipped_byte_is_refused() {
        let mut w = ManifestWriter::new(Vec::new(), header(4096 * 5)).unwrap();
        for e in [
            entry(1),
            BlockEntry::Zero,
            BlockEntry::Zero,
            entry(2),
            entry(3),
        ] {
            w.push(&e).unwrap();
        }
        w.finish(&[1; 32]).unwrap();
        let bytes = w.into_inner();
        for cut in 0..bytes.len() {
            assert!(inspect_manifest(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(inspect_manifest(&bad[..]).is_err(), "flip at {at}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(inspect_manifest(&long[..]).is_err());
    }
}
