//! rbd-diff exports through the CLI, judged by Ceph's own `rbd`: merged
//! with an empty diff by `rbd merge-diff`, Ceph's rewritten stream applies
//! to the base and gives the target, on the ext4 pairs and edge cases.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn rbd_merge(dir: &Path, first: &str, second: &str, out: &str) {
    let result = Command::new("rbd")
        .args([
            "-c",
            "/dev/null",
            "merge-diff",
            "--no-progress",
            first,
            second,
            out,
        ])
        .current_dir(dir)
        .output()
        .expect("`rbd` is needed: apt-get install ceph-common (CI installs it)");
    assert!(
        result.status.success(),
        "rbd merge-diff {first} {second}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
}

/// An rbd diff v1 with no changes: banner, size record, end record.
fn empty_diff(size: u64) -> Vec<u8> {
    let mut v = b"rbd diff v1\n".to_vec();
    v.push(b's');
    v.extend_from_slice(&size.to_le_bytes());
    v.push(b'e');
    v
}

fn judge(dir: &Path, base: &str, target: &str, bs: u64) {
    let size = std::fs::metadata(dir.join(target)).unwrap().len();
    std::fs::write(dir.join("empty.rbd"), empty_diff(size)).unwrap();
    let ours = format!("{target}.rbd");
    let bs = bs.to_string();
    ok(
        dir,
        &[
            "export",
            "--base",
            base,
            target,
            "-o",
            &ours,
            "--output-type",
            "rbd-diff",
            "--block-size",
            &bs,
        ],
    );
    let target_bytes = std::fs::read(dir.join(target)).unwrap();
    for (first, second) in [(ours.as_str(), "empty.rbd"), ("empty.rbd", ours.as_str())] {
        let merged = format!("{first}+{second}.merged");
        rbd_merge(dir, first, second, &merged);
        let result = format!("{merged}.img");
        ok(dir, &["apply", "--base", base, &merged, "-o", &result]);
        assert!(
            std::fs::read(dir.join(&result)).unwrap() == target_bytes,
            "{merged}"
        );
    }
    // The same stream through a pipe.
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat '{ours}' | '{}' apply --base '{base}' - -o piped.img",
            bin().display()
        ))
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(piped.success());
    assert!(std::fs::read(dir.join("piped.img")).unwrap() == target_bytes);
    std::fs::remove_file(dir.join("piped.img")).unwrap();
}

#[test]
fn ceph_rewrites_our_diffs_of_the_ext4_pairs() {
    let d = tempfile::tempdir().unwrap();
    make_ext4_pairs(d.path());
    for pair in ["small", "grown", "churn"] {
        judge(
            d.path(),
            &format!("{pair}-base.img"),
            &format!("{pair}-target.img"),
            65536,
        );
    }
}

#[test]
fn ceph_rewrites_our_diffs_of_the_edge_cases() {
    let pattern = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| ((i % 251) as u8).wrapping_add(seed) | 1)
            .collect()
    };
    let b = pattern(300_000, 1);
    let mut zeroed = b.clone();
    zeroed[65536..131072].fill(0);
    zeroed[299_999] ^= 1;
    let mut grown = b.clone();
    grown.resize(400_000, 0);
    grown[390_000] = 5;
    let shrunk = b[..100_001].to_vec();
    let big = pattern(9 << 20, 4);
    for (name, base, target) in [
        ("zeroed", b.clone(), zeroed),
        ("grown", b.clone(), grown),
        ("shrunk", b.clone(), shrunk),
        ("identical", b.clone(), b.clone()),
        ("large-write", vec![0u8; 9 << 20], big),
        ("empty-base", Vec::new(), pattern(70_000, 9)),
    ] {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("base.img"), &base).unwrap();
        std::fs::write(d.path().join("target.img"), &target).unwrap();
        eprintln!("case {name}");
        judge(d.path(), "base.img", "target.img", 4096);
    }
}

#[test]
fn snapshot_names_are_written_and_read() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("base.img"), vec![1u8; 65536]).unwrap();
    std::fs::write(p.join("target.img"), vec![2u8; 65536]).unwrap();
    ok(
        p,
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "named.rbd",
            "--output-type",
            "rbd-diff",
            "--from-snap",
            "monday",
            "--to-snap",
            "tuesday",
        ],
    );
    let (info, listed) = info_extents(p, "named.rbd");
    assert_eq!(info["from_snap"], "monday");
    assert_eq!(info["to_snap"], "tuesday");
    assert_eq!(info["output_type"], "RBD_DIFF");
    assert_eq!(listed, vec![(0, 65536, "data".to_string())]);
    let out = run(p, &["export", "target.img", "-o", "x", "--from-snap", "a"]);
    assert_eq!(out.status.code(), Some(2));
    // A stream cut before its end record is refused and leaves nothing.
    let bytes = std::fs::read(p.join("named.rbd")).unwrap();
    std::fs::write(p.join("cut.rbd"), &bytes[..bytes.len() - 1]).unwrap();
    let err = fails(
        p,
        &["apply", "--base", "base.img", "cut.rbd", "-o", "never.img"],
    );
    assert!(err.contains("truncated"), "{err}");
    assert!(!p.join("never.img").exists());
}

/// Records that overlap or go backwards, and sizes no file can have, are
/// refused rather than applied in some order.
#[test]
fn out_of_order_and_oversized_streams_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("base.img"), vec![0u8; 8192]).unwrap();
    let record = |tag: u8, offset: u64, length: u64| {
        let mut v = vec![tag];
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&length.to_le_bytes());
        v
    };
    let stream = |size: u64, records: &[Vec<u8>]| {
        let mut v = b"rbd diff v1\ns".to_vec();
        v.extend_from_slice(&size.to_le_bytes());
        for r in records {
            v.extend_from_slice(r);
        }
        v.push(b'e');
        v
    };
    let mut write = record(b'w', 0, 4096);
    write.extend_from_slice(&[0xff; 4096]);
    for (name, bytes, words) in [
        (
            "overlap.rbd",
            stream(8192, &[write.clone(), record(b'z', 0, 4096)]),
            "out of order",
        ),
        (
            "backwards.rbd",
            stream(8192, &[record(b'z', 4096, 4096), write]),
            "out of order",
        ),
        ("huge.rbd", stream(1 << 63, &[]), "2^63"),
    ] {
        std::fs::write(p.join(name), bytes).unwrap();
        let err = fails(p, &["apply", "--base", "base.img", name, "-o", "never.img"]);
        assert!(err.contains(words), "{name}: {err}");
        assert!(!p.join("never.img").exists());
    }
}
