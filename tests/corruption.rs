//! A truncated or altered extent-list stream is an error that says what
//! and where, never a panic; apply leaves no output behind.

mod common;
use common::*;
use snapdelta::{export_map, BlockSize, Digests, Error, ExtentListEncoder, ExtentListReader};

fn sample(zstd: bool) -> Vec<u8> {
    let base = vec![0x11u8; 65536];
    let mut target = base.clone();
    target[12288..16384].fill(0x22);
    target[20480..24576]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i % 7) as u8 + 1);
    target[40960..45056].fill(0);
    let map = snapdelta::detect(&base, &target, BlockSize::new(4096).unwrap());
    let digests = Digests::compute(&base, &target);
    let mut out = Vec::new();
    let mut enc = ExtentListEncoder::new(&mut out, true, zstd.then_some(3));
    export_map(&map, &base, &target, Some(&digests), &mut enc).unwrap();
    out
}

fn decode(bytes: &[u8]) -> snapdelta::Result<()> {
    let mut reader = ExtentListReader::new(bytes)?;
    while reader.next_record()?.is_some() {}
    Ok(())
}

#[test]
fn every_truncation_is_reported_with_its_offset() {
    for zstd in [false, true] {
        let full = sample(zstd);
        decode(&full).unwrap();
        for cut in 0..full.len() {
            match decode(&full[..cut]) {
                Err(Error::Corrupt {
                    offset, message, ..
                }) => {
                    assert!(message.contains("truncated"), "cut {cut}: {message}");
                    assert_eq!(offset, cut as u64, "cut {cut}: {message}");
                }
                other => panic!("cut at {cut} of {}: {other:?}", full.len()),
            }
        }
    }
}

#[test]
fn every_flipped_byte_is_detected() {
    for zstd in [false, true] {
        let full = sample(zstd);
        for at in 0..full.len() {
            let mut bad = full.clone();
            bad[at] ^= 0x40;
            assert!(
                decode(&bad).is_err(),
                "flip at {at} of {} went unnoticed",
                full.len()
            );
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut full = sample(false);
    full.extend_from_slice(b"junk");
    let err = decode(&full).unwrap_err().to_string();
    assert!(err.contains("after the end record"), "{err}");
}

#[test]
fn apply_of_a_damaged_export_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    fill(&p.join("base.img"), 0, 262144, 0x11);
    std::fs::copy(p.join("base.img"), p.join("target.img")).unwrap();
    fill(&p.join("target.img"), 12288, 4096, 0x22);
    fill(&p.join("target.img"), 69632, 4096, 0x33);
    fill(&p.join("target.img"), 163840, 4096, 0);
    ok(
        p,
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "out.ext",
            "--block-size",
            "4K",
        ],
    );
    let full = std::fs::read(p.join("out.ext")).unwrap();
    let n = full.len();
    let mut flipped = full.clone();
    flipped[n / 2] ^= 0xff;
    let mut tail = full.clone();
    tail.extend_from_slice(b"junk");
    for (name, bytes) in [
        ("cut0", full[..0].to_vec()),
        ("cut1", full[..1].to_vec()),
        ("cuthalf", full[..n / 2].to_vec()),
        ("cutlast", full[..n - 1].to_vec()),
        ("flip", flipped),
        ("tail", tail),
    ] {
        std::fs::write(p.join(name), &bytes).unwrap();
        let err = fails(p, &["apply", "--base", "base.img", name, "-o", "res.img"]);
        assert!(!err.contains("panicked"), "{err}");
        assert!(!p.join("res.img").exists(), "{name} left an output");
        let leftovers: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
