//! The `rbd diff` stream: what the encoder writes decodes back to the
//! target, hand-built v2 streams decode, damaged streams are refused, and
//! Ceph's own `rbd merge-diff` accepts our streams and its output rebuilds
//! the target.

use proptest::prelude::*;
use snapdelta::format::rbd_diff::{
    RbdDiffEncoder, RbdDiffReader, RbdRecord, MAX_SNAP_NAME, MAX_WRITE_CHUNK, MAX_WRITE_RECORD,
};
use snapdelta::{detect, export_map, BlockSize, Error, ExtentKind};
use std::path::Path;
use std::process::Command;

/// Encodes the diff from `base` to `target` as a v1 stream.
fn encode(base: &[u8], target: &[u8], from: Option<&str>, to: Option<&str>) -> Vec<u8> {
    let map = detect(base, target, BlockSize::new(4096).unwrap());
    let mut out = Vec::new();
    let mut enc = RbdDiffEncoder::new(&mut out, from.map(Into::into), to.map(Into::into)).unwrap();
    let summary = export_map(&map, base, target, None, &mut enc).unwrap();
    assert_eq!(summary.bytes_written, out.len() as u64);
    out
}

/// What a stream holds, owned: snapshot names, size, and the image
/// rebuilt from `base` by applying every record in order.
#[derive(Debug, Default)]
struct Applied {
    from: Option<String>,
    to: Option<String>,
    size: Option<u64>,
    image: Vec<u8>,
    writes: Vec<(u64, usize)>,
    zeros: Vec<(u64, u64)>,
}

fn apply(base: &[u8], stream: &[u8]) -> snapdelta::Result<Applied> {
    let mut reader = RbdDiffReader::new(stream)?;
    let mut out = Applied {
        image: base.to_vec(),
        ..Applied::default()
    };
    while let Some(rec) = reader.next_record()? {
        match rec {
            RbdRecord::FromSnap(n) => out.from = Some(n.to_string()),
            RbdRecord::ToSnap(n) => out.to = Some(n.to_string()),
            RbdRecord::Size(s) => {
                out.size = Some(s);
                out.image.resize(s as usize, 0);
            }
            RbdRecord::Write { offset, data } => {
                assert!(!data.is_empty() && data.len() as u64 <= MAX_WRITE_CHUNK);
                let o = offset as usize;
                out.image[o..o + data.len()].copy_from_slice(data);
                out.writes.push((offset, data.len()));
            }
            RbdRecord::Zero { offset, length } => {
                let o = offset as usize;
                out.image[o..o + length as usize].fill(0);
                out.zeros.push((offset, length));
            }
        }
    }
    assert_eq!(reader.next_record()?, None, "None stays None");
    assert_eq!(reader.size(), out.size);
    Ok(out)
}

/// The records of a v1 stream as written, walked by hand: (tag, offset,
/// length) for `w` and `z`.
fn v1_ranges(stream: &[u8]) -> Vec<(u8, u64, u64)> {
    assert_eq!(&stream[..12], b"rbd diff v1\n");
    let le64 = |at: usize| u64::from_le_bytes(stream[at..at + 8].try_into().unwrap());
    let mut out = Vec::new();
    let mut i = 12;
    loop {
        let tag = stream[i];
        i += 1;
        match tag {
            b'f' | b't' => {
                let n = u32::from_le_bytes(stream[i..i + 4].try_into().unwrap()) as usize;
                i += 4 + n;
            }
            b's' => i += 8,
            b'w' | b'z' => {
                let (o, l) = (le64(i), le64(i + 8));
                out.push((tag, o, l));
                i += 16 + if tag == b'w' { l as usize } else { 0 };
            }
            b'e' => break,
            other => panic!("tag {other}"),
        }
    }
    assert_eq!(i, stream.len());
    out
}

/// A v2 stream built by hand.
struct V2(Vec<u8>);

