//! Edge cases of the engine, end to end through the CLI: each exports in
//! every output type, checks the extents against the reference diff,
//! applies and compares with the target.

mod common;
use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// A byte pattern with a prime cycle, so shifted blocks never compare
/// equal by accident.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn identical_images_give_an_empty_valid_export() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.img", &pattern(300_000, 3));
    write(d.path(), "target.img", &pattern(300_000, 3));
    assert!(roundtrip(d.path(), Some("base.img"), "target.img", 4096).is_empty());
    assert!(roundtrip(d.path(), Some("base.img"), "target.img", 65536).is_empty());
}

#[test]
fn no_base_exports_every_non_zero_block() {
    let d = tempfile::tempdir().unwrap();
    let mut t = pattern(200_000, 5);
    t[65536..131072].fill(0);
    write(d.path(), "target.img", &t);
    let ext = roundtrip(d.path(), None, "target.img", 65536);
    assert_eq!(
        ext,
        vec![(0, 65536, "data"), (131072, 200_000 - 131072, "data")]
    );
    // An empty file as the base means the same.
    write(d.path(), "empty.img", b"");
    ok(d.path(), &["export", "target.img", "-o", "nobase.ext"]);
    ok(
        d.path(),
        &["apply", "--base", "empty.img", "nobase.ext", "-o", "r.img"],
    );
    assert_eq!(std::fs::read(d.path().join("r.img")).unwrap(), t);
    // A real base is refused for an export made without one.
    let err = fails(
        d.path(),
        &[
            "apply",
            "--base",
            "target.img",
            "nobase.ext",
            "-o",
            "r2.img",
        ],
    );
    assert!(err.contains("without a base"), "{err}");
}

#[test]
fn all_zero_target() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.img", &pattern(1 << 20, 1));
    write(d.path(), "target.img", &vec![0; 1 << 20]);
    assert_eq!(
        roundtrip(d.path(), Some("base.img"), "target.img", 65536),
        vec![(0, 1 << 20, "zero")]
    );
    // Without a base an all-zero target has nothing to export.
    assert!(roundtrip(d.path(), None, "target.img", 65536).is_empty());
}

#[test]
fn base_larger_than_target() {
    let d = tempfile::tempdir().unwrap();
    let b = pattern(500_000, 1);
    let mut t = b[..300_001].to_vec();
    t[70_000] ^= 0xff;
    write(d.path(), "base.img", &b);
    write(d.path(), "target.img", &t);
    let ext = roundtrip(d.path(), Some("base.img"), "target.img", 65536);
    assert_eq!(ext, vec![(65536, 65536, "data")]);
}

#[test]
fn target_larger_than_base() {
    let d = tempfile::tempdir().unwrap();
    let b = pattern(100_000, 1);
    let mut t = b.clone();
    t.resize(400_000, 0);
    t[399_999] = 9;
    write(d.path(), "base.img", &b);
    write(d.path(), "target.img", &t);
    let ext = roundtrip(d.path(), Some("base.img"), "target.img", 65536);
    assert_eq!(ext, vec![(393216, 400_000 - 393216, "data")]);
}

#[test]
fn empty_images() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.img", b"");
    write(d.path(), "target.img", b"");
    assert!(roundtrip(d.path(), Some("base.img"), "target.img", 4096).is_empty());
    // Shrunk to nothing: carried by the target size alone.
    write(d.path(), "full.img", &pattern(10_000, 1));
    assert!(roundtrip(d.path(), Some("full.img"), "target.img", 4096).is_empty());
}

#[test]
fn odd_sizes_last_byte_and_block_boundaries() {
    let d = tempfile::tempdir().unwrap();
    let b = pattern(3 * 65536 + 777, 2);
    for (name, f) in [
        (
            "last.img",
            &(|t: &mut Vec<u8>| *t.last_mut().unwrap() ^= 1) as &dyn Fn(&mut Vec<u8>),
        ),
        ("cross.img", &|t: &mut Vec<u8>| t[65530..65542].fill(0xee)),
        ("zeroed.img", &|t: &mut Vec<u8>| t[65536..131072].fill(0)),
        ("mixed.img", &|t: &mut Vec<u8>| {
            t[0] ^= 1;
            t[65536..131072].fill(0);
            t[131072..].fill(0);
        }),
    ] {
        let mut t = b.clone();
        f(&mut t);
        write(d.path(), "base.img", &b);
        write(d.path(), name, &t);
        for bs in [4096, 65536, 2 << 20] {
            let dir = d.path().join(format!("{name}-{bs}"));
            std::fs::create_dir(&dir).unwrap();
            write(&dir, "base.img", &b);
            write(&dir, name, &t);
            let ext = roundtrip(&dir, Some("base.img"), name, bs);
            assert!(!ext.is_empty(), "{name} at {bs}");
        }
    }
}

