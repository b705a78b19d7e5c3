//! Decode an export and describe what it holds.

use crate::apply::ExportInput;
use crate::crypt::{refuse_unused_key, CustomerKey};
use crate::error::{IoContext, Result};
use crate::format::extent_list::{ExtentListReader, ListHeader, Record, Trailer};
use crate::format::qcow2::{Mapping, Qcow2Reader};
use crate::format::raw_sparse::{self, map_path};
use crate::format::rbd_diff::{RbdDiffReader, RbdRecord};
use crate::format::{sniff, Recognised};
use crate::geometry::{push_merged, Extent, ExtentKind};
use serde::Serialize;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// What an export holds, after every check of its format passed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExportInfo {
    /// `METADATA_AND_DATA`, `METADATA_ONLY`, `RAW_SPARSE`, `QCOW2` or
    /// `RBD_DIFF`.
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
    /// Bytes of changed data the export stores: the payloads after
    /// compression (extent-list), the changed ranges of the data file (raw
    /// sparse), the whole file (qcow2), the written data (rbd diff).
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
    /// The base64 SHA-256 of the key an encrypted extent-list stream is
    /// sealed with; absent when the export is not encrypted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_key_sha256: Option<String>,
    /// The changed extents, merged, in offset order.
    pub extents: Vec<Extent>,
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the whole export and checks it as apply would (without a base).
pub fn inspect(export: &ExportInput) -> Result<ExportInfo> {
    inspect_with_key(export, None)
}

/// [`inspect`] of an export that may be encrypted: an encrypted
/// extent-list stream needs its `key`, and is refused without it.
pub fn inspect_with_key(export: &ExportInput, key: Option<&CustomerKey>) -> Result<ExportInfo> {
    match export {
        ExportInput::Stdin => {
            let (kind, input) = sniff(std::io::stdin().lock()).at(Path::new("-"))?;
            match kind {
                Some(Recognised::RbdDiff) => {
                    refuse_unused_key(key, "the rbd diff")?;
                    read_rbd_diff(input)
                }
                None if input.get_ref().0.get_ref()[..] == crate::manifest::MAGIC => {
                    Err(crate::Error::Unsupported(
                        "standard input holds a block manifest, which info reads from a file: \
                         give its path"
                            .into(),
                    ))
                }
                _ => read_list(input, key),
            }
        }
        ExportInput::Path(path) if crate::format::raw_sparse::is_raw_sparse(path) => {
            refuse_unused_key(key, "the raw sparse export")?;
            read_raw_sparse(path)
        }
        ExportInput::Path(path) => {
            let (kind, input) = sniff(File::open(path).at(path)?).at(path)?;
            match kind {
                Some(Recognised::Qcow2) => {
                    refuse_unused_key(key, "the qcow2 export")?;
                    read_qcow2(path)
                }
                Some(Recognised::RbdDiff) => {
                    refuse_unused_key(key, "the rbd diff")?;
                    read_rbd_diff(input)
                }
                None if map_path(path).exists() => {
                    refuse_unused_key(key, "the raw sparse export")?;
                    read_raw_sparse(path)
                }
                _ => read_list(input, key),
            }
        }
    }
}

impl ExportInfo {
    /// An export of `output_type` holding `extents`, with its counts and
    /// totals taken from them and nothing else known yet.
    fn of_extents(output_type: &'static str, version: u16, extents: Vec<Extent>) -> Self {
        let count = |kind| extents.iter().filter(|e| e.kind == kind).count() as u64;
        let bytes = |kind| {
            extents
                .iter()
                .filter(|e| e.kind == kind)
                .map(|e| e.length)
                .sum()
        };
        ExportInfo {
            output_type,
            version,
            block_size: 0,
            base_size: 0,
            target_size: 0,
            data_extents: count(ExtentKind::Data),
            zero_extents: count(ExtentKind::Zero),
            data_bytes: bytes(ExtentKind::Data),
            zero_bytes: bytes(ExtentKind::Zero),
            stored_bytes: 0,
            base_digest: None,
            target_digest: None,
            backing_file: None,
            from_snap: None,
            to_snap: None,
            encryption_key_sha256: None,
            extents,
        }
    }
}

