//! Criterion benchmarks of the engine. Each reports bytes per second:
//! detection of target bytes, encoders of changed bytes, apply of target
//! bytes. `cargo bench` runs them all; `cargo bench -- detect` one group.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use snapdelta::detect::scan_blocks;
use snapdelta::format::qcow2::{Qcow2Encoder, Qcow2Options};
use snapdelta::format::rbd_diff::RbdDiffEncoder;
use snapdelta::{
    detect, detect_serial, export_map, scan, write_manifest, BlockSize, ExportInput, ExtentKind,
    ExtentListEncoder, Image, ManifestReader, RawSparseEncoder, Sink, Source,
};
use std::hint::black_box;
use std::io::Write;

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
            target[b * BLOCK + 100..b * BLOCK + 612].fill(0xee);
        }
    }
    (base, target)
}

fn block_size() -> BlockSize {
    BlockSize::new(BLOCK as u64).unwrap()
}

fn detection(c: &mut Criterion) {
    let mut group = c.benchmark_group("detect");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    for percent in [0, 1, 10, 50] {
        let (base, target) = pair(percent);
        group.bench_with_input(BenchmarkId::new("parallel", percent), &percent, |b, _| {
            b.iter(|| black_box(detect(&base, &target, block_size())))
        });
        group.bench_with_input(BenchmarkId::new("serial", percent), &percent, |b, _| {
            b.iter(|| black_box(detect_serial(&base, &target, block_size())))
        });
    }
    group.finish();

    // A sparse pair on disk: 4 GiB virtual, 32 MiB stored, 4 MiB changed.
    let dir = tempfile::tempdir().unwrap();
    let (bp, tp) = (dir.path().join("base"), dir.path().join("target"));
    let (base, _) = pair(0);
    for (path, salt) in [(&bp, 0u8), (&tp, 1u8)] {
        let f = std::fs::File::create(path).unwrap();
        f.set_len(4 << 30).unwrap();
        for i in 0..32u64 {
            let mut chunk = base[..1 << 20].to_vec();
            if i % 8 == 0 {
                chunk[0] ^= salt;
            }
            std::os::unix::fs::FileExt::write_all_at(&f, &chunk, i * (128 << 20)).unwrap();
        }
    }
    let (b, t) = (Image::open(&bp).unwrap(), Image::open(&tp).unwrap());
    let mut group = c.benchmark_group("detect-sparse");
    group.throughput(Throughput::Bytes(4 << 30));
    group.sample_size(10);
    for digests in [false, true] {
        group.bench_with_input(
            BenchmarkId::new("digests", digests),
            &digests,
            |bench, &d| {
                bench.iter(|| {
                    black_box(scan(&b.source(), &t.source(), block_size(), d, &mut |_| {}))
                })
            },
        );
    }
    group.finish();
}

/// Block manifests of the in-memory target: writing one, and comparing the
/// target with the base's (manifest-based detection), at 4 KiB and 64 KiB.
fn manifests(c: &mut Criterion) {
    let mut group = c.benchmark_group("manifest");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    let (base, target) = pair(10);
    let (base, target) = (Source::from_bytes(&base), Source::from_bytes(&target));
    for bs in [4096u64, 65536] {
        let bs = BlockSize::new(bs).unwrap();
        let mut base_manifest = Vec::new();
        write_manifest(&base, bs, &mut base_manifest, &mut |_| {}).unwrap();
        group.bench_with_input(BenchmarkId::new("write", bs.get()), &bs, |b, &bs| {
            b.iter(|| {
                let mut out = Vec::with_capacity(base_manifest.len());
                black_box(write_manifest(&target, bs, &mut out, &mut |_| {}).unwrap())
            })
        });
        group.bench_with_input(BenchmarkId::new("detect", bs.get()), &bs, |b, &bs| {
            b.iter(|| {
                let mut reader = ManifestReader::new(&base_manifest[..]).unwrap();
                black_box(
                    scan_blocks::<_, std::io::Sink>(
                        &target,
                        bs,
                        Some(&mut reader),
                        None,
                        &mut |_| {},
                    )
                    .unwrap()
                    .map,
                )
            })
        });
    }
    group.finish();
}

fn encoders(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.sample_size(10);
    let (base, target) = pair(10);
    let map = detect(&base, &target, block_size());
    group.throughput(Throughput::Bytes(map.bytes(ExtentKind::Data)));
    let dir = tempfile::tempdir().unwrap();
    let run = |sink: &mut dyn Sink| export_map(&map, &base, &target, None, sink).unwrap();
    group.bench_function("extent-list", |b| {
        b.iter(|| run(&mut ExtentListEncoder::new(std::io::sink(), true, None)))
    });
    group.bench_function("extent-list-zstd1", |b| {
        b.iter(|| run(&mut ExtentListEncoder::new(std::io::sink(), true, Some(1))))
    });
    group.bench_function("qcow2", |b| {
        let options = Qcow2Options {
            backing: Some("base.img".into()),
            zstd_level: None,
        };
        b.iter(|| run(&mut Qcow2Encoder::new(std::io::sink(), options.clone())))
    });
    group.bench_function("rbd-diff", |b| {
        b.iter(|| run(&mut RbdDiffEncoder::new(std::io::sink(), None, None).unwrap()))
    });
    group.bench_function("raw-sparse", |b| {
        let path = dir.path().join("raw");
        b.iter(|| {
            let file = std::fs::File::create(&path).unwrap();
            run(&mut RawSparseEncoder::new(file, &path, std::io::sink()))
        })
    });
    group.finish();
}

fn applying(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(SIZE as u64));
    let dir = tempfile::tempdir().unwrap();
    let (base, target) = pair(10);
    let map = detect(&base, &target, block_size());
    let export = dir.path().join("export");
    let mut out = std::fs::File::create(&export).unwrap();
    let mut encoder = ExtentListEncoder::new(&mut out, true, None);
    export_map(&map, &base, &target, None, &mut encoder).unwrap();
    out.flush().unwrap();
    let base_path = dir.path().join("base");
    std::fs::write(&base_path, &base).unwrap();
    let output = dir.path().join("rebuilt");
    group.bench_function("extent-list", |b| {
        b.iter(|| {
            snapdelta::apply(
                Some(&base_path),
                &ExportInput::Path(export.clone()),
                &output,
                true,
                &mut |_| {},
            )
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, detection, manifests, encoders, applying);
criterion_main!(benches);
