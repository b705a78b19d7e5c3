//! The qcow2 reader: checks every offset and table it uses, and refuses
//! what it does not support with a clear error.

use super::*;
use crate::error::{Error, IoContext, Result};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const WHAT: &str = "qcow2 image";
/// qemu's own limit on the L1 table.
const MAX_L1_BYTES: u64 = 32 << 20;

fn corrupt(offset: u64, message: impl Into<String>) -> Error {
    Error::Corrupt {
        what: WHAT,
        offset,
        message: message.into(),
    }
}

/// Where a guest cluster's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Not allocated: read from the backing file (zeros without one or
    /// past its end).
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// A whole cluster at this host offset.
    Data {
        /// Byte offset in the image file.
        host: u64,
    },
    /// A compressed cluster.
    Compressed {
        /// Byte offset of the compressed bytes in the image file.
        host: u64,
        /// How many bytes to read there (whole sectors, as the entry says).
        len: u64,
    },
}

/// An open qcow2 image whose header and L1 table have been checked.
#[derive(Debug)]
pub struct Qcow2Reader {
    file: File,
    path: PathBuf,
    file_size: u64,
    cluster_bits: u32,
    virtual_size: u64,
    l1: Vec<u64>,
    backing_file: Option<String>,
    backing_format: Option<String>,
    compression_type: u8,
    record: Option<ExportRecord>,
    version: u32,
    /// Bytes of the file that the clusters mapped by the L2 tables read
    /// so far need at least.
    mapped: std::sync::atomic::AtomicU64,
}

/// Whether `bytes` start with the qcow2 magic.
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && be32(bytes, 0) == MAGIC
}