/// The merged extents of a checked extent-list stream. `check_data`, when
/// given, is called for every data record.
fn list_extents<R: Read>(
    reader: &mut ExtentListReader<R>,
    mut check_data: impl FnMut(u64, u64, u32) -> Result<()>,
) -> Result<Vec<Extent>> {
    let mut extents: Vec<Extent> = Vec::new();
    while let Some(record) = reader.next_record()? {
        let (offset, length, kind) = match record {
            Record::Data {
                offset,
                length,
                data_crc,
                ..
            } => {
                check_data(offset, length, data_crc)?;
                (offset, length, ExtentKind::Data)
            }
            Record::Zero { offset, length, .. } => (offset, length, ExtentKind::Zero),
        };
        push_merged(
            &mut extents,
            Extent {
                offset,
                length,
                kind,
            },
        );
    }
    Ok(extents)
}

/// The info of an extent-list stream, from its header, end record and
/// extents.
fn list_info(
    output_type: &'static str,
    h: &ListHeader,
    t: &Trailer,
    extents: Vec<Extent>,
) -> ExportInfo {
    ExportInfo {
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
        encryption_key_sha256: None,
        extents,
    }
}

/// Decodes an extent-list stream.
fn read_list(input: impl Read, key: Option<&CustomerKey>) -> Result<ExportInfo> {
    let mut reader = ExtentListReader::with_key(BufReader::new(input), key)?;
    let extents = list_extents(&mut reader, |_, _, _| Ok(()))?;
    let h = reader.header();
    let output_type = if h.payloads {
        "METADATA_AND_DATA"
    } else {
        "METADATA_ONLY"
    };
    let t = reader.trailer().expect("set after the last record");
    let mut info = list_info(output_type, h, t, extents);
    info.encryption_key_sha256 = h.key_sha256.as_ref().map(crate::crypt::sha256_base64);
    Ok(info)
}

/// Decodes a raw sparse export's change map and checks every data range
/// of its data file against it.
fn read_raw_sparse(path: &Path) -> Result<ExportInfo> {
    let (data, mut reader) = raw_sparse::open(path)?;
    let extents = list_extents(&mut reader, |offset, length, crc| {
        // `length` is at most the header's record limit (8 MiB).
        let mut buf = vec![0u8; length as usize];
        raw_sparse::read_range(&data, path, offset, &mut buf, crc)
    })?;
    let t = reader.trailer().expect("set after the last record");
    let info = list_info("RAW_SPARSE", reader.header(), t, extents);
    // The data file holds every changed byte, uncompressed, at its offset.
    Ok(ExportInfo {
        stored_bytes: info.data_bytes,
        ..info
    })
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
            push_merged(
                &mut extents,
                Extent {
                    offset,
                    length,
                    kind,
                },
            );
        }
    }
    Ok(ExportInfo {
        block_size: cs,
        base_size: record.map_or(0, |r| r.base_size),
        target_size,
        stored_bytes: q.file_size(),
        base_digest: record.and_then(|r| r.base_digest).as_ref().map(hex),
        target_digest: record.and_then(|r| r.target_digest).as_ref().map(hex),
        backing_file: q.backing_file().map(str::to_string),
        ..ExportInfo::of_extents("QCOW2", q.version() as u16, extents)
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
        push_merged(
            &mut extents,
            Extent {
                offset,
                length,
                kind,
            },
        );
    }
    Ok(ExportInfo {
        target_size: size,
        stored_bytes: stored,
        from_snap,
        to_snap,
        ..ExportInfo::of_extents("RBD_DIFF", version, extents)
    })
}
