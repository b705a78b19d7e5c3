//! snapdelta: a changed-block diff and export engine for raw snapshot
//! images.
//!
//! Given an older image of a disk (the *base*) and a newer one (the
//! *target*), snapdelta finds the blocks that changed and writes them as
//! one export that can be shipped and applied elsewhere.
//!
//! # Overview
//!
//! - [`Image`] maps a raw image read-only.
//! - [`detect`] compares two images block by block, in parallel, into a
//!   [`ChangeMap`] of data and zero [`Extent`]s.
//! - [`export_images`] runs detection and streams the extents, in offset
//!   order, into a [`Sink`]: one of the encoders in [`format`], or your own.
//! - [`apply()`] rebuilds the target from the base and an export.
//! - [`inspect`] decodes an export and lists what it holds.
//! - [`manifest`] writes and reads block manifests, the digests of an
//!   image's blocks: [`export_with_manifest`] exports from the base's
//!   manifest without the base image, byte for byte the same export.
//!
//! # Example
//!
//! ```
//! use snapdelta::{detect, export_map, BlockSize, ExtentKind, ExtentListEncoder};
//!
//! let base = vec![7u8; 1 << 20];
//! let mut target = base.clone();
//! target[65536..131072].fill(9); // one 64 KiB block rewritten
//!
//! let map = detect(&base, &target, BlockSize::DEFAULT);
//! assert_eq!(map.extents.len(), 1);
//! assert_eq!(map.extents[0].kind, ExtentKind::Data);
//!
//! let mut out = Vec::new();
//! let mut encoder = ExtentListEncoder::new(&mut out, true, None);
//! let summary = export_map(&map, &base, &target, None, &mut encoder)?;
//! assert_eq!(summary.data_bytes, 65536);
//! # Ok::<(), snapdelta::Error>(())
//! ```

#![deny(missing_docs)]

pub mod apply;
pub mod crypt;
pub mod detect;
pub mod digest;
pub mod error;
pub mod export;
pub mod format;
pub mod geometry;
pub mod image;
pub mod info;
pub mod job;
pub mod manifest;
pub mod operation;
pub mod output;
pub mod request;
pub mod sink;

pub use apply::{apply, apply_with_key, ApplySummary, ExportInput};
pub use crypt::{CustomerKey, KeyUnwrapper};
pub use detect::{
    detect, detect_serial, detect_with_progress, scan, scan_with_manifest, ChangeMap,
};
pub use digest::{image_digest, Digests};
pub use error::{Error, Result};
pub use export::{export_images, export_map, ExportOptions, ExportSummary, Phase, Progress};
pub use format::extent_list::{ExtentListEncoder, ExtentListReader};
pub use format::qcow2::{Qcow2Encoder, Qcow2Options};
pub use format::raw_sparse::RawSparseEncoder;
pub use format::rbd_diff::RbdDiffEncoder;
pub use format::OutputType;
pub use geometry::{parse_size, BlockSize, Extent, ExtentKind};
pub use image::{Allocation, Image, Source};
pub use info::{inspect, inspect_with_key, ExportInfo};
pub use manifest::{
    export_with_manifest, export_writing_manifest, inspect_manifest, verify_image, write_manifest,
    ManifestHeader, ManifestReader, ManifestWriter,
};
pub use sink::{BaseChecksums, DataExtent, ExportHeader, Sink, SinkSummary, ZeroExtent};