impl Qcow2Reader {
    /// Opens and checks the image at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).at(path)?;
        let file_size = file.metadata().at(path)?.len();
        let mut head = [0u8; 112];
        let n = read_at_most(&file, &mut head, 0).at(path)?;
        if n < 72 || !has_magic(&head) {
            return Err(corrupt(0, "not a qcow2 image (bad magic or too short)"));
        }
        let version = be32(&head, 4);
        if version != 2 && version != 3 {
            return Err(Error::Unsupported(format!("qcow2 version {version}")));
        }
        let cluster_bits = be32(&head, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(
                20,
                format!("cluster_bits {cluster_bits} is outside 9 to 21"),
            ));
        }
        let cs = 1u64 << cluster_bits;
        let virtual_size = be64(&head, 24);
        if virtual_size > i64::MAX as u64 {
            return Err(corrupt(24, "virtual size is 2^63 bytes or more"));
        }
        if be32(&head, 32) != 0 {
            return Err(Error::Unsupported("encrypted qcow2 images".into()));
        }
        if be32(&head, 60) != 0 {
            return Err(Error::Unsupported(
                "qcow2 images with internal snapshots".into(),
            ));
        }
        let (incompatible, header_len) = if version == 3 {
            if n < 104 {
                return Err(corrupt(0, "version 3 header is shorter than 104 bytes"));
            }
            (be64(&head, 72), u64::from(be32(&head, 100)))
        } else {
            (0, 72)
        };
        if header_len < if version == 3 { 104 } else { 72 }
            || header_len % 8 != 0
            || header_len > cs
        {
            return Err(corrupt(
                100,
                format!("header length {header_len} is invalid"),
            ));
        }
        if incompatible & INCOMPAT_CORRUPT != 0 {
            return Err(corrupt(72, "the image is marked corrupt"));
        }
        if incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(Error::Unsupported(
                "qcow2 images with an external data file".into(),
            ));
        }
        if incompatible & INCOMPAT_EXTL2 != 0 {
            return Err(Error::Unsupported(
                "qcow2 images with extended L2 entries".into(),
            ));
        }
        let known = INCOMPAT_DIRTY
            | INCOMPAT_CORRUPT
            | INCOMPAT_DATA_FILE
            | INCOMPAT_COMPRESSION
            | INCOMPAT_EXTL2;
        if incompatible & !known != 0 {
            return Err(Error::Unsupported(format!(
                "qcow2 incompatible feature bits 0x{:x}",
                incompatible & !known
            )));
        }
        let compression_type = if incompatible & INCOMPAT_COMPRESSION != 0 {
            if header_len < 105 {
                return Err(corrupt(
                    72,
                    "compression type bit set but the header has no compression type",
                ));
            }
            head[104]
        } else {
            COMPRESSION_DEFLATE
        };
        if compression_type != COMPRESSION_DEFLATE && compression_type != COMPRESSION_ZSTD {
            return Err(Error::Unsupported(format!(
                "qcow2 compression type {compression_type}"
            )));
        }

        // Cluster 0 holds the header, its extensions and the backing name.
        let mut first = vec![0u8; cs.min(file_size) as usize];
        file.read_exact_at(&mut first, 0).at(path)?;
        let backing_offset = be64(&head, 8);
        let backing_size = u64::from(be32(&head, 16));
        let backing_file = if backing_offset == 0 {
            None
        } else {
            if backing_size == 0 || backing_size > MAX_BACKING_NAME as u64 {
                return Err(corrupt(
                    16,
                    format!("backing file name length {backing_size} is not from 1 to 1023"),
                ));
            }
            let end = backing_offset
                .checked_add(backing_size)
                .filter(|&e| e <= first.len() as u64 && backing_offset >= header_len)
                .ok_or_else(|| {
                    corrupt(8, "backing file name does not lie inside the first cluster")
                })?;
            let name = &first[backing_offset as usize..end as usize];
            Some(
                String::from_utf8(name.to_vec())
                    .map_err(|_| corrupt(backing_offset, "backing file name is not UTF-8"))?,
            )
        };
        let ext_end = if backing_offset == 0 {
            first.len() as u64
        } else {
            backing_offset
        };
        // qemu writes header extensions after the 72-byte version 2 header
        // too.
        let (backing_format, record) = read_extensions(&first, header_len, ext_end)?;
        if version == 3 && be64(&head, 88) & AUTOCLEAR_RECORD != 0 && record.is_none() {
            return Err(corrupt(
                88,
                "the header says it carries snapdelta's export record, but no record is there",
            ));
        }

        let l1_size = u64::from(be32(&head, 36));
        let l1_offset = be64(&head, 40);
        let needed = virtual_size.div_ceil(cs).div_ceil(cs / 8);
        if l1_size < needed {
            return Err(corrupt(
                36,
                format!("L1 table of {l1_size} entries cannot map {virtual_size} bytes"),
            ));
        }
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(corrupt(
                36,
                format!("L1 table of {l1_size} entries is over qemu's 32 MiB limit"),
            ));
        }
        if l1_size > 0
            && (!l1_offset.is_multiple_of(cs)
                || l1_offset == 0
                || l1_offset
                    .checked_add(l1_size * 8)
                    .is_none_or(|end| end > file_size))
        {
            return Err(corrupt(
                40,
                format!("L1 table offset {l1_offset} is unaligned or past the end of the file"),
            ));
        }
        let mut raw = vec![0u8; (needed * 8) as usize];
        file.read_exact_at(&mut raw, l1_offset).at(path)?;
        let mut l1 = Vec::with_capacity(needed as usize);
        // An L2 table belongs to one L1 entry: no image qemu or snapdelta
        // writes shares one (internal snapshots are refused above), and a
        // shared table would make the work grow with the table, not the file.
        let mut tables = std::collections::HashSet::new();
        for (i, e) in raw.chunks_exact(8).enumerate() {
            let e = be64(e, 0);
            let at = l1_offset + i as u64 * 8;
            if e & !(OFFSET_MASK | COPIED) != 0 {
                return Err(corrupt(at, format!("L1 entry {i} has reserved bits set")));
            }
            let l2 = e & OFFSET_MASK;
            if l2 != 0 && (!l2.is_multiple_of(cs) || l2 + cs > file_size) {
                return Err(corrupt(
                    at,
                    format!("L1 entry {i} points to {l2}, unaligned or past the end of the file"),
                ));
            }
            if l2 != 0 && !tables.insert(l2) {
                return Err(corrupt(
                    at,
                    format!("L1 entry {i} points to the L2 table at {l2}, already in use"),
                ));
            }
            l1.push(l2);
        }
        Ok(Qcow2Reader {
            file,
            path: path.to_path_buf(),
            file_size,
            cluster_bits,
            virtual_size,
            l1,
            backing_file,
            backing_format,
            compression_type,
            record,
            version,
            mapped: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// The virtual disk size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// The stored backing file name.
    pub fn backing_file(&self) -> Option<&str> {
        self.backing_file.as_deref()
    }

    /// The backing file format from the header extension.
    pub fn backing_format(&self) -> Option<&str> {
        self.backing_format.as_deref()
    }

    /// snapdelta's record, in images snapdelta wrote.
    pub fn record(&self) -> Option<&ExportRecord> {
        self.record.as_ref()
    }

    /// The format version, 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The file's size.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Number of L1 entries in use: each covers `cluster_size / 8`
    /// clusters.
    pub fn l1_len(&self) -> usize {
        self.l1.len()
    }

    /// The mappings of the clusters covered by L1 entry `index`, checked;
    /// empty when the L1 entry is unallocated (so that its clusters cost
    /// nothing to skip, however large the virtual size). Read each table
    /// once: the bytes all tables read so far need are counted against
    /// the file's size, and a file whose tables map more than it holds
    /// is refused as corrupt.
    pub fn l2_table(&self, index: usize) -> Result<Vec<Mapping>> {
        let cs = self.cluster_size();
        let entries = (cs / 8) as usize;
        let l2 = self.l1[index];
        if l2 == 0 {
            return Ok(Vec::new());
        }
        let mut raw = vec![0u8; cs as usize];
        self.file.read_exact_at(&mut raw, l2).at(&self.path)?;
        let x = 62 - (self.cluster_bits - 8);
        let mut out = Vec::with_capacity(entries);
        for (j, e) in raw.chunks_exact(8).enumerate() {
            let e = be64(e, 0);
            let at = l2 + j as u64 * 8;
            let mapping = if e & COMPRESSED != 0 {
                if e & COPIED != 0 {
                    return Err(corrupt(at, "compressed L2 entry has the COPIED flag"));
                }
                let host = e & ((1u64 << x) - 1);
                let sectors = (e >> x) & ((1u64 << (self.cluster_bits - 8)) - 1);
                let len = (sectors + 1) * 512 - (host & 511);
                if host == 0 || host >= self.file_size {
                    return Err(corrupt(
                        at,
                        format!("compressed cluster at {host} lies past the end of the file"),
                    ));
                }
                Mapping::Compressed {
                    host,
                    len: len.min(self.file_size - host),
                }
            } else {
                if e & 0x3f00_0000_0000_01fe != 0 {
                    return Err(corrupt(at, "L2 entry has reserved bits set"));
                }
                let host = e & OFFSET_MASK;
                if host != 0 && (!host.is_multiple_of(cs) || host + cs > self.file_size) {
                    return Err(corrupt(
                        at,
                        format!("data cluster at {host} is unaligned or past the end of the file"),
                    ));
                }
                match (e & ZERO != 0, host) {
                    (true, _) if self.version == 2 => {
                        return Err(corrupt(at, "zero flag in a version 2 image"))
                    }
                    (true, _) => Mapping::Zero,
                    (false, 0) => Mapping::Unallocated,
                    (false, host) => Mapping::Data { host },
                }
            };
            out.push(mapping);
        }
        // Clusters are not shared: data clusters fill a cluster of the
        // file each, and compressed clusters hold distinct bytes (two may
        // share a sector, never a byte), at least the fewest bytes from
        // which the compression type can expand a whole cluster. Without
        // this bound a small file could make a reader copy or decompress
        // one cluster millions of times.
        let least = self.least_compressed_len();
        let bytes: u64 = out
            .iter()
            .map(|m| match m {
                Mapping::Data { .. } => cs,
                Mapping::Compressed { .. } => least,
                _ => 0,
            })
            .sum();
        let total = self
            .mapped
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed)
            + bytes;
        if total > self.file_size {
            return Err(corrupt(
                l2,
                format!(
                    "the L2 tables need at least {total} bytes of cluster data from a file of {}: clusters are shared",
                    self.file_size
                ),
            ));
        }
        Ok(out)
    }

    /// The fewest bytes a compressed cluster can take: deflate expands at
    /// most 1032 times (a 258-byte match per bit pair of code); a zstd
    /// frame needs its 4-byte magic and a frame header, and then a 3-byte
    /// header and at least one byte per block of at most 128 KiB.
    fn least_compressed_len(&self) -> u64 {
        let cs = self.cluster_size();
        match self.compression_type {
            COMPRESSION_ZSTD => 6 + 4 * cs.div_ceil(128 * 1024),
            _ => cs.div_ceil(1032),
        }
    }

    /// Reads a data or compressed cluster into `buf` (one cluster long).
    pub fn read_cluster(&self, mapping: Mapping, buf: &mut [u8]) -> Result<()> {
        let cs = self.cluster_size() as usize;
        assert_eq!(buf.len(), cs);
        match mapping {
            Mapping::Data { host } => self.file.read_exact_at(buf, host).at(&self.path),
            Mapping::Compressed { host, len } => {
                let mut input = vec![0u8; len as usize];
                self.file.read_exact_at(&mut input, host).at(&self.path)?;
                let filled = match self.compression_type {
                    COMPRESSION_ZSTD => zstd::stream::read::Decoder::with_buffer(&input[..])
                        .and_then(|d| read_full(d, buf)),
                    _ => read_full(flate2::read::DeflateDecoder::new(&input[..]), buf),
                };
                match filled {
                    Ok(n) if n == cs => Ok(()),
                    Ok(n) => Err(corrupt(
                        host,
                        format!("compressed cluster decompresses to {n} bytes, not {cs}"),
                    )),
                    Err(e) => Err(corrupt(
                        host,
                        format!("compressed cluster does not decompress: {e}"),
                    )),
                }
            }
            Mapping::Zero | Mapping::Unallocated => {
                buf.fill(0);
                Ok(())
            }
        }
    }
}

