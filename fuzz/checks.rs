//! The properties the fuzz targets check, one function a target. The
//! regression test of the main crate (`tests/fuzz_regressions.rs`)
//! includes this file too and replays the saved inputs of
//! `fuzz/regressions/TARGET/` through the same functions.
#![allow(dead_code)]

use snapdelta::format::extent_list::{ListHeader, Record};
use snapdelta::format::qcow2::{Mapping, Qcow2Encoder, Qcow2Options, Qcow2Reader};
use snapdelta::format::rbd_diff::{RbdDiffEncoder, RbdDiffReader, RbdRecord};
use snapdelta::geometry::push_merged;
use snapdelta::{
    apply, detect, export_images, export_map, BlockSize, ChangeMap, ExportInput, ExportOptions,
    Extent, ExtentKind, ExtentListEncoder, ExtentListReader, Image, RawSparseEncoder, Sink,
};
use std::io::BufWriter;

/// The largest image a check rebuilds in memory; larger declared sizes
/// are only walked.
const MAX_IMAGE: u64 = 16 << 20;

/// Checks that a decoded range is not empty, follows the previous one
/// (which ended at `end`) and lies inside `size`; keeps it, merged, when
/// the image is small enough to rebuild.
fn push_checked(
    extents: &mut Vec<Extent>,
    end: &mut u64,
    size: u64,
    offset: u64,
    length: u64,
    kind: ExtentKind,
) {
    assert!(length > 0 && offset >= *end && offset + length <= size);
    *end = offset + length;
    if size <= MAX_IMAGE {
        push_merged(
            extents,
            Extent {
                offset,
                length,
                kind,
            },
        );
    }
}

/// An extent-list stream decoded in full: its header, its extents merged,
/// and, when it carries payloads and is small, the image its data records
/// paint over zeros.
struct DecodedList {
    header: ListHeader,
    extents: Vec<Extent>,
    image: Option<Vec<u8>>,
}

/// Decodes a whole extent-list stream, asserting the format's promises on
/// the way; `None` if the stream is refused anywhere.
fn decode_list(data: &[u8]) -> Option<DecodedList> {
    let mut reader = ExtentListReader::new(data).ok()?;
    let header = reader.header().clone();
    let mut image = (header.payloads && header.target_size <= MAX_IMAGE)
        .then(|| vec![0u8; header.target_size as usize]);
    let (mut extents, mut end) = (Vec::new(), 0u64);
    loop {
        let (offset, length, kind) = match reader.next_record() {
            Ok(Some(Record::Data {
                offset,
                length,
                payload,
                ..
            })) => {
                assert!(length <= header.record_limit);
                assert_eq!(payload.is_some(), header.payloads);
                if let Some(p) = payload {
                    assert_eq!(p.len() as u64, length);
                    if let Some(image) = &mut image {
                        image[offset as usize..(offset + length) as usize].copy_from_slice(p);
                    }
                }
                (offset, length, ExtentKind::Data)
            }
            Ok(Some(Record::Zero { offset, length, .. })) => (offset, length, ExtentKind::Zero),
            Ok(None) => break,
            Err(_) => return None,
        };
        push_checked(
            &mut extents,
            &mut end,
            header.target_size,
            offset,
            length,
            kind,
        );
    }
    let trailer = reader
        .trailer()
        .expect("an end record after the last record");
    assert_eq!(trailer.data_bytes, header.data_bytes);
    assert_eq!(trailer.zero_bytes, header.zero_bytes);
    Some(DecodedList {
        header,
        extents,
        image,
    })
}