#[test]
fn stdout_export_and_stdin_apply() {
    let d = tempfile::tempdir().unwrap();
    let b = pattern(1 << 20, 1);
    let mut t = b.clone();
    t[12345..70000].fill(7);
    write(d.path(), "base.img", &b);
    write(d.path(), "target.img", &t);
    let out = ok(
        d.path(),
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "-",
            "--compress",
            "zstd",
        ],
    );
    let mut child = Command::new(bin())
        .args(["apply", "--base", "base.img", "-", "-o", "r.img"])
        .current_dir(d.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(std::fs::read(d.path().join("r.img")).unwrap(), t);
    // raw-sparse cannot go to a pipe.
    let out = run(
        d.path(),
        &[
            "export",
            "target.img",
            "-o",
            "-",
            "--output-type",
            "raw-sparse",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("seekable"));
}

#[test]
fn existing_outputs_are_kept_without_force() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.img", &pattern(8192, 1));
    write(d.path(), "target.img", &pattern(8192, 2));
    write(d.path(), "out.ext", b"keep me");
    let err = fails(
        d.path(),
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "out.ext",
        ],
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(d.path().join("out.ext")).unwrap(), b"keep me");
    ok(
        d.path(),
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "out.ext",
            "--force",
        ],
    );
    write(d.path(), "r.img", b"keep me");
    fails(
        d.path(),
        &["apply", "--base", "base.img", "out.ext", "-o", "r.img"],
    );
    assert_eq!(std::fs::read(d.path().join("r.img")).unwrap(), b"keep me");
}

#[test]
fn wrong_base_of_the_right_size_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let b = pattern(1 << 20, 1);
    let mut t = b.clone();
    t[0..10].fill(9);
    write(d.path(), "base.img", &b);
    write(d.path(), "target.img", &t);
    ok(
        d.path(),
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "out.ext",
        ],
    );
    // Different only far from the changed block: the base digest catches it.
    let mut other = b.clone();
    other[900_000] ^= 1;
    write(d.path(), "other.img", &other);
    let err = fails(
        d.path(),
        &["apply", "--base", "other.img", "out.ext", "-o", "r.img"],
    );
    assert!(err.contains("mismatch"), "{err}");
    assert!(!d.path().join("r.img").exists());
}

#[test]
fn usage_errors_exit_2_and_bad_paths_name_the_path() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "t.img", b"x");
    for args in [
        &["export", "t.img", "-o", "o", "--block-size", "3K"][..],
        &["export", "t.img", "-o", "o", "--output-type", "INVALID"],
        &["export", "t.img", "-o", "o", "--compress", "gzip"],
        &["diff"],
        &["frobnicate"],
    ] {
        assert_eq!(run(d.path(), args).status.code(), Some(2), "{args:?}");
    }
    let err = fails(d.path(), &["diff", "--base", "missing.img", "t.img"]);
    assert!(err.contains("missing.img"), "{err}");
    let err = fails(d.path(), &["diff", "--base", ".", "t.img"]);
    assert!(err.contains("directory"), "{err}");
    // The API's spelling of a type is accepted.
    ok(
        d.path(),
        &[
            "export",
            "t.img",
            "-o",
            "o",
            "--output-type",
            "METADATA_ONLY",
        ],
    );
}

