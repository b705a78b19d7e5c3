//! Criterion benchmarks of the diff core and the extent-list encoder, in
//! memory (no file system in the measurement). Each reports bytes per
//! second of target processed.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use snapdelta::{detect, detect_serial, export_map, BlockSize, ExtentListEncoder};
use std::hint::black_box;

const SIZE: usize = 64 << 20;
const BLOCK: usize = 64 << 10;

/// A base of pseudo-random bytes and a target with `percent` of its
/// blocks rewritten, spread evenly.
fn pair(percent: usize) -> (Vec<u8>, Vec<u8>) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let base: Vec<u8> = (0..SIZE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut target = base.clone();
    let blocks = SIZE / BLOCK;
    for b in 0..blocks {
        if percent > 0 && (b * percent) / 100 != ((b + 1) * percent) / 100 {
            target[b * BLOCK] ^= 0xff;
        }
    }
    (base, target)
}

fn detection(c: &mut Criterion) {
    let mut group = c.benchmark_group("detect");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    let bs = BlockSize::new(BLOCK as u64).unwrap();
    for percent in [0, 1, 10, 50] {
        let (base, target) = pair(percent);
        group.bench_with_input(BenchmarkId::new("parallel", percent), &percent, |b, _| {
            b.iter(|| black_box(detect(&base, &target, bs)))
        });
        group.bench_with_input(BenchmarkId::new("serial", percent), &percent, |b, _| {
            b.iter(|| black_box(detect_serial(&base, &target, bs)))
        });
    }
    group.finish();
}

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode-extent-list");
    group.sample_size(10);
    let bs = BlockSize::new(BLOCK as u64).unwrap();
    let (base, target) = pair(10);
    let map = detect(&base, &target, bs);
    group.throughput(Throughput::Bytes(map.bytes(snapdelta::ExtentKind::Data)));
    for (name, level) in [("plain", None), ("zstd-1", Some(1))] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(SIZE / 8);
                let mut enc = ExtentListEncoder::new(&mut out, true, level);
                export_map(&map, &base, &target, None, &mut enc).unwrap();
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, detection, encoding);
criterion_main!(benches);
