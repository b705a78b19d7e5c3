//! Decode an export and describe what it holds.

use crate::apply::ExportInput;
use crate::apply::{is_rbd_diff, read_up_to};
use crate::error::{Error, IoContext, Result};
use crate::format::extent_list::{ExtentListReader, Record, MAGIC};
use crate::format::qcow2::{self, Mapping, Qcow2Reader};
use crate::format::raw_sparse::map_path;
use crate::format::rbd_diff::{RbdDiffReader, RbdRecord};
use crate::geometry::{Extent, ExtentKind};
use serde::Serialize;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What an export holds, after every check of its format passed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExportInfo {
    /// `METADATA_AND_DATA`, `METADATA_ONLY` or `RAW_SPARSE`.
    pub output_type: &'static str,
    /// The format's version.
    pub version: u16,
    /// Block size in bytes; 0 where the format does not record one (rbd
    /// diff).
    pub block_size: u64,
    /// The base's size in bytes (0: made without a base, or not recorded by
    /// the format, as in rbd diff and qemu's qcow2).
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
    /// Payload bytes stored (after compression).
    pub stored_bytes: u64,
    /// BLAKE3 of the base, in hex, when recorded.
    pub base_digest: Option<String>,
    /// BLAKE3 of the target, in hex, when recorded.
    pub target_digest: Option<String>,
    /// The backing file a qcow2 overlay names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_file: Option<String>,
    /// The snapshot an rbd diff starts from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_snap: Option<String>,
    /// The snapshot an rbd diff leads to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_snap: Option<String>,
    /// The changed extents, merged, in offset order.
    pub extents: Vec<Extent>,
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the whole export and checks it as apply would (without a base).
pub fn inspect(export: &ExportInput) -> Result<ExportInfo> {
    match export {
        ExportInput::Stdin => {
            let mut stdin = std::io::stdin().lock();
            let mut magic = [0u8; 8];
            let n = read_up_to(&mut stdin, &mut magic).at(Path::new("-"))?;
            let input = std::io::Cursor::new(magic[..n].to_vec()).chain(stdin);
            if is_rbd_diff(&magic[..n]) {
                read_rbd_diff(input)
            } else {
                read_list(input, None)
            }
        }
        ExportInput::Path(path) => {
            let mut file = File::open(path).at(path)?;
            let mut magic = [0u8; 8];
            let n = read_up_to(&mut file, &mut magic).at(path)?;
            let map = map_path(path);
            if n == magic.len() && magic == MAGIC {
                read_list(std::io::Cursor::new(magic).chain(file), None)
            } else if qcow2::has_magic(&magic[..n]) {
                read_qcow2(path)
            } else if is_rbd_diff(&magic[..n]) {
                read_rbd_diff(std::io::Cursor::new(magic[..n].to_vec()).chain(file))
            } else if map.exists() {
                let size = file.metadata().at(path)?.len();
                let info = read_list(File::open(&map).at(&map)?, Some((&file, path)))?;
                if size != info.target_size {
                    return Err(Error::Mismatch(format!(
                        "{} is {size} bytes, but its change map describes a target of {} bytes",
                        path.display(),
                        info.target_size
                    )));
                }
                Ok(info)
            } else {
                read_list(std::io::Cursor::new(magic[..n].to_vec()).chain(file), None)
            }
        }
    }
}

/// Decodes an extent-list stream; with `raw`, it is the change map of the
/// raw sparse data file given, whose data ranges are checked against it.
fn read_list(input: impl Read, raw: Option<(&File, &Path)>) -> Result<ExportInfo> {
    let mut reader = ExtentListReader::new(BufReader::new(input))?;
    let h = reader.header().clone();
    let mut extents: Vec<Extent> = Vec::new();
    while let Some(record) = reader.next_record()? {
        let (offset, length, kind) = match record {
            Record::Data {
                offset,
                length,
                data_crc,
                ..
            } => {
                if let Some((file, path)) = raw {
                    // `length` is at most the header's record limit (8 MiB).
                    let mut buf = vec![0u8; length as usize];
                    read_raw_range(file, path, offset, &mut buf, data_crc)?;
                }
                (offset, length, ExtentKind::Data)
            }
            Record::Zero { offset, length, .. } => (offset, length, ExtentKind::Zero),
        };
        match extents.last_mut() {
            Some(last) if last.end() == offset && last.kind == kind => last.length += length,
            _ => extents.push(Extent {
                offset,
                length,
                kind,
            }),
        }
    }
    let t = reader.trailer().expect("set after the last record");
    let output_type = match (raw, h.payloads) {
        (Some(_), false) => "RAW_SPARSE",
        (Some(_), true) => {
            return Err(Error::Unsupported(
                "the change map beside a raw sparse export holds data: not a raw sparse export"
                    .into(),
            ))
        }
        (None, true) => "METADATA_AND_DATA",
        (None, false) => "METADATA_ONLY",
    };
    Ok(ExportInfo {
        output_type,
        version: crate::format::extent_list::VERSION,
        block_size: h.block_size.get(),
        base_size: h.base_size,
        target_size: h.target_size,
        data_extents: h.data_extents,
        zero_extents: h.zero_extents,
        data_bytes: h.data_bytes,
        zero_bytes: h.zero_bytes,
        stored_bytes: t.stored_bytes,
        base_digest: h.base_digest.as_ref().map(hex),
        target_digest: t.target_digest.as_ref().map(hex),
        backing_file: None,
        from_snap: None,
        to_snap: None,
        extents,
    })
}

/// Reads `buf.len()` bytes at `offset` of a raw sparse data file and checks
/// that their CRC-32C is the one its change map records.
pub(crate) fn read_raw_range(
    file: &File,
    path: &Path,
    offset: u64,
    buf: &mut [u8],
    crc: u32,
) -> Result<()> {
    let length = buf.len();
    file.read_exact_at(buf, offset).at(path)?;
    if crc32c::crc32c(buf) != crc {
        return Err(Error::Mismatch(format!(
            "{}: the bytes at {offset}+{length} do not match its change map (the file was changed)",
            path.display()
        )));
    }
    Ok(())
}

/// Describes a qcow2 overlay: its allocated clusters as data extents, its
/// zero clusters as zero extents. Data clusters are read (compressed ones
/// decompressed) so that a damaged one is reported.
fn read_qcow2(path: &Path) -> Result<ExportInfo> {
    let q = Qcow2Reader::open(path)?;
    let record = q.record().copied();
    let target_size = record.map_or(q.virtual_size(), |r| r.target_size.min(q.virtual_size()));
    let cs = q.cluster_size();
    let mut buf = vec![0u8; cs as usize];
    let mut extents: Vec<Extent> = Vec::new();
    'tables: for i in 0..q.l1_len() {
        for (j, mapping) in q.l2_table(i)?.into_iter().enumerate() {
            let offset = (i as u64 * (cs / 8) + j as u64) * cs;
            if offset >= target_size {
                break 'tables;
            }
            let kind = match mapping {
                Mapping::Unallocated => continue,
                Mapping::Zero => ExtentKind::Zero,
                Mapping::Data { .. } | Mapping::Compressed { .. } => {
                    q.read_cluster(mapping, &mut buf)?;
                    ExtentKind::Data
                }
            };
            let length = cs.min(target_size - offset);
            match extents.last_mut() {
                Some(last) if last.end() == offset && last.kind == kind => last.length += length,
                _ => extents.push(Extent {
                    offset,
                    length,
                    kind,
                }),
            }
        }
    }
    let total = |kind| {
        extents
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.length)
            .sum()
    };
    let count = |kind| extents.iter().filter(|e| e.kind == kind).count() as u64;
    Ok(ExportInfo {
        output_type: "QCOW2",
        version: 3,
        block_size: cs,
        base_size: record.map_or(0, |r| r.base_size),
        target_size,
        data_extents: count(ExtentKind::Data),
        zero_extents: count(ExtentKind::Zero),
        data_bytes: total(ExtentKind::Data),
        zero_bytes: total(ExtentKind::Zero),
        stored_bytes: q.file_size(),
        base_digest: record.and_then(|r| r.base_digest).as_ref().map(hex),
        target_digest: record.and_then(|r| r.target_digest).as_ref().map(hex),
        backing_file: q.backing_file().map(str::to_string),
        from_snap: None,
        to_snap: None,
        extents,
    })
}