#[test]
fn diff_json_has_the_documented_shape() {
    let d = tempfile::tempdir().unwrap();
    let b = pattern(10000, 1);
    let mut t = b.clone();
    t[9999] ^= 1;
    write(d.path(), "base.img", &b);
    write(d.path(), "target.img", &t);
    let out = ok(
        d.path(),
        &[
            "diff",
            "--base",
            "base.img",
            "target.img",
            "--block-size",
            "4K",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"block_size": 4096, "base_size": 10000, "target_size": 10000,
            "extents": [{"offset": 8192, "length": 1808, "kind": "data"}]})
    );
    let table = ok(
        d.path(),
        &[
            "diff",
            "--base",
            "base.img",
            "target.img",
            "--block-size",
            "4K",
        ],
    );
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("8192") && text.contains("1808") && text.contains("data"),
        "{text}"
    );
}

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success());
}

#[test]
fn fifos_as_export_and_as_images() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let b = pattern(65536, 1);
    let mut t = b.clone();
    t[100] ^= 1;
    write(p, "base.img", &b);
    write(p, "target.img", &t);
    ok(
        p,
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "out.ext",
        ],
    );
    // An export read from a FIFO is opened once and applied.
    mkfifo(&p.join("pipe"));
    let bytes = std::fs::read(p.join("out.ext")).unwrap();
    let writer_path = p.join("pipe");
    let writer = std::thread::spawn(move || std::fs::write(writer_path, bytes).unwrap());
    ok(p, &["apply", "--base", "base.img", "pipe", "-o", "r.img"]);
    writer.join().unwrap();
    assert_eq!(std::fs::read(p.join("r.img")).unwrap(), t);
    // A FIFO as an image is refused at once instead of waiting for a writer.
    mkfifo(&p.join("fifo.img"));
    let err = fails(p, &["diff", "--base", "fifo.img", "target.img"]);
    assert!(
        err.contains("fifo.img") && err.contains("not a regular file"),
        "{err}"
    );
}

#[test]
fn a_stale_change_map_does_not_hide_a_stream() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(p, "base.img", &pattern(65536, 1));
    write(p, "target.img", &pattern(65536, 2));
    ok(
        p,
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "y",
            "--output-type",
            "raw-sparse",
        ],
    );
    ok(
        p,
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "y",
            "--force",
        ],
    );
    assert_eq!(info_extents(p, "y").0["output_type"], "METADATA_AND_DATA");
    ok(p, &["apply", "--base", "base.img", "y", "-o", "r.img"]);
    assert_eq!(std::fs::read(p.join("r.img")).unwrap(), pattern(65536, 2));
}

#[test]
fn a_failed_raw_sparse_export_leaves_no_map() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(p, "base.img", &pattern(65536, 1));
    write(p, "target.img", &pattern(65536, 2));
    std::fs::create_dir(p.join("dir")).unwrap();
    write(p, "dir.map", b"OLD");
    fails(
        p,
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "dir",
            "--output-type",
            "raw-sparse",
            "--force",
        ],
    );
    assert_eq!(std::fs::read(p.join("dir.map")).unwrap(), b"OLD");
}

#[test]
fn an_export_never_replaces_its_input() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(p, "base.img", &pattern(65536, 1));
    write(p, "target.img", &pattern(65536, 2));
    std::os::unix::fs::symlink("target.img", p.join("alias.img")).unwrap();
    for out in ["target.img", "base.img"] {
        let o = run(
            p,
            &[
                "export",
                "--base",
                "base.img",
                "alias.img",
                "-o",
                out,
                "--force",
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{out}");
    }
    assert_eq!(
        std::fs::read(p.join("target.img")).unwrap(),
        pattern(65536, 2)
    );
    assert_eq!(
        std::fs::read(p.join("base.img")).unwrap(),
        pattern(65536, 1)
    );
}

#[test]
fn options_that_do_not_fit_together_are_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "t.img", b"x");
    for args in [
        &[
            "export",
            "t.img",
            "-o",
            "o",
            "--output-type",
            "metadata-only",
            "--compress",
            "zstd",
        ][..],
        &["export", "t.img", "-o", "-", "--output-type", "raw-sparse"],
    ] {
        assert_eq!(run(d.path(), args).status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn raw_sparse_info_checks_the_data_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(p, "base.img", &pattern(65536, 1));
    write(p, "target.img", &pattern(65536, 2));
    ok(
        p,
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "r.raw",
            "--output-type",
            "raw-sparse",
        ],
    );
    ok(p, &["info", "r.raw"]);
    let mut bytes = std::fs::read(p.join("r.raw")).unwrap();
    bytes[10] ^= 1;
    write(p, "r.raw", &bytes);
    let err = fails(p, &["info", "r.raw"]);
    assert!(err.contains("do not match its change map"), "{err}");
}

