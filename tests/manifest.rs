//! Block manifests end to end: exports made from the manifest of the base
//! equal, byte for byte, the exports made from the base image, in every
//! output type and on every edge case; a chain of ext4 states exported
//! from manifests alone rebuilds the last state; damaged manifests, the
//! wrong block size and the wrong base are refused.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

/// A byte pattern with a prime cycle, never zero.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed) | 1)
        .collect()
}

fn same_file(dir: &Path, a: &str, b: &str) {
    assert!(read(dir, a) == read(dir, b), "{a} and {b} differ");
}

/// Exports `base` -> `target` in every output type twice, from the base
/// image and from its manifest (writing the target's manifest on the way),
/// and checks that the two are the same bytes, that the manifest written
/// on the way is the one `manifest` writes, and that the manifest-based
/// exports apply (with the base checked against the manifest).
fn same_exports(dir: &Path, base: &str, target: &str, bs: u64) {
    let bs_arg = bs.to_string();
    let bm = format!("{base}.{bs}.sdm");
    let tm = format!("{target}.{bs}.sdm");
    ok(
        dir,
        &[
            "manifest",
            base,
            "-o",
            &bm,
            "--block-size",
            &bs_arg,
            "--force",
        ],
    );
    ok(
        dir,
        &[
            "manifest",
            target,
            "-o",
            &tm,
            "--block-size",
            &bs_arg,
            "--force",
        ],
    );
    let mut types: Vec<(&str, Vec<&str>)> = TYPES.iter().map(|t| (*t, vec![])).collect();
    types.push(("metadata-and-data", vec!["--compress", "zstd"]));
    types.push(("metadata-and-data", vec!["--no-digest"]));
    types.push(("qcow2", vec!["--backing", base]));
    types.push(("qcow2", vec!["--backing", base, "--digest"]));
    for (i, (ty, extra)) in types.iter().enumerate() {
        let from_base = format!("b{i}-{bs}.{ty}");
        let from_manifest = format!("m{i}-{bs}.{ty}");
        let out_manifest = format!("out{i}-{bs}.sdm");
        let mut args = vec![
            "export",
            target,
            "--output-type",
            ty,
            "--block-size",
            &bs_arg,
            "--force",
        ];
        args.extend(extra.iter().copied());
        let mut a = args.clone();
        a.extend(["--base", base, "-o", &from_base]);
        ok(dir, &a);
        let mut m = args.clone();
        m.extend([
            "--base-manifest",
            &bm,
            "-o",
            &from_manifest,
            "--manifest-out",
            &out_manifest,
        ]);
        ok(dir, &m);
        same_file(dir, &from_base, &from_manifest);
        if *ty == "raw-sparse" {
            same_file(
                dir,
                &format!("{from_base}.map"),
                &format!("{from_manifest}.map"),
            );
        }
        same_file(dir, &out_manifest, &tm);
        if *ty == "metadata-only" {
            continue;
        }
        let result = format!("r{i}-{bs}.img");
        ok(
            dir,
            &[
                "apply",
                "--base",
                base,
                "--base-manifest",
                &bm,
                &from_manifest,
                "-o",
                &result,
                "--force",
            ],
        );
        assert!(read(dir, &result) == read(dir, target), "{ty} {extra:?}");
    }
    // diff lists the same changes from the manifest as from the base.
    let from_base = ok(
        dir,
        &[
            "diff",
            "--json",
            "--base",
            base,
            target,
            "--block-size",
            &bs_arg,
        ],
    );
    let from_manifest = ok(dir, &["diff", "--json", "--base-manifest", &bm, target]);
    assert_eq!(from_base.stdout, from_manifest.stdout);
    // The base-image export writes the same target manifest too.
    let via_base = format!("via-base-{bs}.sdm");
    ok(
        dir,
        &[
            "export",
            "--base",
            base,
            target,
            "-o",
            "via-base.sdx",
            "--block-size",
            &bs_arg,
            "--manifest-out",
            &via_base,
            "--force",
        ],
    );
    same_file(dir, &via_base, &tm);
}

