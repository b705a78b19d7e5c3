//! Decode an export and describe what it holds.

use crate::apply::ExportInput;
use crate::error::{Error, IoContext, Result};
use crate::format::extent_list::{ExtentListReader, Record};
use crate::format::raw_sparse::map_path;
use crate::geometry::{Extent, ExtentKind};
use serde::Serialize;
use std::fs::File;
use std::io::{BufReader, Read};

/// What an export holds, after every check of its format passed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExportInfo {
    /// `METADATA_AND_DATA`, `METADATA_ONLY` or `RAW_SPARSE`.
    pub output_type: &'static str,
    /// The format's version.
    pub version: u16,
    /// Block size in bytes.
    pub block_size: u64,
    /// The base's size in bytes (0: made without a base).
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
    /// The changed extents, merged, in offset order.
    pub extents: Vec<Extent>,
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the whole export and checks it as apply would (without a base).
pub fn inspect(export: &ExportInput) -> Result<ExportInfo> {
    match export {
        ExportInput::Stdin => read_list(std::io::stdin().lock(), None),
        ExportInput::Path(path) => {
            let map = map_path(path);
            if map.exists() {
                let size = std::fs::metadata(path).at(path)?.len();
                let info = read_list(File::open(&map).at(&map)?, Some("RAW_SPARSE"))?;
                if size != info.target_size {
                    return Err(Error::Mismatch(format!(
                        "{} is {size} bytes, but its change map describes a target of {} bytes",
                        path.display(),
                        info.target_size
                    )));
                }
                Ok(info)
            } else {
                read_list(File::open(path).at(path)?, None)
            }
        }
    }
}

fn read_list(input: impl Read, raw: Option<&'static str>) -> Result<ExportInfo> {
    let mut reader = ExtentListReader::new(BufReader::new(input))?;
    let h = reader.header().clone();
    let mut extents: Vec<Extent> = Vec::new();
    while let Some(record) = reader.next_record()? {
        let (offset, length, kind) = match record {
            Record::Data { offset, length, .. } => (offset, length, ExtentKind::Data),
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
        (Some(name), false) => name,
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
        extents,
    })
}