impl V2 {
    fn new() -> Self {
        V2(b"rbd diff v2\n".to_vec())
    }
    fn raw(mut self, tag: u8, payload: &[u8]) -> Self {
        self.0.push(tag);
        self.0
            .extend_from_slice(&(payload.len() as u64).to_le_bytes());
        self.0.extend_from_slice(payload);
        self
    }
    fn name(self, tag: u8, name: &str) -> Self {
        let mut p = (name.len() as u32).to_le_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        self.raw(tag, &p)
    }
    fn size(self, size: u64) -> Self {
        self.raw(b's', &size.to_le_bytes())
    }
    fn write(self, offset: u64, data: &[u8]) -> Self {
        let mut p = offset.to_le_bytes().to_vec();
        p.extend_from_slice(&(data.len() as u64).to_le_bytes());
        p.extend_from_slice(data);
        self.raw(b'w', &p)
    }
    fn zero(self, offset: u64, length: u64) -> Self {
        let mut p = offset.to_le_bytes().to_vec();
        p.extend_from_slice(&length.to_le_bytes());
        self.raw(b'z', &p)
    }
    fn end(mut self) -> Vec<u8> {
        self.0.push(b'e');
        self.0
    }
}

/// A v1 stream built by hand: banner, then `body`.
fn v1(body: &[u8]) -> Vec<u8> {
    let mut s = b"rbd diff v1\n".to_vec();
    s.extend_from_slice(body);
    s
}

fn rec(tag: u8, a: u64, b: u64) -> Vec<u8> {
    let mut r = vec![tag];
    r.extend_from_slice(&a.to_le_bytes());
    r.extend_from_slice(&b.to_le_bytes());
    r
}

fn size_rec(size: u64) -> Vec<u8> {
    let mut r = vec![b's'];
    r.extend_from_slice(&size.to_le_bytes());
    r
}

/// Reads every record of `stream`, keeping nothing.
fn decode(stream: &[u8]) -> snapdelta::Result<()> {
    let mut reader = RbdDiffReader::new(stream)?;
    while reader.next_record()?.is_some() {}
    Ok(())
}

fn corrupt_message<T: std::fmt::Debug>(result: snapdelta::Result<T>) -> (u64, String) {
    match result {
        Err(Error::Corrupt {
            offset, message, ..
        }) => (offset, message),
        other => panic!("expected a corrupt-stream error, got {other:?}"),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed as usize) % 251) as u8 + 1)
        .collect()
}

/// A base and a target: data rewritten, a range of non-zero base data
/// zeroed, and the target grown with data and zeros past the base's end.
fn sample_pair() -> (Vec<u8>, Vec<u8>) {
    let base = pattern(384 << 10, 3);
    let mut target = base.clone();
    target[8192..20480].fill(0x5a);
    target[65536..139264].fill(0);
    target[200_000..200_100].fill(0xee);
    target.resize(512 << 10, 0);
    target[(448 << 10)..(460 << 10)].copy_from_slice(&pattern(12 << 10, 9));
    (base, target)
}

#[test]
fn detected_changes_round_trip() {
    let (base, target) = sample_pair();
    let stream = encode(&base, &target, Some("snap1"), Some("snap2"));
    let got = apply(&base, &stream).unwrap();
    assert_eq!(got.from.as_deref(), Some("snap1"));
    assert_eq!(got.to.as_deref(), Some("snap2"));
    assert_eq!(got.size, Some(target.len() as u64));
    assert!(got.image == target, "rebuilt image differs from the target");
    assert!(!got.zeros.is_empty());

    // Shrunk target, no names: the size record truncates.
    let mut small = base[..100_000].to_vec();
    small[4096..8192].fill(1);
    let stream = encode(&base, &small, None, None);
    let got = apply(&base, &stream).unwrap();
    assert_eq!((got.from, got.to), (None, None));
    assert!(got.image == small);

    // No base at all.
    let stream = encode(&[], &target, None, None);
    assert!(apply(&[], &stream).unwrap().image == target);

    // Nothing changed: banner, size, end.
    let stream = encode(&base, &base, None, None);
    assert_eq!(
        stream,
        [v1(&size_rec(base.len() as u64)), vec![b'e']].concat()
    );
}

