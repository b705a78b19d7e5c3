//! The extent-list stream: encoder and decoder of snapdelta's own export
//! format, `docs/extent-list.md`. Field names follow that specification.

use crate::crypt::{CustomerKey, Sealer, TAG_LEN};
use crate::error::{Error, Result};
use crate::geometry::BlockSize;
use crate::sink::{DataExtent, ExportHeader, Sink, SinkSummary, ZeroExtent};
use rayon::prelude::*;
use std::io::{self, Read, Write};

/// The stream's first eight bytes.
pub const MAGIC: [u8; 8] = *b"\x89SDX\r\n\x1a\n";
/// The version this module writes and reads.
pub const VERSION: u16 = 1;
/// The largest `record_limit` a stream may declare: what a reader may have
/// to allocate for one record.
pub const MAX_RECORD_LIMIT: u64 = 8 << 20;
/// The `record_limit` this encoder uses for block sizes up to 1 MiB.
const PREFERRED_RECORD_LIMIT: u64 = 1 << 20;

const HEADER_LEN: usize = 128;
const RECORD_LEN: usize = 40;
const END_LEN: usize = 80;
const KEY_BLOCK_LEN: usize = 64;

const FLAG_PAYLOADS: u32 = 1;
const FLAG_BASE_DIGEST: u32 = 2;
const FLAG_TARGET_DIGEST: u32 = 4;
const FLAG_ENCRYPTED: u32 = 8;
const KNOWN_FLAGS: u32 = FLAG_PAYLOADS | FLAG_BASE_DIGEST | FLAG_TARGET_DIGEST | FLAG_ENCRYPTED;

const TAG_DATA: u8 = b'D';
const TAG_ZERO: u8 = b'Z';
const TAG_END: u8 = b'E';
const RECORD_ZSTD: u8 = 1;

const WHAT: &str = "extent-list stream";

/// CRC-32C of `bytes` followed by `zeros` zero bytes, in time that grows
/// with the length of `bytes` and only the logarithm of `zeros`.
pub(crate) fn crc_with_zeros(bytes: &[u8], zeros: u64) -> u32 {
    crc_append_zeros(crc32c::crc32c(bytes), zeros)
}

/// The CRC-32C of the bytes whose CRC-32C is `crc` followed by `zeros`
/// zero bytes.
pub(crate) fn crc_append_zeros(crc: u32, zeros: u64) -> u32 {
    let mut crc = crc;
    // Append runs of zeros of doubling length, one per set bit of `zeros`.
    let mut run_crc = crc32c::crc32c(&[0]);
    let mut run_len: u64 = 1;
    let mut left = zeros;
    while left > 0 {
        if left & 1 == 1 {
            crc = crc32c::crc32c_combine(crc, run_crc, run_len as usize);
        }
        left >>= 1;
        if left > 0 {
            run_crc = crc32c::crc32c_combine(run_crc, run_crc, run_len as usize);
            run_len *= 2;
        }
    }
    crc
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(buf[at..at + 2].try_into().expect("two bytes"))
}
fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("four bytes"))
}
fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("eight bytes"))
}