/// Sparse images: holes in both are skipped unread, a hole against data
/// compares as zeros; results equal the reference diff, which reads every
/// byte.
#[test]
fn sparse_images_with_holes_on_either_side() {
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let size = 48u64 << 20;
    let base = std::fs::File::create(p.join("base.img")).unwrap();
    let target = std::fs::File::create(p.join("target.img")).unwrap();
    base.set_len(size).unwrap();
    target.set_len(size + 12345).unwrap();
    let blob = pattern(3 << 20, 7);
    // Data in both, equal and different; data against a hole on each side;
    // zeros written over a hole; a run across group boundaries.
    for (f, at, len) in [
        (&base, 0u64, 1u64 << 20),
        (&target, 0, 1 << 20),
        (&base, 8 << 20, 2 << 20),
        (&target, (8 << 20) + 65536, 3 << 20),
        (&base, 20 << 20, 1 << 20),
        (&target, 30 << 20, 1 << 20),
        (&base, (47 << 20) + 4096, 4096),
    ] {
        f.write_all_at(&blob[..len as usize], at).unwrap();
    }
    target.write_all_at(&[0u8; 65536], 40 << 20).unwrap();
    target.write_all_at(&[9u8; 100], size + 12000).unwrap();
    drop((base, target));
    let ext = roundtrip(p, Some("base.img"), "target.img", 65536);
    assert!(ext.iter().any(|e| e.2 == "zero"), "{ext:?}");
    assert!(ext.iter().any(|e| e.2 == "data"), "{ext:?}");
    // Without a base, only the stored non-zero data of the target.
    roundtrip(p, None, "target.img", 4096);
}

/// An image cut short after it was opened is reported as an error by
/// detection, which reads with system calls, instead of crashing the
/// process through its mapping.
#[test]
fn an_image_truncated_underneath_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(p, "base.img", &pattern(8 << 20, 1));
    write(p, "target.img", &pattern(8 << 20, 2));
    let base = snapdelta::Image::open(p.join("base.img")).unwrap();
    let target = snapdelta::Image::open(p.join("target.img")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(p.join("target.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    for digests in [false, true] {
        let err = snapdelta::scan(
            &base.source(),
            &target.source(),
            snapdelta::BlockSize::DEFAULT,
            digests,
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("target.img") && err.contains("changed during the export"),
            "{err}"
        );
    }
}

/// Outputs are never readable by other users, and a symbolic link at the
/// output's name is replaced, never followed (the B16 report's faults).
#[test]
fn outputs_are_private_and_links_are_not_followed() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(p, "base.img", &pattern(65536, 1));
    write(p, "target.img", &pattern(65536, 2));
    for ty in [
        "metadata-and-data",
        "metadata-only",
        "raw-sparse",
        "qcow2",
        "rbd-diff",
    ] {
        let out = format!("o.{ty}");
        ok(
            p,
            &[
                "export",
                "--base",
                "base.img",
                "target.img",
                "-o",
                &out,
                "--output-type",
                ty,
            ],
        );
        let mut files = vec![out.clone()];
        if ty == "raw-sparse" {
            files.push(format!("{out}.map"));
        }
        for f in files {
            let mode = std::fs::metadata(p.join(&f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{f}: mode {mode:o}");
        }
    }
    ok(
        p,
        &[
            "apply",
            "--base",
            "base.img",
            "o.metadata-and-data",
            "-o",
            "r.img",
        ],
    );
    let mode = std::fs::metadata(p.join("r.img"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "apply result: mode {mode:o}");

    std::fs::create_dir(p.join("out")).unwrap();
    std::os::unix::fs::symlink("../victim", p.join("out/planted.ext")).unwrap();
    let out = run(
        p,
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "out/planted.ext",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!p.join("victim").exists());
    ok(
        p,
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "out/planted.ext",
            "--force",
        ],
    );
    assert!(!p.join("victim").exists(), "the planted link was followed");
    assert!(!std::fs::symlink_metadata(p.join("out/planted.ext"))
        .unwrap()
        .file_type()
        .is_symlink());
}