/// Arbitrary bytes into the extent-list decoder: refused with an error,
/// or decoded into records that keep the format's promises; a small
/// stream that decodes re-encodes into one that decodes to the same
/// extents and bytes.
pub fn extent_list_decode(data: &[u8]) {
    let Some(first) = decode_list(data) else {
        return;
    };
    let h = &first.header;
    if h.target_size > MAX_IMAGE || h.base_size > MAX_IMAGE {
        return;
    }
    let map = ChangeMap {
        block_size: h.block_size,
        base_size: h.base_size,
        target_size: h.target_size,
        extents: first.extents.clone(),
    };
    let base = vec![0u8; h.base_size as usize];
    let target = first
        .image
        .clone()
        .unwrap_or_else(|| vec![0u8; h.target_size as usize]);
    let mut out = Vec::new();
    export_map(
        &map,
        &base,
        &target,
        None,
        &mut ExtentListEncoder::new(&mut out, h.payloads, None),
    )
    .expect("a decoded stream re-encodes");
    let second = decode_list(&out).expect("a re-encoded stream decodes");
    assert_eq!(second.extents, first.extents);
    assert_eq!(second.image, first.image);
    assert_eq!(second.header.target_size, h.target_size);
    assert_eq!(second.header.base_size, h.base_size);
}

/// An rbd diff decoded in full: snapshot names, size, merged extents and,
/// when small, the image its writes paint over zeros.
type DecodedRbd = (
    Option<String>,
    Option<String>,
    u64,
    Vec<Extent>,
    Option<Vec<u8>>,
);

fn decode_rbd(data: &[u8]) -> Option<DecodedRbd> {
    let mut reader = RbdDiffReader::new(data).ok()?;
    let (mut from, mut to, mut size) = (None, None, None);
    let (mut extents, mut image, mut end) = (Vec::new(), None::<Vec<u8>>, 0u64);
    loop {
        let (offset, length, kind) = match reader.next_record() {
            Ok(Some(RbdRecord::FromSnap(s))) => {
                from = Some(s.to_string());
                continue;
            }
            Ok(Some(RbdRecord::ToSnap(s))) => {
                to = Some(s.to_string());
                continue;
            }
            Ok(Some(RbdRecord::Size(s))) => {
                size = Some(s);
                image = (s <= MAX_IMAGE).then(|| vec![0u8; s as usize]);
                continue;
            }
            Ok(Some(RbdRecord::Write { offset, data })) => {
                if let Some(image) = &mut image {
                    image[offset as usize..offset as usize + data.len()].copy_from_slice(data);
                }
                (offset, data.len() as u64, ExtentKind::Data)
            }
            Ok(Some(RbdRecord::Zero { offset, length })) => (offset, length, ExtentKind::Zero),
            Ok(None) => break,
            Err(_) => return None,
        };
        let size = size.expect("writes and zeros follow the size record");
        push_checked(&mut extents, &mut end, size, offset, length, kind);
    }
    Some((from, to, size?, extents, image))
}

/// Arbitrary bytes into the rbd diff reader: refused, or records in order
/// inside the announced size; a small diff that decodes re-encodes into
/// one that decodes to the same names, size, extents and bytes.
pub fn rbd_diff_decode(data: &[u8]) {
    let Some(first) = decode_rbd(data) else {
        return;
    };
    let (from, to, size, extents, image) = first.clone();
    let Some(target) = image else {
        return;
    };
    let map = ChangeMap {
        block_size: BlockSize::new(4096).unwrap(),
        base_size: 0,
        target_size: size,
        extents,
    };
    let mut out = Vec::new();
    let mut encoder = RbdDiffEncoder::new(&mut out, from, to).expect("names that decoded encode");
    export_map(&map, &[], &target, None, &mut encoder).expect("a decoded diff re-encodes");
    let out = encoder.into_inner();
    assert_eq!(decode_rbd(out), Some(first));
}

/// Arbitrary bytes as a qcow2 file: refused, or every table entry points
/// inside the file and reading any cluster fails cleanly or succeeds.
pub fn qcow2_read(data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.qcow2");
    std::fs::write(&path, data).unwrap();
    let Ok(q) = Qcow2Reader::open(&path) else {
        return;
    };
    let cs = q.cluster_size();
    let mut buf = vec![0u8; cs as usize];
    for i in 0..q.l1_len() {
        let Ok(table) = q.l2_table(i) else {
            return;
        };
        for mapping in table {
            match mapping {
                Mapping::Data { host } => assert!(host + cs <= q.file_size()),
                Mapping::Compressed { host, len } => assert!(host + len <= q.file_size()),
                Mapping::Zero | Mapping::Unallocated => continue,
            }
            let _ = q.read_cluster(mapping, &mut buf);
        }
    }
}