/// Reads until `buf` is full or the reader ends.
fn read_full(mut r: impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Walks the header extensions in `first[start..end]`.
fn read_extensions(
    first: &[u8],
    start: u64,
    end: u64,
) -> Result<(Option<String>, Option<ExportRecord>)> {
    let mut at = start as usize;
    let end = (end as usize).min(first.len());
    let (mut format, mut record) = (None, None);
    // As qemu does: extensions run until the end marker or the end of the
    // area (where a version 2 image may have none at all).
    while at < end {
        if at + 8 > end {
            return Err(corrupt(
                at as u64,
                "header extensions run past the first cluster",
            ));
        }
        let kind = be32(first, at);
        let len = be32(first, at + 4) as usize;
        if kind == 0 {
            return Ok((format, record));
        }
        let data_end = at + 8 + len;
        if data_end > end {
            return Err(corrupt(
                at as u64,
                format!("header extension 0x{kind:08x} runs past the first cluster"),
            ));
        }
        let data = &first[at + 8..data_end];
        match kind {
            EXT_BACKING_FORMAT => {
                format = Some(
                    String::from_utf8(data.to_vec())
                        .map_err(|_| corrupt(at as u64, "backing format name is not UTF-8"))?,
                )
            }
            EXT_SNAPDELTA => {
                record =
                    Some(ExportRecord::decode(data).ok_or_else(|| {
                        corrupt(at as u64, "snapdelta header extension is malformed")
                    })?)
            }
            _ => {}
        }
        at = at + 8 + len.div_ceil(8) * 8;
    }
    Ok((format, record))
}