/// A `Write` that counts what passes through it.
struct Counted<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Counted<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner
            .write_all(bytes)
            .map_err(|e| Error::io("export output", e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// Writes an extent-list stream to any `io::Write`, front to back.
///
/// It is a [`Sink`]: feed it through [`crate::export_images`] or
/// [`crate::export_map`]. With payloads it writes `METADATA_AND_DATA`,
/// without them `METADATA_ONLY`.
pub struct ExtentListEncoder<W: Write> {
    out: Counted<W>,
    payloads: bool,
    zstd_level: Option<i32>,
    record_limit: u64,
    target_digest: Option<[u8; 32]>,
    record_count: u64,
    data_bytes: u64,
    zero_bytes: u64,
    stored_bytes: u64,
    encryption: Option<Encryption>,
}

/// The sealing state of an encrypted stream: its key's SHA-256, its
/// sealer and the header and key block every seal authenticates.
struct Encryption {
    key_sha256: [u8; 32],
    sealer: Sealer,
    prefix: [u8; 8],
    head: Vec<u8>,
}

impl<W: Write> ExtentListEncoder<W> {
    /// An encoder writing to `out`; `payloads` selects `METADATA_AND_DATA`
    /// (true) or `METADATA_ONLY` (false); `zstd_level`, when set,
    /// compresses each data record whose compressed form is smaller.
    pub fn new(out: W, payloads: bool, zstd_level: Option<i32>) -> Self {
        ExtentListEncoder {
            out: Counted {
                inner: out,
                written: 0,
            },
            payloads,
            zstd_level,
            record_limit: PREFERRED_RECORD_LIMIT,
            target_digest: None,
            record_count: 0,
            data_bytes: 0,
            zero_bytes: 0,
            stored_bytes: 0,
            encryption: None,
        }
    }

    /// Encrypts the stream with `key` (see *Encryption* in
    /// `docs/extent-list.md`): the header then carries the key's SHA-256
    /// and a fresh random nonce prefix, and every record is sealed.
    ///
    /// Known shortcoming: only payloads are secret. Record headers
    /// (offsets, lengths, the CRC-32C of each record's plaintext), the
    /// header's totals and the image digests are authenticated but stay
    /// in the clear; each payload is copied once to be sealed.
    pub fn with_key(mut self, key: &CustomerKey) -> Result<Self> {
        let prefix = Sealer::random_prefix()?;
        self.encryption = Some(Encryption {
            key_sha256: key.sha256(),
            sealer: Sealer::new(key, prefix),
            prefix,
            head: Vec::new(),
        });
        Ok(self)
    }

    /// Gives back the output.
    pub fn into_inner(self) -> W {
        self.out.inner
    }

    /// Writes a record: its header, then its payload, sealed when the
    /// stream is encrypted (`sealed`, when given, is that payload already
    /// sealed: its ciphertext and tag).
    fn record(
        &mut self,
        rec: &[u8; RECORD_LEN],
        stored: &[u8],
        sealed: Option<(Vec<u8>, [u8; TAG_LEN])>,
    ) -> Result<()> {
        self.out.put(rec)?;
        match (&self.encryption, sealed) {
            (None, _) => self.out.put(stored)?,
            (Some(_), Some((cipher, tag))) => {
                self.out.put(&cipher)?;
                self.out.put(&tag)?;
            }
            (Some(enc), None) => {
                let mut cipher = stored.to_vec();
                let tag = enc
                    .sealer
                    .seal(self.record_count, &[&enc.head, rec], &mut cipher)?;
                self.out.put(&cipher)?;
                self.out.put(&tag)?;
            }
        }
        self.record_count += 1;
        self.stored_bytes += stored.len() as u64;
        Ok(())
    }
}

/// The 40-byte header of a data or zero record.
fn record_header(
    tag: u8,
    flags: u8,
    stored_length: usize,
    offset: u64,
    length: u64,
    crcs: (u32, u32),
) -> [u8; RECORD_LEN] {
    let mut rec = [0u8; RECORD_LEN];
    rec[0] = tag;
    rec[1] = flags;
    put_u32(&mut rec, 4, stored_length as u32);
    put_u64(&mut rec, 8, offset);
    put_u64(&mut rec, 16, length);
    put_u32(&mut rec, 24, crcs.0);
    put_u32(&mut rec, 28, crcs.1);
    let crc = crc32c::crc32c(&rec[..36]);
    put_u32(&mut rec, 36, crc);
    rec
}

/// The flags and stored bytes of a data record: nothing without payloads,
/// the zstd frame when it is smaller, else the bytes themselves.
fn payload_of<'a>(
    payloads: bool,
    chunk: &'a [u8],
    compressed: &'a Option<Vec<u8>>,
) -> (u8, &'a [u8]) {
    match compressed {
        _ if !payloads => (0, &[]),
        Some(c) if c.len() < chunk.len() => (RECORD_ZSTD, c),
        _ => (0, chunk),
    }
}

/// A record worked out before it is written: where it starts and ends in
/// its piece, its header, its zstd frame when compressing, and its sealed
/// payload when encrypting.
type Prepared = (
    usize,
    usize,
    [u8; RECORD_LEN],
    Option<Vec<u8>>,
    Option<(Vec<u8>, [u8; TAG_LEN])>,
);

impl<W: Write> Sink for ExtentListEncoder<W> {
    fn begin(&mut self, h: &ExportHeader) -> Result<()> {
        self.record_limit = PREFERRED_RECORD_LIMIT.max(h.block_size.get());
        self.target_digest = h.target_digest;
        let mut buf = [0u8; HEADER_LEN];
        buf[..8].copy_from_slice(&MAGIC);
        put_u16(&mut buf, 8, VERSION);
        put_u16(&mut buf, 10, HEADER_LEN as u16);
        let mut flags = 0;
        if self.payloads {
            flags |= FLAG_PAYLOADS;
        }
        if let Some(d) = h.base_digest {
            flags |= FLAG_BASE_DIGEST;
            buf[72..104].copy_from_slice(&d);
        }
        if h.target_digest.is_some() {
            flags |= FLAG_TARGET_DIGEST;
        }
        if self.encryption.is_some() {
            flags |= FLAG_ENCRYPTED;
        }
        put_u32(&mut buf, 12, flags);
        put_u32(&mut buf, 16, h.block_size.get() as u32);
        put_u32(&mut buf, 20, self.record_limit as u32);
        put_u64(&mut buf, 24, h.base_size);
        put_u64(&mut buf, 32, h.target_size);
        put_u64(&mut buf, 40, h.data_extents);
        put_u64(&mut buf, 48, h.zero_extents);
        put_u64(&mut buf, 56, h.data_bytes);
        put_u64(&mut buf, 64, h.zero_bytes);
        let crc = crc32c::crc32c(&buf[..124]);
        put_u32(&mut buf, 124, crc);
        self.out.put(&buf)?;
        if let Some(enc) = &mut self.encryption {
            let mut block = [0u8; KEY_BLOCK_LEN];
            block[..32].copy_from_slice(&enc.key_sha256);
            block[32..40].copy_from_slice(&enc.prefix);
            let crc = crc32c::crc32c(&block[..60]);
            put_u32(&mut block, 60, crc);
            enc.head = [&buf[..], &block[..]].concat();
            self.out.put(&block)?;
        }
        Ok(())
    }

    fn data(&mut self, extent: &DataExtent<'_>) -> Result<()> {
        // The records of this piece, each with its checksums, its zstd
        // frame when compressing and its seal when encrypting: worked out
        // in parallel, written in order.
        let limit = self.record_limit as usize;
        let starts: Vec<usize> = (0..extent.bytes.len()).step_by(limit).collect();
        let (payloads, level) = (self.payloads, self.zstd_level);
        let (first_index, encryption) = (self.record_count, self.encryption.as_ref());
        let prepared: Vec<Prepared> = starts
            .into_par_iter()
            .enumerate()
            .map(|(i, start)| {
                let end = (start + limit).min(extent.bytes.len());
                let chunk = &extent.bytes[start..end];
                let base_crc = match extent.base_crc {
                    Some(b) => b.crc(extent.offset + start as u64, (end - start) as u64),
                    None => {
                        let base =
                            &extent.base[start.min(extent.base.len())..end.min(extent.base.len())];
                        crc_with_zeros(base, (chunk.len() - base.len()) as u64)
                    }
                };
                let crcs = (crc32c::crc32c(chunk), base_crc);
                let compressed = match (payloads, level) {
                    (true, Some(level)) => {
                        Some(zstd::bulk::compress(chunk, level).map_err(|e| Error::io("zstd", e))?)
                    }
                    _ => None,
                };
                let (flags, stored) = payload_of(payloads, chunk, &compressed);
                let offset = extent.offset + start as u64;
                let rec = record_header(
                    TAG_DATA,
                    flags,
                    stored.len(),
                    offset,
                    chunk.len() as u64,
                    crcs,
                );
                let sealed = match encryption {
                    Some(enc) => {
                        let mut cipher = stored.to_vec();
                        let tag = enc.sealer.seal(
                            first_index + i as u64,
                            &[&enc.head, &rec],
                            &mut cipher,
                        )?;
                        Some((cipher, tag))
                    }
                    None => None,
                };
                Ok((start, end, rec, compressed, sealed))
            })
            .collect::<Result<_>>()?;
        for (start, end, rec, compressed, sealed) in prepared {
            let chunk = &extent.bytes[start..end];
            let (_, stored) = payload_of(self.payloads, chunk, &compressed);
            self.record(&rec, stored, sealed)?;
            self.data_bytes += chunk.len() as u64;
        }
        Ok(())
    }

    fn zero(&mut self, extent: &ZeroExtent) -> Result<()> {
        let rec = record_header(
            TAG_ZERO,
            0,
            0,
            extent.offset,
            extent.length,
            (0, extent.base_crc),
        );
        self.record(&rec, &[], None)?;
        self.zero_bytes += extent.length;
        Ok(())
    }

    fn finish(&mut self) -> Result<SinkSummary> {
        let mut buf = [0u8; END_LEN];
        buf[0] = TAG_END;
        put_u64(&mut buf, 8, self.record_count);
        put_u64(&mut buf, 16, self.data_bytes);
        put_u64(&mut buf, 24, self.zero_bytes);
        put_u64(&mut buf, 32, self.stored_bytes);
        if let Some(d) = self.target_digest {
            buf[40..72].copy_from_slice(&d);
        }
        let crc = crc32c::crc32c(&buf[..76]);
        put_u32(&mut buf, 76, crc);
        self.out.put(&buf)?;
        if let Some(enc) = &self.encryption {
            let tag = enc
                .sealer
                .seal(self.record_count, &[&enc.head, &buf], &mut [])?;
            self.out.put(&tag)?;
        }
        self.out
            .inner
            .flush()
            .map_err(|e| Error::io("export output", e))?;
        Ok(SinkSummary {
            bytes_written: self.out.written,
        })
    }
}

/// The header of an extent-list stream, as read and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListHeader {
    /// Block size of the diff.
    pub block_size: BlockSize,
    /// Largest length of one data record.
    pub record_limit: u64,
    /// Whether data records carry payloads (`METADATA_AND_DATA`).
    pub payloads: bool,
    /// The base's size in bytes.
    pub base_size: u64,
    /// The target's size in bytes.
    pub target_size: u64,
    /// Number of data extents.
    pub data_extents: u64,
    /// Number of zero extents.
    pub zero_extents: u64,
    /// Bytes in data extents.
    pub data_bytes: u64,
    /// Bytes in zero extents.
    pub zero_bytes: u64,
    /// BLAKE3 of the whole base, when recorded.
    pub base_digest: Option<[u8; 32]>,
    /// Whether the end record carries the target's BLAKE3.
    pub has_target_digest: bool,
    /// The SHA-256 of the key the stream is encrypted with, if it is.
    pub key_sha256: Option<[u8; 32]>,
}

