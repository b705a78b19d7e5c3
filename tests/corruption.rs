//! A truncated or altered extent-list stream is an error that says what
//! and where, never a panic.

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