#[test]
fn manifest_exports_equal_base_exports_on_edge_cases() {
    let sizes = [
        // (base, target): equal, odd, grown, shrunk, from and to nothing
        (300_000usize, 300_000usize),
        (300_000, 500_001),
        (300_001, 4096 * 40),
        (0, 200_000),
        (200_000, 0),
        (0, 0),
        (3 << 20, (3 << 20) + 5),
        (65536 * 3, 65536 * 3 - 4096),
    ];
    for (n, &(bl, tl)) in sizes.iter().enumerate() {
        let d = tempfile::tempdir().unwrap();
        let base = pattern(bl, 3);
        let mut target = pattern(tl, 3);
        if tl > 150_000 {
            target[5000..9000].fill(7); // data, inside a block
            target[65536..131072].fill(0); // zeroed
        }
        if tl > 250_000 {
            target[200_000] ^= 0x40;
        }
        write(d.path(), "base.img", &base);
        write(d.path(), "target.img", &target);
        for bs in [4096, 65536, 1 << 20, 2 << 20] {
            if tl < bl && tl % bs != 0 {
                // The target ends inside a block of the base's data: refused.
                let bs_arg = bs.to_string();
                ok(
                    d.path(),
                    &[
                        "manifest",
                        "base.img",
                        "-o",
                        "b.sdm",
                        "--block-size",
                        &bs_arg,
                        "--force",
                    ],
                );
                let err = fails(
                    d.path(),
                    &[
                        "export",
                        "--base-manifest",
                        "b.sdm",
                        "target.img",
                        "-o",
                        "x.sdx",
                    ],
                );
                assert!(err.contains("unsupported"), "{err}");
                continue;
            }
            same_exports(d.path(), "base.img", "target.img", bs as u64);
        }
        eprintln!("case {n} done");
    }
}

#[test]
fn identical_images_give_equal_empty_exports() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.img", &pattern(1 << 20, 9));
    write(d.path(), "target.img", &pattern(1 << 20, 9));
    same_exports(d.path(), "base.img", "target.img", 4096);
    let out = ok(d.path(), &["info", "--json", "m0-4096.metadata-and-data"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["extents"].as_array().unwrap().len(), 0);
}

#[test]
fn a_target_shrunk_into_a_zero_base_block_is_exported() {
    let d = tempfile::tempdir().unwrap();
    let mut base = pattern(65536 * 4, 1);
    base[65536 * 2..].fill(0);
    write(d.path(), "base.img", &base);
    write(d.path(), "target.img", &base[..65536 * 2 + 1000]);
    same_exports(d.path(), "base.img", "target.img", 65536);
}

#[test]
fn a_target_shrunk_into_a_data_base_block_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let base = pattern(65536 * 4, 1);
    write(d.path(), "base.img", &base);
    write(d.path(), "target.img", &base[..65536 * 2 + 1000]);
    ok(
        d.path(),
        &[
            "manifest",
            "base.img",
            "-o",
            "base.sdm",
            "--block-size",
            "64K",
        ],
    );
    let err = fails(
        d.path(),
        &[
            "export",
            "--base-manifest",
            "base.sdm",
            "target.img",
            "-o",
            "x.sdx",
        ],
    );
    assert!(
        err.contains("unsupported") && err.contains("ends at byte"),
        "{err}"
    );
    assert!(!d.path().join("x.sdx").exists());
}

#[test]
fn sparse_images_with_holes() {
    let d = tempfile::tempdir().unwrap();
    let size = 64u64 << 20;
    for (name, writes) in [
        ("base.img", vec![(0u64, 9u8), (8 << 20, 3), (40 << 20, 5)]),
        ("target.img", vec![(0, 9), (8 << 20, 4), (20 << 20, 6)]),
    ] {
        let f = std::fs::File::create(d.path().join(name)).unwrap();
        f.set_len(size).unwrap();
        drop(f);
        for (at, byte) in writes {
            fill(&d.path().join(name), at, 300_000, byte);
        }
    }
    for bs in [4096, 65536] {
        same_exports(d.path(), "base.img", "target.img", bs);
    }
    // Zero runs cost one record each: the manifest stays small.
    let len = std::fs::metadata(d.path().join("base.img.4096.sdm"))
        .unwrap()
        .len();
    assert!(len < 300 * 36 * 3 + 2000, "{len}");
}