/// One data or zero record, as read and checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A data record.
    Data {
        /// Where the range starts in the target.
        offset: u64,
        /// The range's length.
        length: u64,
        /// CRC-32C of the target's bytes in the range.
        data_crc: u32,
        /// CRC-32C of the base's bytes in the range.
        base_crc: u32,
        /// The target's bytes (decompressed and checked against
        /// `data_crc`), or `None` in a `METADATA_ONLY` stream.
        payload: Option<&'a [u8]>,
    },
    /// A zero record.
    Zero {
        /// Where the range starts in the target.
        offset: u64,
        /// The range's length.
        length: u64,
        /// CRC-32C of the base's bytes in the range.
        base_crc: u32,
    },
}

/// The end record, as read and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Number of data and zero records.
    pub record_count: u64,
    /// Bytes in data records.
    pub data_bytes: u64,
    /// Bytes in zero records.
    pub zero_bytes: u64,
    /// Payload bytes stored in the stream.
    pub stored_bytes: u64,
    /// BLAKE3 of the whole target, when recorded.
    pub target_digest: Option<[u8; 32]>,
}

/// Reads and checks an extent-list stream from any `io::Read`.
///
/// Every check of `docs/extent-list.md` is made as the bytes arrive; the
/// first fault is an [`Error::Corrupt`] naming the byte offset. The reader
/// never allocates more than the header's `record_limit` (at most 8 MiB)
/// for a record.
pub struct ExtentListReader<R: Read> {
    input: R,
    pos: u64,
    header: ListHeader,
    payload: Vec<u8>,
    stored: Vec<u8>,
    next_offset: u64,
    last: Option<(u8, u64)>,
    records: u64,
    data_bytes: u64,
    zero_bytes: u64,
    stored_bytes: u64,
    data_extents: u64,
    zero_extents: u64,
    trailer: Option<Trailer>,
    encryption: Option<Encryption>,
}

