//! Real input: ext4 image pairs made by `testdata/make-ext4-pairs.sh` with
//! e2fsprogs, exported in every output type, checked against the reference
//! diff, applied and compared byte for byte with the target.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Makes the pairs once for this test binary.
fn pairs() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        make_ext4_pairs(dir.path());
        let path = dir.path().to_path_buf();
        (dir, path)
    });
    path
}

/// Links a pair into a fresh directory of its own, so tests run apart.
fn pair_dir(name: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for side in ["base", "target"] {
        std::fs::copy(
            pairs().join(format!("{name}-{side}.img")),
            d.path().join(format!("{side}.img")),
        )
        .unwrap();
    }
    d
}

fn check_pair(name: &str) {
    for bs in [4096, 65536] {
        let d = pair_dir(name);
        let ext = roundtrip(d.path(), Some("base.img"), "target.img", bs);
        assert!(!ext.is_empty(), "{name}: the pair should differ");
        // The diff command agrees with the reference too.
        let out = ok(
            d.path(),
            &[
                "diff",
                "--base",
                "base.img",
                "target.img",
                "--json",
                "--block-size",
                &bs.to_string(),
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["extents"].as_array().unwrap().len(),
            ext.len(),
            "{name} at {bs}"
        );
    }
}

#[test]
fn small_pair() {
    check_pair("small");
}

#[test]
fn grown_pair() {
    check_pair("grown");
}

#[test]
fn churn_pair() {
    check_pair("churn");
}

#[test]
fn full_export_without_base() {
    let d = pair_dir("small");
    let ext = roundtrip(d.path(), None, "target.img", 65536);
    assert!(!ext.is_empty());
}
