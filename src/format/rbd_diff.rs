//! Ceph's `rbd diff` stream: what `rbd export-diff` writes and
//! `rbd import-diff` and `rbd merge-diff` read.
//!
//! A stream is a 12-byte banner, `rbd diff v1\n` or `rbd diff v2\n`, then
//! records, each a one-byte tag; all integers are little-endian.
//!
//! | tag | v1 body                          | meaning                     |
//! |-----|----------------------------------|-----------------------------|
//! | `f` | le32 name length, name           | the snapshot diffed from    |
//! | `t` | le32 name length, name           | the snapshot diffed to      |
//! | `s` | le64 size                        | the image's size (a resize) |
//! | `w` | le64 offset, le64 length, bytes  | write these bytes           |
//! | `z` | le64 offset, le64 length         | zero this range             |
//! | `e` | nothing                          | end of the stream           |
//!
//! In v2 every record but `e` puts a le64 payload length between its tag
//! and its body, and a reader skips records whose tag it does not know
//! (such as `p`, a snapshot's protection status) by that length.
//!
//! [`RbdDiffEncoder`] writes v1, which every Ceph release reads, in one
//! pass; [`RbdDiffReader`] reads and checks both versions with bounded
//! memory.

use crate::error::{Error, Result};
use crate::sink::{DataExtent, ExportHeader, Sink, SinkSummary, ZeroExtent};
use std::io::{self, Read, Write};

/// The banner of a version 1 stream.
pub const BANNER_V1: &[u8; 12] = b"rbd diff v1\n";
/// The banner of a version 2 stream.
pub const BANNER_V2: &[u8; 12] = b"rbd diff v2\n";
/// The most bytes the encoder puts in one `w` record; a longer data
/// extent becomes several records.
pub const MAX_WRITE_RECORD: u64 = 4 << 20;
/// The most bytes the reader yields in one [`RbdRecord::Write`]; a longer
/// `w` record is yielded as several consecutive chunks.
pub const MAX_WRITE_CHUNK: u64 = 1 << 20;
/// The longest snapshot name, in bytes, that the encoder writes and the
/// reader accepts (Ceph's own limit when it reads a diff).
pub const MAX_SNAP_NAME: usize = 4096;

const TAG_FROM: u8 = b'f';
const TAG_TO: u8 = b't';
const TAG_SIZE: u8 = b's';
const TAG_WRITE: u8 = b'w';
const TAG_ZERO: u8 = b'z';
const TAG_END: u8 = b'e';

const WHAT: &str = "rbd diff stream";

fn corrupt(offset: u64, message: impl Into<String>) -> Error {
    Error::Corrupt {
        what: WHAT,
        offset,
        message: message.into(),
    }
}

fn check_name(field: &'static str, name: Option<String>) -> Result<Option<String>> {
    if let Some(n) = &name {
        if n.is_empty() {
            return Err(Error::invalid(field, "a snapshot name may not be empty"));
        }
        if n.contains('\0') {
            return Err(Error::invalid(
                field,
                "a snapshot name may not contain a NUL byte",
            ));
        }
        if n.len() > MAX_SNAP_NAME {
            return Err(Error::invalid(
                field,
                format!(
                    "a snapshot name of {} bytes is longer than {MAX_SNAP_NAME}",
                    n.len()
                ),
            ));
        }
    }
    Ok(name)
}