fn corrupt(offset: u64, message: impl Into<String>) -> Error {
    Error::Corrupt {
        what: WHAT,
        offset,
        message: message.into(),
    }
}

/// Whether `bytes` start with the extent-list magic.
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

impl<R: Read> ExtentListReader<R> {
    /// Reads and checks the header of a stream that is not encrypted; an
    /// encrypted one is refused (see [`Self::with_key`]).
    pub fn new(input: R) -> Result<Self> {
        Self::with_key(input, None)
    }

    /// Reads and checks the header; an encrypted stream needs `key`, and
    /// a missing or wrong key is refused here, before any record is read.
    /// A key given for a stream that is not encrypted is refused too (see
    /// [`crate::crypt::refuse_unused_key`]).
    pub fn with_key(input: R, key: Option<&CustomerKey>) -> Result<Self> {
        let mut reader = ExtentListReader {
            input,
            pos: 0,
            header: ListHeader {
                block_size: BlockSize::DEFAULT,
                record_limit: 0,
                payloads: false,
                base_size: 0,
                target_size: 0,
                data_extents: 0,
                zero_extents: 0,
                data_bytes: 0,
                zero_bytes: 0,
                base_digest: None,
                has_target_digest: false,
                key_sha256: None,
            },
            payload: Vec::new(),
            stored: Vec::new(),
            next_offset: 0,
            last: None,
            records: 0,
            data_bytes: 0,
            zero_bytes: 0,
            stored_bytes: 0,
            data_extents: 0,
            zero_extents: 0,
            trailer: None,
            encryption: None,
        };
        let mut buf = [0u8; HEADER_LEN];
        reader.fill(&mut buf, "header")?;
        reader.header = parse_header(&buf)?;
        if get_u32(&buf, 12) & FLAG_ENCRYPTED != 0 {
            let mut block = [0u8; KEY_BLOCK_LEN];
            reader.fill(&mut block, "key block")?;
            if crc32c::crc32c(&block[..60]) != get_u32(&block, 60) {
                return Err(corrupt(HEADER_LEN as u64, "key block checksum mismatch"));
            }
            if block[40..60].iter().any(|&b| b != 0) {
                return Err(corrupt(
                    HEADER_LEN as u64 + 40,
                    "reserved key block bytes are not zero",
                ));
            }
            let key_sha256: [u8; 32] = block[..32].try_into().expect("32 bytes");
            let prefix: [u8; 8] = block[32..40].try_into().expect("8 bytes");
            reader.header.key_sha256 = Some(key_sha256);
            let named = crate::crypt::sha256_base64(&key_sha256);
            let key = key.ok_or_else(|| {
                Error::invalid(
                    "key",
                    format!("the export is encrypted with the key whose sha256 is {named}; give that key"),
                )
            })?;
            if key.sha256() != key_sha256 {
                return Err(Error::Mismatch(format!(
                    "the key given has sha256 {}, but the export is encrypted with the key whose sha256 is {named}",
                    key.sha256_base64()
                )));
            }
            reader.encryption = Some(Encryption {
                key_sha256,
                sealer: Sealer::new(key, prefix),
                prefix,
                head: [&buf[..], &block[..]].concat(),
            });
        } else {
            crate::crypt::refuse_unused_key(key, "the extent-list stream")?;
        }
        Ok(reader)
    }

