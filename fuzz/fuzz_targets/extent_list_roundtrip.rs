//! Arbitrary pairs of small images, encoded as an extent-list stream and
//! decoded again: the same extents and bytes come back, and applying the
//! records to the base gives the target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapdelta::format::extent_list::Record;
use snapdelta::{detect, export_map, BlockSize, Digests, ExtentListEncoder, ExtentListReader};

fuzz_target!(|input: (Vec<u8>, Vec<u8>, bool)| {
    let (base, target, zstd) = input;
    let bs = BlockSize::new(4096).unwrap();
    let map = detect(&base, &target, bs);
    let digests = Digests::compute(&base, &target);
    let mut out = Vec::new();
    let mut encoder = ExtentListEncoder::new(&mut out, true, zstd.then_some(1));
    export_map(&map, &base, &target, Some(&digests), &mut encoder).unwrap();
    let mut reader = ExtentListReader::new(out.as_slice()).unwrap();
    let mut rebuilt = base.clone();
    rebuilt.resize(target.len(), 0);
    while let Some(record) = reader.next_record().unwrap() {
        match record {
            Record::Data {
                offset, payload, ..
            } => {
                let p = payload.unwrap();
                rebuilt[offset as usize..offset as usize + p.len()].copy_from_slice(p);
            }
            Record::Zero { offset, length, .. } => {
                rebuilt[offset as usize..(offset + length) as usize].fill(0);
            }
        }
    }
    assert_eq!(
        reader.trailer().unwrap().target_digest,
        Some(digests.target)
    );
    assert!(rebuilt == target);
});