/// Writes a version 1 `rbd diff` stream to any `io::Write`, front to back.
///
/// It is a [`Sink`]: feed it through [`crate::export_images`] or
/// [`crate::export_map`]. The stream holds the snapshot names given, the
/// target's size, one `w` record per [`MAX_WRITE_RECORD`] bytes of each
/// data extent, one `z` record per zero extent, and the end record. It is
/// what `rbd import-diff` applies to an image holding the base.
///
/// # Example
///
/// ```
/// use snapdelta::format::rbd_diff::{RbdDiffEncoder, RbdDiffReader, RbdRecord};
/// use snapdelta::{detect, export_map, BlockSize};
///
/// let base = vec![1u8; 16384];
/// let mut target = base.clone();
/// target[4096..8192].fill(2);
/// let map = detect(&base, &target, BlockSize::new(4096)?);
/// let mut out = Vec::new();
/// let mut encoder = RbdDiffEncoder::new(&mut out, None, Some("snap1".into()))?;
/// export_map(&map, &base, &target, None, &mut encoder)?;
///
/// let mut reader = RbdDiffReader::new(&out[..])?;
/// assert_eq!(reader.next_record()?, Some(RbdRecord::ToSnap("snap1")));
/// assert_eq!(reader.next_record()?, Some(RbdRecord::Size(16384)));
/// assert_eq!(
///     reader.next_record()?,
///     Some(RbdRecord::Write { offset: 4096, data: &[2u8; 4096][..] })
/// );
/// assert_eq!(reader.next_record()?, None);
/// # Ok::<(), snapdelta::Error>(())
/// ```
pub struct RbdDiffEncoder<W: Write> {
    out: W,
    written: u64,
    from_snap: Option<String>,
    to_snap: Option<String>,
}

impl<W: Write> RbdDiffEncoder<W> {
    /// An encoder writing to `out`, naming the snapshots diffed from and to
    /// when given. Refuses a name that is empty, holds a NUL byte or is
    /// longer than [`MAX_SNAP_NAME`] bytes.
    pub fn new(out: W, from_snap: Option<String>, to_snap: Option<String>) -> Result<Self> {
        Ok(RbdDiffEncoder {
            out,
            written: 0,
            from_snap: check_name("from snapshot", from_snap)?,
            to_snap: check_name("to snapshot", to_snap)?,
        })
    }