    /// The checked header.
    pub fn header(&self) -> &ListHeader {
        &self.header
    }

    /// The checked end record, once [`Self::next_record`] returned `None`.
    pub fn trailer(&self) -> Option<&Trailer> {
        self.trailer.as_ref()
    }

    /// Bytes of the stream read so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let start = self.pos;
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(corrupt(
                        start + got as u64,
                        format!(
                        "stream truncated: it ends inside the {what} that starts at byte {start}"
                    ),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("export input", e)),
            }
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// The next record, or `None` after the end record has been read and
    /// checked and the stream was found to end there.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        let at = self.pos;
        let mut tag = [0u8; 1];
        self.fill(&mut tag, "record")?;
        match tag[0] {
            TAG_END => {
                self.read_end(at)?;
                Ok(None)
            }
            TAG_DATA | TAG_ZERO => self.read_record(at, tag[0]).map(Some),
            other => Err(corrupt(at, format!("unknown record tag 0x{other:02x}"))),
        }
    }

    /// Reads the tag that follows a sealed piece and opens `buf` with it,
    /// when the stream is encrypted.
    fn unseal(&mut self, at: u64, index: u64, aad: &[u8], buf: &mut [u8]) -> Result<()> {
        if self.encryption.is_none() {
            return Ok(());
        }
        let mut tag = [0u8; TAG_LEN];
        self.fill(&mut tag, "authentication tag")?;
        let enc = self.encryption.as_ref().expect("checked above");
        if !enc.sealer.open(index, &[&enc.head, aad], buf, &tag)? {
            return Err(corrupt(
                at,
                "the record fails authentication: the encrypted stream was changed, reordered or cut",
            ));
        }
        Ok(())
    }

    fn read_record(&mut self, at: u64, tag: u8) -> Result<Record<'_>> {
        let index = self.records;
        let mut rec = [0u8; RECORD_LEN];
        rec[0] = tag;
        self.fill(&mut rec[1..], "record header")?;
        if crc32c::crc32c(&rec[..36]) != get_u32(&rec, 36) {
            return Err(corrupt(at, "record header checksum mismatch"));
        }
        let flags = rec[1];
        let stored = u64::from(get_u32(&rec, 4));
        let offset = get_u64(&rec, 8);
        let length = get_u64(&rec, 16);
        let data_crc = get_u32(&rec, 24);
        let base_crc = get_u32(&rec, 28);
        if get_u16(&rec, 2) != 0 || get_u32(&rec, 32) != 0 {
            return Err(corrupt(at, "reserved field of a record is not zero"));
        }
        let h = &self.header;
        let bs = h.block_size.get();
        let kind = if tag == TAG_DATA { "data" } else { "zero" };
        let end = offset
            .checked_add(length)
            .filter(|&e| e <= h.target_size)
            .ok_or_else(|| {
                corrupt(
                    at,
                    format!(
                        "{kind} record {offset}+{length} lies past the target size {}",
                        h.target_size
                    ),
                )
            })?;
        if length == 0 {
            return Err(corrupt(
                at,
                format!("{kind} record at {offset} has length 0"),
            ));
        }
        if !offset.is_multiple_of(bs) || (!length.is_multiple_of(bs) && end != h.target_size) {
            return Err(corrupt(
                at,
                format!("{kind} record {offset}+{length} is not aligned to the block size {bs}"),
            ));
        }
        if offset < self.next_offset {
            return Err(corrupt(
                at,
                format!("{kind} record at {offset} overlaps or precedes the previous record, which ends at {}", self.next_offset),
            ));
        }
        // Count merged extents: a record continues the last extent when it
        // is of the same kind and starts where that one ended.
        let continues = self.last == Some((tag, offset));
        if !continues {
            if tag == TAG_DATA {
                self.data_extents += 1;
            } else {
                self.zero_extents += 1;
            }
        }
        self.last = Some((tag, end));
        self.next_offset = end;
        self.records += 1;
        self.stored_bytes += stored;

        if tag == TAG_ZERO {
            if flags != 0 || stored != 0 || data_crc != 0 {
                return Err(corrupt(
                    at,
                    format!("zero record at {offset} has flags, payload or a data checksum"),
                ));
            }
            self.unseal(at, index, &rec, &mut [])?;
            self.zero_bytes += length;
            return Ok(Record::Zero {
                offset,
                length,
                base_crc,
            });
        }
        if flags & !RECORD_ZSTD != 0 {
            return Err(corrupt(
                at,
                format!("data record at {offset} has unknown flags 0x{flags:02x}"),
            ));
        }
        if length > h.record_limit {
            return Err(corrupt(
                at,
                format!(
                    "data record at {offset} is {length} bytes, over the record limit {}",
                    h.record_limit
                ),
            ));
        }
        self.data_bytes += length;
        let zstd = flags & RECORD_ZSTD != 0;
        let expected_ok = match (h.payloads, zstd) {
            (false, false) => stored == 0,
            (false, true) => false,
            (true, false) => stored == length,
            (true, true) => stored > 0 && stored < length,
        };
        if !expected_ok {
            return Err(corrupt(
                at,
                format!("data record at {offset} stores {stored} bytes for a range of {length}, which its type does not allow"),
            ));
        }
        if !h.payloads {
            self.unseal(at, index, &rec, &mut [])?;
            return Ok(Record::Data {
                offset,
                length,
                data_crc,
                base_crc,
                payload: None,
            });
        }
        let payload_at = self.pos;
        let mut stored_buf = std::mem::take(&mut self.stored);
        stored_buf.resize(stored as usize, 0);
        let filled = self
            .fill(&mut stored_buf, "payload")
            .and_then(|_| self.unseal(at, index, &rec, &mut stored_buf));
        self.stored = stored_buf;
        filled?;
        let payload_is_stored = !zstd;
        if zstd {
            let frame = zstd::zstd_safe::find_frame_compressed_size(&self.stored);
            if frame != Ok(self.stored.len()) {
                return Err(corrupt(
                    payload_at,
                    format!(
                        "zstd payload of the data record at {offset} is not exactly one zstd frame"
                    ),
                ));
            }
            self.payload.clear();
            self.payload.reserve(length as usize);
            let n = zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(&self.stored, &mut self.payload))
                .map_err(|e| {
                    corrupt(
                        payload_at,
                        format!(
                            "zstd payload of the data record at {offset} does not decompress: {e}"
                        ),
                    )
                })?;
            if n as u64 != length {
                return Err(corrupt(payload_at, format!("zstd payload of the data record at {offset} decompresses to {n} bytes, not {length}")));
            }
        }
        let bytes: &[u8] = if payload_is_stored {
            &self.stored
        } else {
            &self.payload
        };
        if crc32c::crc32c(bytes) != data_crc {
            return Err(corrupt(
                payload_at,
                format!("checksum mismatch in the payload of the data record at {offset}"),
            ));
        }
        Ok(Record::Data {
            offset,
            length,
            data_crc,
            base_crc,
            payload: Some(bytes),
        })
    }

    fn read_end(&mut self, at: u64) -> Result<()> {
        let mut buf = [0u8; END_LEN];
        buf[0] = TAG_END;
        self.fill(&mut buf[1..], "end record")?;
        if crc32c::crc32c(&buf[..76]) != get_u32(&buf, 76) {
            return Err(corrupt(at, "end record checksum mismatch"));
        }
        self.unseal(at, self.records, &buf, &mut [])?;
        if buf[1..8].iter().any(|&b| b != 0) || get_u32(&buf, 72) != 0 {
            return Err(corrupt(at, "reserved field of the end record is not zero"));
        }
        let digest: [u8; 32] = buf[40..72].try_into().expect("32 bytes");
        let trailer = Trailer {
            record_count: get_u64(&buf, 8),
            data_bytes: get_u64(&buf, 16),
            zero_bytes: get_u64(&buf, 24),
            stored_bytes: get_u64(&buf, 32),
            target_digest: self.header.has_target_digest.then_some(digest),
        };
        if !self.header.has_target_digest && digest != [0; 32] {
            return Err(corrupt(
                at,
                "end record carries a target digest its header does not announce",
            ));
        }
        let h = &self.header;
        let seen = (
            self.records,
            self.data_bytes,
            self.zero_bytes,
            self.stored_bytes,
        );
        let said = (
            trailer.record_count,
            trailer.data_bytes,
            trailer.zero_bytes,
            trailer.stored_bytes,
        );
        if seen != said {
            return Err(corrupt(
                at,
                format!("end record counts (records, data, zero, stored bytes) {said:?} differ from the stream's {seen:?}"),
            ));
        }
        let seen = (
            self.data_extents,
            self.zero_extents,
            self.data_bytes,
            self.zero_bytes,
        );
        let said = (h.data_extents, h.zero_extents, h.data_bytes, h.zero_bytes);
        if seen != said {
            return Err(corrupt(
                at,
                format!("header totals (data extents, zero extents, data bytes, zero bytes) {said:?} differ from the stream's {seen:?}"),
            ));
        }
        let mut extra = [0u8; 1];
        loop {
            match self.input.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => return Err(corrupt(self.pos, "unexpected data after the end record")),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("export input", e)),
            }
        }
        self.trailer = Some(trailer);
        Ok(())
    }
}