#[test]
fn ext4_pairs_export_the_same_from_manifests() {
    let d = tempfile::tempdir().unwrap();
    make_ext4_pairs(d.path());
    for pair in ["small", "grown", "churn"] {
        for bs in [4096, 65536] {
            same_exports(
                d.path(),
                &format!("{pair}-base.img"),
                &format!("{pair}-target.img"),
                bs,
            );
        }
    }
}

fn debugfs(image: &Path, commands: &str) {
    let cmd = image.with_extension("cmds");
    std::fs::write(&cmd, commands).unwrap();
    let out = Command::new("debugfs")
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .args(["-w", "-f"])
        .arg(&cmd)
        .arg(image)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "debugfs: {err}");
    // debugfs reports failed commands on stderr but exits 0.
    for line in err.lines().skip(1) {
        assert!(
            !line.contains(':') || line.starts_with("debugfs"),
            "debugfs: {err}"
        );
    }
}

/// Seeded bytes, compressible or not.
fn file_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn a_chain_of_five_exports_from_manifests_rebuilds_the_last_state() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..12u64 {
        std::fs::write(
            src.join(format!("f{i}")),
            file_bytes(i, 30_000 + 20_000 * i as usize),
        )
        .unwrap();
    }
    let out = Command::new("mkfs.ext4")
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&src)
        .arg(dir.join("s0.img"))
        .arg("48M")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Five successive states: files written, deleted and overwritten.
    for k in 1..=5u64 {
        let prev = dir.join(format!("s{}.img", k - 1));
        let next = dir.join(format!("s{k}.img"));
        std::fs::copy(&prev, &next).unwrap();
        let mut cmds = String::new();
        for j in 0..3u64 {
            let name = format!("new{k}-{j}");
            let local = dir.join(&name);
            std::fs::write(
                &local,
                file_bytes(100 * k + j, 50_000 * (j as usize + 1) * k as usize),
            )
            .unwrap();
            cmds += &format!("write {} {name}\n", local.display());
        }
        // Delete one of the first files, and overwrite another.
        cmds += &format!("rm f{}\n", k * 2 - 1);
        let over = dir.join(format!("over{k}"));
        std::fs::write(&over, file_bytes(1000 + k, 90_000)).unwrap();
        cmds += &format!("rm f{}\nwrite {} f{}\n", k * 2, over.display(), k * 2);
        if k > 1 {
            cmds += &format!("rm new{}-0\n", k - 1);
        }
        debugfs(&next, &cmds);
        assert!(read(dir, &format!("s{k}.img")) != read(dir, &format!("s{}.img", k - 1)));
    }
    // The first state's manifest; each export is made from the previous
    // state's manifest and writes the next one.
    ok(
        dir,
        &["manifest", "s0.img", "-o", "m0.sdm", "--block-size", "4K"],
    );
    let types = [
        ("metadata-and-data", vec!["--compress", "zstd"]),
        ("raw-sparse", vec![]),
        ("rbd-diff", vec![]),
        ("qcow2", vec!["--backing", "r2.img", "--block-size", "4K"]),
        ("metadata-and-data", vec![]),
    ];
    for (k, (ty, extra)) in (1..=5).zip(types.iter()) {
        let mut args = vec![
            "export".to_string(),
            "--base-manifest".into(),
            format!("m{}.sdm", k - 1),
            format!("s{k}.img"),
            "-o".into(),
            format!("e{k}.{ty}"),
            "--output-type".into(),
            ty.to_string(),
            "--manifest-out".into(),
            format!("m{k}.sdm"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The previous state is out of reach while the export is made.
        let prev = dir.join(format!("s{}.img", k - 1));
        let hidden = dir.join("hidden.img");
        std::fs::rename(&prev, &hidden).unwrap();
        ok(dir, &args);
        std::fs::rename(&hidden, &prev).unwrap();
    }
    // Apply the five exports in order to the first image.
    std::fs::copy(dir.join("s0.img"), dir.join("r0.img")).unwrap();
    for (k, (ty, _)) in (1..=5).zip(types.iter()) {
        ok(
            dir,
            &[
                "apply",
                "--base",
                &format!("r{}.img", k - 1),
                "--base-manifest",
                &format!("m{}.sdm", k - 1),
                &format!("e{k}.{ty}"),
                "-o",
                &format!("r{k}.img"),
            ],
        );
    }
    same_file(dir, "r5.img", "s5.img");
    // Each export's manifest is that of its state.
    ok(
        dir,
        &[
            "manifest",
            "s5.img",
            "-o",
            "check5.sdm",
            "--block-size",
            "4K",
        ],
    );
    same_file(dir, "m5.sdm", "check5.sdm");
}

/// A small manifest and a target for the refusal tests.
fn refusal_setup() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let base = pattern(200_000, 1);
    let mut target = base.clone();
    target[10_000..20_000].fill(9);
    target[100_000..110_000].fill(0);
    write(d.path(), "base.img", &base);
    write(d.path(), "target.img", &target);
    ok(
        d.path(),
        &[
            "manifest",
            "base.img",
            "-o",
            "base.sdm",
            "--block-size",
            "4K",
        ],
    );
    d
}