#[test]
fn data_extents_over_4_mib_are_split_into_write_records() {
    let base = vec![0x11u8; 12 << 20];
    let mut target = base.clone();
    let data = pattern((9 << 20) + 8192, 1);
    target[4096..4096 + data.len()].copy_from_slice(&data);
    let stream = encode(&base, &target, None, None);
    let ranges = v1_ranges(&stream);
    let m = MAX_WRITE_RECORD;
    assert_eq!(
        ranges,
        vec![
            (b'w', 4096, m),
            (b'w', 4096 + m, m),
            (b'w', 4096 + 2 * m, data.len() as u64 - 2 * m),
        ]
    );
    let got = apply(&base, &stream).unwrap();
    // The reader yields each record in 1 MiB chunks, contiguous:
    // 4 + 4 + 2 (1 MiB and 8 KiB).
    assert_eq!(got.writes.len(), 10);
    assert_eq!(got.writes[9].1, 8192);
    let mut next = 4096;
    for &(o, l) in &got.writes {
        assert_eq!(o, next);
        next += l as u64;
    }
    assert_eq!(next, 4096 + data.len() as u64);
    assert!(got.image == target);
}

#[test]
fn zero_extents_become_one_zero_record_each() {
    let base = vec![0x77u8; 1 << 20];
    let mut target = base.clone();
    target[4096..(4096 + (600 << 10))].fill(0);
    target[(800 << 10)..(804 << 10)].fill(0);
    let stream = encode(&base, &target, None, None);
    assert_eq!(
        v1_ranges(&stream),
        vec![(b'z', 4096, 600 << 10), (b'z', 800 << 10, 4096)]
    );
    let got = apply(&base, &stream).unwrap();
    assert_eq!(got.zeros, vec![(4096, 600 << 10), (800 << 10, 4096)]);
    assert!(got.image == target);
}

#[test]
fn v2_stream_decodes_skipping_unknown_records_and_chunking_writes() {
    let big = pattern(3 << 20, 5);
    let stream = V2::new()
        .name(b'f', "a")
        .name(b't', "b")
        .raw(b'p', &[1])
        .raw(b'X', &[9; 40000])
        .size(4 << 20)
        .zero(100, 50)
        .raw(b'?', &[])
        .write(1000, &big)
        .end();
    let mut reader = RbdDiffReader::new(&stream[..]).unwrap();
    assert_eq!(reader.version(), 2);
    assert_eq!(
        reader.next_record().unwrap(),
        Some(RbdRecord::FromSnap("a"))
    );
    assert_eq!(reader.next_record().unwrap(), Some(RbdRecord::ToSnap("b")));
    assert_eq!(
        reader.next_record().unwrap(),
        Some(RbdRecord::Size(4 << 20))
    );
    assert_eq!(
        reader.next_record().unwrap(),
        Some(RbdRecord::Zero {
            offset: 100,
            length: 50
        })
    );
    for i in 0..3u64 {
        let c = MAX_WRITE_CHUNK;
        let expect = &big[(i * c) as usize..((i + 1) * c) as usize];
        assert_eq!(
            reader.next_record().unwrap(),
            Some(RbdRecord::Write {
                offset: 1000 + i * c,
                data: expect
            })
        );
    }
    assert_eq!(reader.next_record().unwrap(), None);
    assert_eq!(reader.size(), Some(4 << 20));
    assert_eq!(reader.position(), stream.len() as u64);

    let got = apply(&[0xffu8; 2000], &stream).unwrap();
    let mut expect = vec![0xffu8; 2000];
    expect.resize(4 << 20, 0);
    expect[1000..1000 + big.len()].copy_from_slice(&big);
    expect[100..150].fill(0);
    assert!(got.image == expect);
}