/// Describes a Ceph `rbd diff` stream: writes as data extents, zero
/// records as zero extents, merged where they touch.
fn read_rbd_diff(input: impl Read) -> Result<ExportInfo> {
    let mut reader = RbdDiffReader::new(BufReader::new(input))?;
    let version = u16::from(reader.version());
    let (mut from_snap, mut to_snap, mut size) = (None, None, 0);
    let mut extents: Vec<Extent> = Vec::new();
    let mut stored = 0u64;
    while let Some(record) = reader.next_record()? {
        let (offset, length, kind) = match record {
            RbdRecord::FromSnap(name) => {
                from_snap = Some(name.to_string());
                continue;
            }
            RbdRecord::ToSnap(name) => {
                to_snap = Some(name.to_string());
                continue;
            }
            RbdRecord::Size(s) => {
                size = s;
                continue;
            }
            RbdRecord::Write { offset, data } => {
                stored += data.len() as u64;
                (offset, data.len() as u64, ExtentKind::Data)
            }
            RbdRecord::Zero { offset, length } => (offset, length, ExtentKind::Zero),
        };
        match extents.last_mut() {
            Some(last) if last.end() == offset && last.kind == kind => last.length += length,
            _ => extents.push(Extent {
                offset,
                length,
                kind,
            }),
        }
    }
    let total = |kind| {
        extents
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.length)
            .sum()
    };
    let count = |kind| extents.iter().filter(|e| e.kind == kind).count() as u64;
    Ok(ExportInfo {
        output_type: "RBD_DIFF",
        version,
        block_size: 0,
        base_size: 0,
        target_size: size,
        data_extents: count(ExtentKind::Data),
        zero_extents: count(ExtentKind::Zero),
        data_bytes: total(ExtentKind::Data),
        zero_bytes: total(ExtentKind::Zero),
        stored_bytes: stored,
        base_digest: None,
        target_digest: None,
        backing_file: None,
        from_snap,
        to_snap,
        extents,
    })
}