fn export_from(dir: &Path, manifest: &str) -> String {
    let err = fails(
        dir,
        &[
            "export",
            "--base-manifest",
            manifest,
            "target.img",
            "-o",
            "out.sdx",
        ],
    );
    assert!(!dir.join("out.sdx").exists(), "a partial export was left");
    err
}

#[test]
fn truncated_and_corrupted_manifests_are_refused() {
    let d = refusal_setup();
    let dir = d.path();
    let good = read(dir, "base.sdm");
    for cut in [
        0,
        5,
        63,
        64,
        70,
        good.len() / 2,
        good.len() - 52,
        good.len() - 1,
    ] {
        write(dir, "cut.sdm", &good[..cut]);
        let err = export_from(dir, "cut.sdm");
        assert!(err.contains("corrupt block manifest"), "cut {cut}: {err}");
        assert!(err.contains("truncated") || cut < 8, "cut {cut}: {err}");
    }
    for at in [0, 9, 17, 30, 64, 70, 500, good.len() - 40, good.len() - 3] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        write(dir, "bad.sdm", &bad);
        let err = export_from(dir, "bad.sdm");
        assert!(
            err.contains("corrupt block manifest") || err.contains("unsupported"),
            "flip at {at}: {err}"
        );
    }
    let mut long = good.clone();
    long.push(0);
    write(dir, "long.sdm", &long);
    assert!(export_from(dir, "long.sdm").contains("after the end record"));
    write(dir, "other.sdm", &read(dir, "target.img"));
    assert!(export_from(dir, "other.sdm").contains("bad magic"));
    // An export is not a manifest.
    ok(
        dir,
        &["export", "--base", "base.img", "target.img", "-o", "e.sdx"],
    );
    assert!(export_from(dir, "e.sdx").contains("bad magic"));
    // info checks a manifest as a whole.
    write(dir, "cut.sdm", &good[..good.len() - 10]);
    let err = fails(dir, &["info", "cut.sdm"]);
    assert!(err.contains("truncated"), "{err}");
    let out = ok(dir, &["info", "--json", "base.sdm"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["image_size"].as_u64(), Some(200_000));
    assert_eq!(v["blocks"].as_u64(), Some(49));
}