#[test]
fn v2_payload_lengths_must_fit_the_record() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (V2::new().raw(b's', &[0; 9]).end(), "size"),
        (V2::new().raw(b's', &[0; 7]).end(), "size"),
        (V2::new().size(100).raw(b'z', &rec(0, 0, 10)[1..]).end(), ""),
        (V2::new().size(100).raw(b'z', &[0; 17]).end(), "zero"),
        (V2::new().size(100).raw(b'w', &[0; 15]).end(), "write"),
        (
            V2::new()
                .size(100)
                .raw(b'w', &[&rec(0, 0, 4)[1..], &[1, 2, 3][..]].concat())
                .end(),
            "write",
        ),
        (
            V2::new()
                .size(100)
                .raw(b'w', &[&rec(0, 0, 2)[1..], &[1, 2, 3][..]].concat())
                .end(),
            "write",
        ),
        (V2::new().raw(b'f', &[1, 0, 0, 0]).end(), "from-snapshot"),
        (V2::new().raw(b'f', &[0, 0, 0]).end(), "from-snapshot"),
        (
            V2::new().raw(b't', &[0, 0, 0, 0, b'x']).end(),
            "to-snapshot",
        ),
    ];
    for (i, (stream, kind)) in cases.into_iter().enumerate() {
        let result = apply(&[], &stream);
        if kind.is_empty() {
            result.unwrap(); // the well-formed control case
            continue;
        }
        let (offset, message) = corrupt_message(result);
        assert!(
            message.contains("payload length") && message.contains(kind),
            "case {i}: {message}"
        );
        assert!(offset >= 12, "case {i}");
    }
}

#[test]
fn every_truncation_is_reported_with_its_offset() {
    let base = pattern(64 << 10, 1);
    let mut target = base.clone();
    target[4096..8192].fill(3);
    target[16384..20480].fill(0);
    target.resize(80 << 10, 7);
    let v1_stream = encode(&base, &target, Some("from"), Some("to"));
    let v2_stream = V2::new()
        .name(b'f', "from")
        .raw(b'p', &[0])
        .size(100)
        .write(10, &[1; 20])
        .raw(b'Q', &[5; 7])
        .zero(50, 10)
        .end();
    for full in [v1_stream, v2_stream] {
        apply(&base, &full).unwrap();
        for cut in 0..full.len() {
            let (offset, message) = corrupt_message(apply(&base, &full[..cut]));
            assert!(message.contains("truncated"), "cut {cut}: {message}");
            assert_eq!(offset, cut as u64, "cut {cut}: {message}");
        }
    }
    let (_, message) = corrupt_message(apply(&[], &v1(&size_rec(5))));
    assert_eq!(message, "stream truncated: no end record");
}

#[test]
fn data_after_the_end_record_is_refused() {
    let (base, target) = sample_pair();
    for junk in [&b"junk"[..], b"e", b"\0"] {
        let mut stream = encode(&base, &target, None, None);
        let end = stream.len() as u64;
        stream.extend_from_slice(junk);
        let (offset, message) = corrupt_message(apply(&base, &stream));
        assert!(message.contains("after the end record"), "{message}");
        assert_eq!(offset, end);
    }
}