fn parse_header(buf: &[u8; HEADER_LEN]) -> Result<ListHeader> {
    if buf[..8] != MAGIC {
        return Err(corrupt(0, "not an extent-list stream (bad magic)"));
    }
    let version = get_u16(buf, 8);
    if version != VERSION {
        return Err(corrupt(
            8,
            format!("unsupported version {version} (this build reads {VERSION})"),
        ));
    }
    if crc32c::crc32c(&buf[..124]) != get_u32(buf, 124) {
        return Err(corrupt(124, "header checksum mismatch"));
    }
    let header_length = get_u16(buf, 10);
    if usize::from(header_length) != HEADER_LEN {
        return Err(corrupt(
            10,
            format!("header length {header_length}, expected {HEADER_LEN}"),
        ));
    }
    let flags = get_u32(buf, 12);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(corrupt(12, format!("unknown header flags 0x{flags:08x}")));
    }
    if buf[104..124].iter().any(|&b| b != 0) {
        return Err(corrupt(104, "reserved header bytes are not zero"));
    }
    let block_size =
        BlockSize::new(u64::from(get_u32(buf, 16))).map_err(|e| corrupt(16, e.to_string()))?;
    let record_limit = u64::from(get_u32(buf, 20));
    if record_limit < block_size.get()
        || record_limit % block_size.get() != 0
        || record_limit > MAX_RECORD_LIMIT
    {
        return Err(corrupt(
            20,
            format!("record limit {record_limit} is not a multiple of the block size up to 8 MiB"),
        ));
    }
    let base_digest: [u8; 32] = buf[72..104].try_into().expect("32 bytes");
    if flags & FLAG_BASE_DIGEST == 0 && base_digest != [0; 32] {
        return Err(corrupt(
            72,
            "base digest present but not announced by the flags",
        ));
    }
    let header = ListHeader {
        block_size,
        record_limit,
        payloads: flags & FLAG_PAYLOADS != 0,
        base_size: get_u64(buf, 24),
        target_size: get_u64(buf, 32),
        data_extents: get_u64(buf, 40),
        zero_extents: get_u64(buf, 48),
        data_bytes: get_u64(buf, 56),
        zero_bytes: get_u64(buf, 64),
        base_digest: (flags & FLAG_BASE_DIGEST != 0).then_some(base_digest),
        has_target_digest: flags & FLAG_TARGET_DIGEST != 0,
        key_sha256: None,
    };
    if header.target_size > i64::MAX as u64 || header.base_size > i64::MAX as u64 {
        return Err(corrupt(24, "image sizes must be below 2^63 bytes"));
    }
    let changed = header.data_bytes.checked_add(header.zero_bytes);
    if changed.is_none_or(|c| c > header.target_size) {
        return Err(corrupt(56, "data and zero bytes exceed the target size"));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_appended_zeros_matches_the_plain_crc() {
        for bytes in [&b""[..], b"a", b"snapdelta"] {
            for zeros in [0u64, 1, 2, 3, 7, 64, 4095, 4096, 100_003] {
                let mut plain = bytes.to_vec();
                plain.resize(bytes.len() + zeros as usize, 0);
                assert_eq!(
                    crc_with_zeros(bytes, zeros),
                    crc32c::crc32c(&plain),
                    "{zeros}"
                );
            }
        }
    }
}