    /// Gives back the output.
    pub fn into_inner(self) -> W {
        self.out
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("export output", e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn put_name(&mut self, tag: u8, name: Option<String>) -> Result<()> {
        if let Some(name) = name {
            let mut head = [0u8; 5];
            head[0] = tag;
            // Checked in `new`: at most MAX_SNAP_NAME bytes.
            head[1..].copy_from_slice(&(name.len() as u32).to_le_bytes());
            self.put(&head)?;
            self.put(name.as_bytes())?;
        }
        Ok(())
    }

    fn put_range(&mut self, tag: u8, offset: u64, length: u64) -> Result<()> {
        let mut head = [0u8; 17];
        head[0] = tag;
        head[1..9].copy_from_slice(&offset.to_le_bytes());
        head[9..].copy_from_slice(&length.to_le_bytes());
        self.put(&head)
    }
}

impl<W: Write> Sink for RbdDiffEncoder<W> {
    fn begin(&mut self, header: &ExportHeader) -> Result<()> {
        self.put(BANNER_V1)?;
        let from = self.from_snap.take();
        self.put_name(TAG_FROM, from)?;
        let to = self.to_snap.take();
        self.put_name(TAG_TO, to)?;
        let mut size = [0u8; 9];
        size[0] = TAG_SIZE;
        size[1..].copy_from_slice(&header.target_size.to_le_bytes());
        self.put(&size)
    }

    fn data(&mut self, extent: &DataExtent<'_>) -> Result<()> {
        let mut offset = extent.offset;
        for chunk in extent.bytes.chunks(MAX_WRITE_RECORD as usize) {
            self.put_range(TAG_WRITE, offset, chunk.len() as u64)?;
            self.put(chunk)?;
            offset += chunk.len() as u64;
        }
        Ok(())
    }

    fn zero(&mut self, extent: &ZeroExtent) -> Result<()> {
        if extent.length > 0 {
            self.put_range(TAG_ZERO, extent.offset, extent.length)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<SinkSummary> {
        self.put(&[TAG_END])?;
        self.out
            .flush()
            .map_err(|e| Error::io("export output", e))?;
        Ok(SinkSummary {
            bytes_written: self.written,
        })
    }
}

/// One record of an `rbd diff` stream, as read and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RbdRecord<'a> {
    /// The snapshot the diff starts from (`f`).
    FromSnap(&'a str),
    /// The snapshot the diff leads to (`t`).
    ToSnap(&'a str),
    /// The image's size in bytes (`s`): resize the image to it.
    Size(u64),
    /// Bytes to write (part of a `w` record: at most [`MAX_WRITE_CHUNK`]
    /// bytes, never empty).
    Write {
        /// Where the bytes go in the image.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
    },
    /// A range to zero (`z`).
    Zero {
        /// Where the range starts.
        offset: u64,
        /// Its length, never 0.
        length: u64,
    },
}

/// The rest of a `w` record not yet yielded.
struct PendingWrite {
    /// Where the record starts in the stream.
    record_at: u64,
    /// Image offset of the next byte.
    offset: u64,
    /// Bytes still to read.
    remaining: u64,
}

/// Reads and checks an `rbd diff` stream, v1 or v2, from any `io::Read`.
///
/// Records are yielded as they arrive; the first fault is an
/// [`Error::Corrupt`] naming the byte offset in the stream. Checks: the
/// stream ends right after its `e` record; v1 knows every tag; names are
/// UTF-8 of at most [`MAX_SNAP_NAME`] bytes; `f`, `t` and `s` come at most
/// once each and before any `w` or `z`; `w` and `z` follow an `s` record,
/// are not empty, and lie inside the size; a v2 payload length matches
/// its record's body. Unknown v2 records (such as `p`) are skipped. A
/// stream with no `s` record is accepted when it has no `w` or `z` either.
///
/// Memory stays bounded whatever the length fields say: a `w` record is
/// read lazily in chunks of at most [`MAX_WRITE_CHUNK`] bytes.
pub struct RbdDiffReader<R: Read> {
    input: R,
    pos: u64,
    version: u8,
    size: Option<u64>,
    from_seen: bool,
    to_seen: bool,
    data_seen: bool,
    /// Where the last write or zero record ended in the image.
    next_offset: u64,
    ended: bool,
    name: String,
    chunk: Vec<u8>,
    pending: Option<PendingWrite>,
}

/// Fills `buf` from `input`, advancing `pos`; running out of input is a
/// truncation at the offset where it ran out.
fn fill<R: Read>(input: &mut R, pos: &mut u64, buf: &mut [u8], what: &str) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(corrupt(
                    *pos + got as u64,
                    format!("stream truncated inside {what}"),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("rbd diff input", e)),
        }
    }
    *pos += buf.len() as u64;
    Ok(())
}

impl<R: Read> RbdDiffReader<R> {
    /// Reads and checks the banner.
    pub fn new(mut input: R) -> Result<Self> {
        let mut banner = [0u8; 12];
        let mut got = 0;
        while got < banner.len() {
            match input.read(&mut banner[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("rbd diff input", e)),
            }
        }
        let seen = &banner[..got];
        let version = if seen == BANNER_V1 {
            1
        } else if seen == BANNER_V2 {
            2
        } else if BANNER_V1.starts_with(seen) || BANNER_V2.starts_with(seen) {
            return Err(corrupt(got as u64, "stream truncated inside the banner"));
        } else {
            return Err(corrupt(
                0,
                "not an rbd diff stream (the banner is not \"rbd diff v1\" or \"rbd diff v2\")",
            ));
        };
        Ok(RbdDiffReader {
            input,
            pos: banner.len() as u64,
            version,
            size: None,
            from_seen: false,
            to_seen: false,
            data_seen: false,
            next_offset: 0,
            ended: false,
            name: String::new(),
            chunk: Vec::new(),
            pending: None,
        })
    }

    /// The stream's version: 1 or 2.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The image size from the `s` record, once it has been read.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Bytes of the stream read so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn read_u64(&mut self, what: &str) -> Result<u64> {
        let mut buf = [0u8; 8];
        fill(&mut self.input, &mut self.pos, &mut buf, what)?;
        Ok(u64::from_le_bytes(buf))
    }

    fn read_u32(&mut self, what: &str) -> Result<u32> {
        let mut buf = [0u8; 4];
        fill(&mut self.input, &mut self.pos, &mut buf, what)?;
        Ok(u32::from_le_bytes(buf))
    }

    /// The next record, or `None` once the `e` record has been read and
    /// the stream was found to end there.
    pub fn next_record(&mut self) -> Result<Option<RbdRecord<'_>>> {
        if self.ended {
            return Ok(None);
        }
        if self.pending.is_some() {
            return self.write_chunk().map(Some);
        }
        // Find the next record this reader knows, skipping unknown v2 ones.
        let (at, tag, payload_len) = loop {
            let at = self.pos;
            let mut tag = [0u8; 1];
            loop {
                match self.input.read(&mut tag) {
                    Ok(0) => return Err(corrupt(at, "stream truncated: no end record")),
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io("rbd diff input", e)),
                }
            }
            self.pos += 1;
            let tag = tag[0];
            if tag == TAG_END {
                self.check_end()?;
                self.ended = true;
                return Ok(None);
            }
            let known = matches!(tag, TAG_FROM | TAG_TO | TAG_SIZE | TAG_WRITE | TAG_ZERO);
            if self.version == 1 {
                if !known {
                    return Err(corrupt(
                        at,
                        format!("unknown record tag 0x{tag:02x} in a v1 stream"),
                    ));
                }
                break (at, tag, None);
            }
            let len = self.read_u64(&format!("the payload length of the record at byte {at}"))?;
            if known {
                break (at, tag, Some(len));
            }
            self.skip(at, tag, len)?;
        };
        match tag {
            TAG_FROM | TAG_TO => self.read_name(at, tag, payload_len).map(Some),
            TAG_SIZE => {
                check_payload(at, "size", payload_len, |l| l == 8)?;
                let size = self.read_u64(&format!("the size record at byte {at}"))?;
                self.metadata_allowed(at, "size")?;
                if self.size.is_some() {
                    return Err(corrupt(at, "a second size record"));
                }
                if size > i64::MAX as u64 {
                    return Err(corrupt(
                        at,
                        format!("image size {size} is 2^63 bytes or more"),
                    ));
                }
                self.size = Some(size);
                Ok(Some(RbdRecord::Size(size)))
            }
            _ => {
                let kind = if tag == TAG_WRITE { "write" } else { "zero" };
                check_payload(at, kind, payload_len, |l| {
                    if tag == TAG_WRITE {
                        l >= 16
                    } else {
                        l == 16
                    }
                })?;
                let what = format!("the {kind} record at byte {at}");
                let offset = self.read_u64(&what)?;
                let length = self.read_u64(&what)?;
                if tag == TAG_WRITE {
                    check_payload(at, kind, payload_len, |l| l.checked_sub(16) == Some(length))?;
                }
                self.check_range(at, kind, offset, length)?;
                self.next_offset = offset + length;
                self.data_seen = true;
                if tag == TAG_ZERO {
                    return Ok(Some(RbdRecord::Zero { offset, length }));
                }
                self.pending = Some(PendingWrite {
                    record_at: at,
                    offset,
                    remaining: length,
                });
                self.write_chunk().map(Some)
            }
        }
    }