#[test]
fn out_of_bounds_and_misplaced_records_are_refused() {
    let s = size_rec(4096);
    let cases: Vec<(Vec<u8>, u64, &str)> = vec![
        // Past the size, and offset + length overflowing.
        (
            v1(&[&s[..], &rec(b'w', 4000, 100), &[0; 100], b"e"].concat()),
            21,
            "past the image size 4096",
        ),
        (
            v1(&[&s[..], &rec(b'z', 4096, 1), b"e"].concat()),
            21,
            "past the image size",
        ),
        (
            v1(&[&s[..], &rec(b'z', u64::MAX, 2), b"e"].concat()),
            21,
            "past the image size",
        ),
        (
            v1(&[
                &size_rec(i64::MAX as u64)[..],
                &rec(b'w', i64::MAX as u64, 1),
                b"e",
            ]
            .concat()),
            21,
            "past the image size",
        ),
        // Before the size record.
        (
            v1(&[&rec(b'z', 0, 1)[..], &s, b"e"].concat()),
            12,
            "before the size record",
        ),
        // A second size record, and metadata after data.
        (v1(&[&s[..], &s, b"e"].concat()), 21, "a second size record"),
        (
            v1(&[&s[..], &rec(b'z', 0, 1), &s, b"e"].concat()),
            38,
            "size record after a write or zero record",
        ),
        (
            v1(&[&s[..], &rec(b'z', 0, 1), b"f\x01\0\0\0a", b"e"].concat()),
            38,
            "from-snapshot record after a write or zero record",
        ),
        (
            v1(&[&b"t\x01\0\0\0a"[..], b"t\x01\0\0\0b", b"e"].concat()),
            18,
            "a second to-snapshot record",
        ),
        // Empty ranges.
        (
            v1(&[&s[..], &rec(b'w', 0, 0), b"e"].concat()),
            21,
            "length 0",
        ),
        // Unknown tag in v1.
        (v1(b"p\x01e"), 12, "unknown record tag 0x70"),
        // Names: too long, not UTF-8.
        (
            v1(&[&b"f"[..], &4097u32.to_le_bytes(), b"e"].concat()),
            12,
            "longer than 4096",
        ),
        (
            v1(&[&b"t"[..], &u32::MAX.to_le_bytes(), b"e"].concat()),
            12,
            "longer than 4096",
        ),
        (v1(b"f\x02\0\0\0\xff\xfee"), 12, "not UTF-8"),
    ];
    for (i, (stream, at, text)) in cases.into_iter().enumerate() {
        let (offset, message) = corrupt_message(decode(&stream));
        assert!(message.contains(text), "case {i}: {message}");
        assert_eq!(offset, at, "case {i}: {message}");
    }
}

#[test]
fn names_up_to_the_limit_and_streams_without_size_are_accepted() {
    let long = "n".repeat(MAX_SNAP_NAME);
    let stream = [
        &v1(b"f")[..],
        &(long.len() as u32).to_le_bytes(),
        long.as_bytes(),
        b"e",
    ]
    .concat();
    let got = apply(&[1, 2, 3], &stream).unwrap();
    assert_eq!(got.from.as_deref(), Some(long.as_str()));
    assert_eq!((got.size, got.image), (None, vec![1, 2, 3]));
    assert_eq!(apply(&[], &v1(b"e")).unwrap().size, None);
    apply(&[], &V2::new().raw(b'p', &[1]).end()).unwrap();
}

#[test]
fn huge_length_fields_fail_without_allocating() {
    // A write of 2^62 bytes, and an unknown v2 record of as many: each
    // must end as a truncation, read in bounded chunks.
    let stream = v1(&[
        &size_rec(i64::MAX as u64)[..],
        &rec(b'w', 0, 1 << 62),
        &[7; 10],
    ]
    .concat());
    let mut reader = RbdDiffReader::new(&stream[..]).unwrap();
    assert_eq!(
        reader.next_record().unwrap(),
        Some(RbdRecord::Size(i64::MAX as u64))
    );
    let err = reader.next_record().unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");

    let mut stream = V2::new().0;
    stream.push(b'X');
    stream.extend_from_slice(&u64::MAX.to_le_bytes());
    stream.extend_from_slice(&[0; 100]);
    let (offset, message) = corrupt_message(apply(&[], &stream));
    assert!(message.contains("truncated"), "{message}");
    assert_eq!(offset, stream.len() as u64);
}