/// Reads little-endian integers off the front of the fuzzer's bytes,
/// zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take(&mut self, n: usize) -> u64 {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.iter().rev().fold(0, |v, &b| v << 8 | b as u64)
    }
}

/// A base and a target built from the fuzzer's bytes: sizes up to about
/// 1 MiB, not always multiples of anything, and a list of writes of
/// patterns or zeros over a copy of the base, some past its end.
fn image_pair(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut b = Bytes(data);
    let base_size = b.take(2) * 16 + b.take(1);
    let target_size = b.take(2) * 16 + b.take(1);
    let seed = b.take(1) as u8;
    let base: Vec<u8> = (0..base_size)
        .map(|i| ((i / 512) as u8).wrapping_mul(31) ^ seed)
        .collect();
    let mut target = base.clone();
    target.resize(target_size as usize, 0);
    while !b.0.is_empty() && target_size > 0 {
        let at = (b.take(2) * 64) % target_size;
        let len = (b.take(2) * 8).min(target_size - at);
        let byte = b.take(1) as u8;
        target[at as usize..(at + len) as usize].fill(byte);
    }
    (base, target)
}

/// The output types the round trip goes through, with their options.
pub const ROUNDTRIP_TYPES: [&str; 6] = [
    "metadata-and-data",
    "metadata-and-data-zstd",
    "raw-sparse",
    "qcow2",
    "qcow2-zstd",
    "rbd-diff",
];

/// Two images built from the fuzzer's bytes, exported through one encoder
/// chosen by the first byte (with a block size and digests chosen too):
/// see [`roundtrip_pair`].
pub fn encode_roundtrip(data: &[u8]) {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let ty = ROUNDTRIP_TYPES[choice as usize % ROUNDTRIP_TYPES.len()];
    let block_size = BlockSize::new(4096 << (choice / 8 % 3)).unwrap();
    let digests = choice & 0x80 != 0;
    let (base, target) = image_pair(rest);
    roundtrip_pair(&base, &target, ty, block_size, digests);
}

