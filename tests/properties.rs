//! Properties over random image pairs: detection matches the reference,
//! serial and parallel agree, every stream decodes to what was encoded,
//! and every output type applies to the base to give the target.

#[path = "../fuzz/checks.rs"]
mod checks;
mod common;
use common::refdiff;
use proptest::prelude::*;
use snapdelta::format::extent_list::Record;
use snapdelta::{
    detect, detect_serial, export_map, BlockSize, Digests, ExtentKind, ExtentListEncoder,
    ExtentListReader,
};

/// A base and a target made from it by random edits: overwrites with
/// random bytes or zeros, then a new size (grown or shrunk).
fn pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, u32)> {
    let edits = prop::collection::vec(
        (
            0usize..70_000,
            1usize..20_000,
            prop::option::of(any::<u8>()),
        ),
        0..6,
    );
    (0usize..70_000, edits, 0usize..80_000, 0u32..3, any::<u8>()).prop_map(
        |(base_len, edits, target_len, shift, seed)| {
            let base: Vec<u8> = (0..base_len)
                .map(|i| ((i * 7 + seed as usize) % 251) as u8)
                .collect();
            let mut target = base.clone();
            target.resize(target_len, 0);
            for (at, len, byte) in edits {
                if at >= target.len() {
                    continue;
                }
                let end = (at + len).min(target.len());
                match byte {
                    Some(b) => target[at..end]
                        .iter_mut()
                        .enumerate()
                        .for_each(|(i, x)| *x = b ^ i as u8),
                    None => target[at..end].fill(0),
                }
            }
            (base, target, 4096 << shift)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn detection_matches_the_reference((base, target, bs) in pair()) {
        let block = BlockSize::new(u64::from(bs)).unwrap();
        let map = detect(&base, &target, block);
        prop_assert_eq!(&map, &detect_serial(&base, &target, block));
        let got: Vec<_> = map.extents.iter().map(|e| (e.offset, e.length, match e.kind {
            ExtentKind::Data => "data",
            ExtentKind::Zero => "zero",
        })).collect();
        prop_assert_eq!(got, refdiff(&base, &target, bs as usize));
        for w in map.extents.windows(2) {
            prop_assert!(w[0].end() < w[1].offset || (w[0].end() == w[1].offset && w[0].kind != w[1].kind));
        }
        if let Some(last) = map.extents.last() {
            prop_assert!(last.end() <= target.len() as u64);
        }
    }

    #[test]
    fn streams_decode_to_what_was_encoded((base, target, bs) in pair(), payloads in any::<bool>(), zstd in any::<bool>()) {
        let block = BlockSize::new(u64::from(bs)).unwrap();
        let map = detect(&base, &target, block);
        let digests = Digests::compute(&base, &target);
        let mut out = Vec::new();
        let level = (payloads && zstd).then_some(1);
        let summary = export_map(&map, &base, &target, Some(&digests), &mut ExtentListEncoder::new(&mut out, payloads, level)).unwrap();
        prop_assert_eq!(summary.bytes_written, out.len() as u64);

        let mut reader = ExtentListReader::new(out.as_slice()).unwrap();
        prop_assert_eq!(reader.header().target_size, target.len() as u64);
        prop_assert_eq!(reader.header().base_digest, Some(digests.base));
        let mut rebuilt = base.clone();
        rebuilt.resize(target.len(), 0);
        let mut extents: Vec<(u64, u64, ExtentKind)> = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            let (o, l, k) = match record {
                Record::Data { offset, length, payload, .. } => {
                    prop_assert_eq!(payload.is_some(), payloads);
                    let span = offset as usize..(offset + length) as usize;
                    match payload {
                        Some(p) => rebuilt[span].copy_from_slice(p),
                        None => rebuilt[span.clone()].copy_from_slice(&target[span]),
                    }
                    (offset, length, ExtentKind::Data)
                }
                Record::Zero { offset, length, .. } => {
                    rebuilt[offset as usize..(offset + length) as usize].fill(0);
                    (offset, length, ExtentKind::Zero)
                }
            };
            match extents.last_mut() {
                Some(e) if e.0 + e.1 == o && e.2 == k => e.1 += l,
                _ => extents.push((o, l, k)),
            }
        }
        prop_assert_eq!(reader.trailer().unwrap().target_digest, Some(digests.target));
        prop_assert!(rebuilt == target);
        let expected: Vec<_> = map.extents.iter().map(|e| (e.offset, e.length, e.kind)).collect();
        prop_assert_eq!(extents, expected);
    }

    #[test]
    fn every_output_type_applies_to_the_target(
        (base, target, bs) in pair(),
        ty in prop::sample::select(checks::ROUNDTRIP_TYPES.to_vec()),
        digests in any::<bool>(),
    ) {
        let block = BlockSize::new(u64::from(bs)).unwrap();
        checks::roundtrip_pair(&base, &target, ty, block, digests);
    }
}