#[test]
fn banners_other_than_rbd_diff_are_refused() {
    for bad in [
        &b"rbd image v2\n"[..],
        b"rbd diff v3\n",
        b"RBD DIFF V1\n",
        b"\x89SDX\r\n\x1a\n",
    ] {
        let (offset, message) = corrupt_message(apply(&[], bad));
        assert!(message.contains("not an rbd diff stream"), "{message}");
        assert_eq!(offset, 0);
    }
    assert_eq!(
        RbdDiffReader::new(&b"rbd diff v1\ne"[..])
            .unwrap()
            .version(),
        1
    );
}

#[test]
fn encoder_refuses_bad_snapshot_names() {
    let bad = [
        String::new(),
        "a\0b".to_string(),
        "x".repeat(MAX_SNAP_NAME + 1),
    ];
    for name in bad {
        for (from, to) in [(Some(name.clone()), None), (None, Some(name.clone()))] {
            match RbdDiffEncoder::new(Vec::new(), from, to) {
                Err(Error::InvalidArgument { field, .. }) => {
                    assert!(field.contains("snapshot"), "{field}")
                }
                Err(other) => panic!("{other:?}"),
                Ok(_) => panic!("accepted a bad name {:?}", &name[..name.len().min(8)]),
            }
        }
    }
    RbdDiffEncoder::new(Vec::new(), Some("x".repeat(MAX_SNAP_NAME)), None).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Damaged streams are refused or decode; they never panic.
    #[test]
    fn damaged_streams_never_panic(
        edits in prop::collection::vec((0usize..4000, any::<u8>()), 1..6),
        cut in 0usize..4000,
    ) {
        let base = pattern(16384, 2);
        let mut target = base.clone();
        target[4096..6000].fill(0);
        target[9000..9100].fill(1);
        let mut stream = encode(&base, &target, Some("a"), Some("b"));
        for (at, byte) in edits {
            let n = stream.len();
            stream[at % n] = byte;
        }
        stream.truncate(cut);
        let _ = decode(&stream);
        if stream.len() >= 12 {
            stream[..12].copy_from_slice(b"rbd diff v2\n");
            let _ = decode(&stream);
        }
    }
}

// Ceph's `rbd merge-diff` as the judge.

/// Runs `rbd merge-diff first second out`; fails the test if `rbd` is
/// missing. Returns whether it succeeded, and its stderr.
fn merge_diff(first: &Path, second: &Path, out: &Path) -> (bool, String) {
    let result = Command::new("rbd")
        .args(["-c", "/dev/null", "merge-diff", "--no-progress"])
        .args([first, second, out])
        .output();
    let output = match result {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`rbd` is not on PATH: install ceph-common (apt-get install ceph-common) \
             to run the Ceph interoperability tests; CI installs it"
        ),
        Err(e) => panic!("running rbd: {e}"),
    };
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A v1 stream with no changes.
fn empty_diff(size: u64, from: Option<&str>, to: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = RbdDiffEncoder::new(&mut out, from.map(Into::into), to.map(Into::into)).unwrap();
    let map = snapdelta::ChangeMap::new(BlockSize::new(4096).unwrap(), size, size);
    let target = vec![0u8; size as usize];
    export_map(&map, &target, &target, None, &mut enc).unwrap();
    assert_eq!(out.last(), Some(&b'e'));
    out
}

#[test]
fn ceph_merge_diff_accepts_our_stream() {
    let (base, target) = sample_pair();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let ours = encode(&base, &target, None, None);
    let map = detect(&base, &target, BlockSize::new(4096).unwrap());
    assert!(map.count(ExtentKind::Zero) > 0 && map.count(ExtentKind::Data) > 1);
    std::fs::write(p.join("ours"), &ours).unwrap();
    std::fs::write(
        p.join("empty"),
        [v1(&size_rec(target.len() as u64)), vec![b'e']].concat(),
    )
    .unwrap();
    for (first, second, out) in [("ours", "empty", "merged"), ("empty", "ours", "merged2")] {
        let (ok, stderr) = merge_diff(&p.join(first), &p.join(second), &p.join(out));
        assert!(ok, "rbd merge-diff {first} {second}: {stderr}");
        let merged = std::fs::read(p.join(out)).unwrap();
        let got = apply(&base, &merged).unwrap();
        assert_eq!(got.size, Some(target.len() as u64));
        assert!(
            got.image == target,
            "{first}+{second}: merged diff does not rebuild the target"
        );
        // With nothing to merge against, Ceph copies the records as they
        // are: the same stream, byte for byte.
        assert_eq!(merged, ours, "{first}+{second}");
    }
}