/// Exports `base` -> `target` as `ty` (one of [`ROUNDTRIP_TYPES`]; digests
/// are ignored for rbd-diff, which has no place for them), checks the
/// export's totals and the extents its stream decodes to against a fresh
/// detection, and applies it to the base: the result is the target, byte
/// for byte, its digest checked when recorded.
pub fn roundtrip_pair(base: &[u8], target: &[u8], ty: &str, block_size: BlockSize, digests: bool) {
    let digests = digests && ty != "rbd-diff";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("base.img"), base).unwrap();
    std::fs::write(d.join("target.img"), target).unwrap();
    let base_image = Image::open(d.join("base.img")).unwrap();
    let target_image = Image::open(d.join("target.img")).unwrap();
    let export = d.join("export");
    let file = std::fs::File::create(&export).unwrap();
    let zstd = ty.ends_with("-zstd").then_some(1);
    let mut sink: Box<dyn Sink> = match ty {
        "raw-sparse" => {
            let map = std::fs::File::create(d.join("export.map")).unwrap();
            Box::new(RawSparseEncoder::new(file, &export, BufWriter::new(map)))
        }
        "qcow2" | "qcow2-zstd" => Box::new(Qcow2Encoder::new(
            BufWriter::new(file),
            Qcow2Options {
                backing: Some("base.img".into()),
                zstd_level: zstd,
            },
        )),
        "rbd-diff" => Box::new(RbdDiffEncoder::new(BufWriter::new(file), None, None).unwrap()),
        _ => Box::new(ExtentListEncoder::new(BufWriter::new(file), true, zstd)),
    };
    let options = ExportOptions {
        block_size,
        digests,
    };
    let summary = export_images(
        Some(&base_image),
        &target_image,
        sink.as_mut(),
        &options,
        &mut |_| {},
    )
    .expect("export of two readable images");
    drop(sink);
    assert_eq!(summary.target_size, target.len() as u64);
    let map = detect(base, target, block_size);
    assert_eq!(summary.data_bytes, map.bytes(ExtentKind::Data));
    assert_eq!(summary.zero_bytes, map.bytes(ExtentKind::Zero));
    // The streams decode to the extents detected.
    let written = std::fs::read(&export).unwrap();
    match ty {
        "metadata-and-data" | "metadata-and-data-zstd" => {
            let list = decode_list(&written).expect("a fresh export decodes");
            assert_eq!(list.extents, map.extents);
            assert!(list.image.is_some());
        }
        "raw-sparse" => {
            let list = decode_list(&std::fs::read(d.join("export.map")).unwrap())
                .expect("a fresh change map decodes");
            assert_eq!(list.extents, map.extents);
        }
        "rbd-diff" => {
            let (.., extents, _) = decode_rbd(&written).expect("a fresh diff decodes");
            assert_eq!(extents, map.extents);
        }
        _ => {}
    }
    let out = d.join("rebuilt.img");
    let applied = apply(
        Some(&d.join("base.img")),
        &ExportInput::Path(export),
        &out,
        false,
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("{ty}: apply of a fresh export failed: {e}"));
    assert_eq!(applied.target_digest_verified, digests);
    let rebuilt = std::fs::read(&out).unwrap();
    // A qcow2 overlay's virtual size is rounded up to 512 bytes; ours
    // record the true size, which apply restores.
    assert!(rebuilt == target, "{ty}: the rebuilt image differs");
}

/// A small fixed base for [`apply_export`]: 192 KiB of a pattern with a
/// zeroed block.
pub fn apply_base() -> Vec<u8> {
    let mut base: Vec<u8> = (0..192 * 1024u32)
        .map(|i| (i / 4096 * 7 + 1) as u8)
        .collect();
    base[8192..12288].fill(0);
    base
}

/// Arbitrary bytes applied as an export to [`apply_base`]: either apply
/// fails and leaves nothing behind, or it rebuilds an image of the size
/// it reports; the base is never changed.
pub fn apply_export(data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = apply_base();
    std::fs::write(d.join("base.img"), &base).unwrap();
    std::fs::write(d.join("export"), data).unwrap();
    let out = d.join("rebuilt.img");
    let result = apply(
        Some(&d.join("base.img")),
        &ExportInput::Path(d.join("export")),
        &out,
        false,
        &mut |_| {},
    );
    assert!(std::fs::read(d.join("base.img")).unwrap() == base);
    match result {
        Ok(summary) => {
            let len = std::fs::metadata(&out).unwrap().len();
            assert_eq!(len, summary.target_size);
        }
        Err(_) => {
            let mut left: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            left.sort();
            assert_eq!(left, ["base.img", "export"], "apply left files behind");
        }
    }
}

/// Arbitrary bytes into the block manifest reader: refused, or runs that
/// cover exactly the header's blocks, each within the record limit, then
/// the end record.
pub fn manifest_decode(data: &[u8]) {
    use snapdelta::manifest::{ManifestReader, Run, MAX_DATA_RUN};
    let Ok(mut reader) = ManifestReader::new(data) else {
        return;
    };
    let blocks = reader.header().block_count();
    let mut seen = 0u64;
    while seen < blocks {
        match reader.next_run(blocks - seen) {
            Ok(Run::Zero(n)) => {
                assert!(n >= 1 && n <= blocks - seen);
                seen += n;
            }
            Ok(Run::Data(d)) => {
                assert!(!d.is_empty() && d.len() as u64 <= MAX_DATA_RUN as u64);
                seen += d.len() as u64;
            }
            Err(_) => return,
        }
    }
    assert_eq!(seen, blocks);
    let _ = reader.finish();
}