    fn metadata_allowed(&self, at: u64, kind: &str) -> Result<()> {
        if self.data_seen {
            return Err(corrupt(
                at,
                format!("{kind} record after a write or zero record"),
            ));
        }
        Ok(())
    }

    fn read_name(&mut self, at: u64, tag: u8, payload_len: Option<u64>) -> Result<RbdRecord<'_>> {
        let kind = if tag == TAG_FROM {
            "from-snapshot"
        } else {
            "to-snapshot"
        };
        check_payload(at, kind, payload_len, |l| l >= 4)?;
        let len = self.read_u32(&format!("the {kind} record at byte {at}"))?;
        check_payload(at, kind, payload_len, |l| {
            l.checked_sub(4) == Some(u64::from(len))
        })?;
        if len as usize > MAX_SNAP_NAME {
            return Err(corrupt(
                at,
                format!("{kind} name of {len} bytes is longer than {MAX_SNAP_NAME}"),
            ));
        }
        let mut raw = vec![0u8; len as usize];
        fill(
            &mut self.input,
            &mut self.pos,
            &mut raw,
            &format!("the {kind} record at byte {at}"),
        )?;
        self.metadata_allowed(at, kind)?;
        let seen = if tag == TAG_FROM {
            &mut self.from_seen
        } else {
            &mut self.to_seen
        };
        if *seen {
            return Err(corrupt(at, format!("a second {kind} record")));
        }
        *seen = true;
        self.name =
            String::from_utf8(raw).map_err(|_| corrupt(at, format!("{kind} name is not UTF-8")))?;
        // The names a snapshot can have, as the encoder writes them.
        if self.name.is_empty() || self.name.contains('\0') {
            return Err(corrupt(
                at,
                format!("{kind} name is empty or holds a NUL byte"),
            ));
        }
        Ok(if tag == TAG_FROM {
            RbdRecord::FromSnap(&self.name)
        } else {
            RbdRecord::ToSnap(&self.name)
        })
    }

    fn check_range(&self, at: u64, kind: &str, offset: u64, length: u64) -> Result<()> {
        let Some(size) = self.size else {
            return Err(corrupt(at, format!("{kind} record before the size record")));
        };
        if length == 0 {
            return Err(corrupt(
                at,
                format!("{kind} record at image offset {offset} has length 0"),
            ));
        }
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(corrupt(
                at,
                format!("{kind} record {offset}+{length} extends past the image size {size}"),
            ));
        }
        // Applying records in any order must give one result, so they come
        // in increasing offset order without overlapping, as `rbd
        // export-diff` writes them and `rbd merge-diff` requires.
        if offset < self.next_offset {
            return Err(corrupt(
                at,
                format!(
                    "{kind} record at image offset {offset} is out of order: the record before it ends at {}",
                    self.next_offset
                ),
            ));
        }
        Ok(())
    }

    /// Reads and yields the next chunk of the pending `w` record.
    fn write_chunk(&mut self) -> Result<RbdRecord<'_>> {
        let Some(p) = self.pending.as_mut() else {
            return Err(corrupt(self.pos, "no write record is pending"));
        };
        let n = p.remaining.min(MAX_WRITE_CHUNK) as usize;
        let offset = p.offset;
        let what = format!("the data of the write record at byte {}", p.record_at);
        p.offset += n as u64;
        p.remaining -= n as u64;
        if p.remaining == 0 {
            self.pending = None;
        }
        self.chunk.resize(n, 0);
        fill(&mut self.input, &mut self.pos, &mut self.chunk[..n], &what)?;
        Ok(RbdRecord::Write {
            offset,
            data: &self.chunk[..n],
        })
    }

    /// Reads and discards the payload of an unknown v2 record.
    fn skip(&mut self, at: u64, tag: u8, mut len: u64) -> Result<()> {
        let mut buf = [0u8; 16384];
        let what = format!("the payload of the record with tag 0x{tag:02x} at byte {at}");
        while len > 0 {
            let n = len.min(buf.len() as u64) as usize;
            fill(&mut self.input, &mut self.pos, &mut buf[..n], &what)?;
            len -= n as u64;
        }
        Ok(())
    }

    /// After the end record the input must end.
    fn check_end(&mut self) -> Result<()> {
        let mut extra = [0u8; 1];
        loop {
            match self.input.read(&mut extra) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(corrupt(self.pos, "unexpected data after the end record")),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("rbd diff input", e)),
            }
        }
    }
}

/// Checks a v2 payload length (`None` in v1) against a record's body.
fn check_payload(
    at: u64,
    kind: &str,
    payload_len: Option<u64>,
    ok: impl FnOnce(u64) -> bool,
) -> Result<()> {
    match payload_len {
        Some(len) if !ok(len) => Err(corrupt(
            at,
            format!("payload length {len} does not fit a {kind} record"),
        )),
        _ => Ok(()),
    }
}