#[test]
fn a_manifest_of_another_block_size_is_refused() {
    let d = refusal_setup();
    // A usage error (exit 2): the options do not fit together.
    let out = run(
        d.path(),
        &[
            "export",
            "--base-manifest",
            "base.sdm",
            "target.img",
            "-o",
            "out.sdx",
            "--block-size",
            "64K",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("4 KiB") && err.contains("give 4096"), "{err}");
    assert!(!d.path().join("out.sdx").exists());
}

#[test]
fn apply_refuses_the_wrong_base() {
    let d = refusal_setup();
    let dir = d.path();
    ok(
        dir,
        &[
            "export",
            "--base-manifest",
            "base.sdm",
            "target.img",
            "-o",
            "e.rbd",
            "--output-type",
            "rbd-diff",
        ],
    );
    // Same size, one block changed: named by its offset.
    let mut wrong = read(dir, "base.img");
    wrong[150_000] ^= 1;
    write(dir, "wrong.img", &wrong);
    let err = fails(
        dir,
        &[
            "apply",
            "--base",
            "wrong.img",
            "--base-manifest",
            "base.sdm",
            "e.rbd",
            "-o",
            "r.img",
        ],
    );
    assert!(
        err.contains("mismatch") && err.contains("at byte 147456"),
        "{err}"
    );
    assert!(!dir.join("r.img").exists());
    // Another size.
    write(dir, "short.img", &read(dir, "base.img")[..100_000]);
    let err = fails(
        dir,
        &[
            "apply",
            "--base",
            "short.img",
            "--base-manifest",
            "base.sdm",
            "e.rbd",
            "-o",
            "r.img",
        ],
    );
    assert!(err.contains("100000 bytes"), "{err}");
    // No base at all is the empty image, not the one described.
    let err = fails(
        dir,
        &[
            "apply",
            "--base-manifest",
            "base.sdm",
            "e.rbd",
            "-o",
            "r.img",
        ],
    );
    assert!(err.contains("mismatch"), "{err}");
    assert!(!dir.join("r.img").exists());
    // The right base passes, and the rbd diff (which records nothing of
    // its base) rebuilds the target.
    ok(
        dir,
        &[
            "apply",
            "--base",
            "base.img",
            "--base-manifest",
            "base.sdm",
            "e.rbd",
            "-o",
            "r.img",
        ],
    );
    same_file(dir, "r.img", "target.img");
}

#[test]
fn manifest_outputs_are_private_atomic_and_checked() {
    let d = refusal_setup();
    let dir = d.path();
    let mode = std::fs::metadata(dir.join("base.sdm"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    // An existing manifest is kept without --force.
    let err = fails(dir, &["manifest", "target.img", "-o", "base.sdm"]);
    assert!(err.contains("already exists"), "{err}");
    // A symbolic link at the output is replaced, not followed.
    write(dir, "victim", b"keep");
    std::os::unix::fs::symlink(dir.join("victim"), dir.join("link.sdm")).unwrap();
    ok(
        dir,
        &["manifest", "target.img", "-o", "link.sdm", "--force"],
    );
    assert_eq!(read(dir, "victim"), b"keep");
    assert!(!std::fs::symlink_metadata(dir.join("link.sdm"))
        .unwrap()
        .file_type()
        .is_symlink());
    // A failed export leaves no manifest behind.
    let err = fails(
        dir,
        &[
            "export",
            "--base",
            "base.img",
            "missing.img",
            "-o",
            "x.sdx",
            "--manifest-out",
            "x.sdm",
        ],
    );
    assert!(err.contains("missing.img"), "{err}");
    assert!(!dir.join("x.sdm").exists());
    // The manifest cannot be the export, nor an input.
    let out = run(
        dir,
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "x.sdx",
            "--manifest-out",
            "x.sdx",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let out = run(
        dir,
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "x.sdx",
            "--manifest-out",
            "base.img",
            "--force",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(read(dir, "base.img"), pattern(200_000, 1));
    // The manifest streams to standard output.
    let out = ok(
        dir,
        &["manifest", "base.img", "-o", "-", "--block-size", "4K"],
    );
    assert_eq!(out.stdout, read(dir, "base.sdm"));
    // qcow2 from a manifest needs the backing file's name; --base and
    // --base-manifest exclude each other.
    let out = run(
        dir,
        &[
            "export",
            "--base-manifest",
            "base.sdm",
            "target.img",
            "-o",
            "x.qcow2",
            "--output-type",
            "qcow2",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let out = run(
        dir,
        &[
            "export",
            "--base",
            "base.img",
            "--base-manifest",
            "base.sdm",
            "target.img",
            "-o",
            "x.sdx",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!dir.join("x.sdx").exists() && !dir.join("x.qcow2").exists());
}

/// A manifest piped to `info` is named as a manifest (read from a file),
/// not reported as a damaged export.
#[test]
fn info_names_a_manifest_on_standard_input() {
    let d = refusal_setup();
    let out = Command::new(bin())
        .args(["info", "-"])
        .current_dir(d.path())
        .stdin(std::fs::File::open(d.path().join("base.sdm")).unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("block manifest"), "{err}");
}