#[test]
fn ceph_merge_diff_keeps_outer_snapshot_names() {
    let (base, target) = sample_pair();
    let size = target.len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("ours"),
        encode(&base, &target, Some("snap1"), Some("snap2")),
    )
    .unwrap();
    std::fs::write(
        p.join("after"),
        empty_diff(size, Some("snap2"), Some("snap3")),
    )
    .unwrap();
    std::fs::write(
        p.join("before"),
        empty_diff(size, Some("snap0"), Some("snap1")),
    )
    .unwrap();
    std::fs::write(p.join("unnamed"), empty_diff(size, None, None)).unwrap();

    // Ceph keeps the first diff's from-snap and the second's to-snap.
    for (first, second, from, to) in [
        ("ours", "after", "snap1", "snap3"),
        ("before", "ours", "snap0", "snap2"),
    ] {
        let out = p.join(format!("{first}-{second}"));
        let (ok, stderr) = merge_diff(&p.join(first), &p.join(second), &out);
        assert!(ok, "rbd merge-diff {first} {second}: {stderr}");
        let got = apply(&base, &std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(got.from.as_deref(), Some(from));
        assert_eq!(got.to.as_deref(), Some(to));
        assert!(got.image == target);
    }

    // It refuses to chain diffs whose snapshots do not meet, and leaves
    // no output behind.
    for (first, second) in [("ours", "unnamed"), ("unnamed", "ours")] {
        let out = p.join(format!("{first}-{second}"));
        let (ok, stderr) = merge_diff(&p.join(first), &p.join(second), &out);
        assert!(!ok, "merged {first} {second}");
        assert!(
            stderr.contains("TO snapshot must be equal with the second FROM"),
            "{stderr}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn ceph_merge_diff_of_two_of_our_diffs_rebuilds_the_last_image() {
    // base (384 KiB) -> mid (shrunk to 256 KiB) -> target (grown to 512
    // KiB, zeros at 300..340 KiB where the base has data).
    let (base, mut target) = sample_pair();
    target[(300 << 10)..(340 << 10)].fill(0);
    let mut mid = base[..256 << 10].to_vec();
    mid[4096..12288].fill(0x42);
    mid[20480..24576].fill(0);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("one"), encode(&base, &mid, Some("a"), Some("b"))).unwrap();
    std::fs::write(p.join("two"), encode(&mid, &target, Some("b"), Some("c"))).unwrap();
    let (ok, stderr) = merge_diff(&p.join("one"), &p.join("two"), &p.join("merged"));
    assert!(ok, "rbd merge-diff: {stderr}");
    let merged = std::fs::read(p.join("merged")).unwrap();
    let got = apply(&base, &merged).unwrap();
    assert_eq!(
        (got.from.as_deref(), got.to.as_deref()),
        (Some("a"), Some("c"))
    );
    assert!(
        got.image == target,
        "merged diff does not rebuild the target"
    );
    // Neither diff has a record over 300..340 KiB (the first cut it off,
    // the second grew it back as zeros), yet the base has data there:
    // Ceph fills the regrown range with explicit zero records.
    assert!(
        got.zeros
            .iter()
            .any(|&(o, l)| o <= 300 << 10 && o + l >= 340 << 10),
        "{:?}",
        got.zeros
    );
}
