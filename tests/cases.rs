//! Situations reported by users of similar tools, each with its right
//! result.

mod common;
use common::*;
use std::process::Command;

/// B01: a block rewritten with zeros must come back as zeros, also after
/// the raw export went through a sparse-aware copy.
#[test]
fn b01_block_rewritten_with_zeros() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    fill(&p.join("base.img"), 0, 4096, 0x41);
    fill(&p.join("base.img"), 4096, 4096, 0x42);
    fill(&p.join("base.img"), 8192, 4096, 0x43);
    std::fs::copy(p.join("base.img"), p.join("target.img")).unwrap();
    fill(&p.join("target.img"), 4096, 4096, 0);
    let ext = roundtrip(p, Some("base.img"), "target.img", 4096);
    assert_eq!(ext, vec![(4096, 4096, "zero")]);

    // The extent-list export carries no payload for the zero extent.
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
    let (info, _) = info_extents(p, "out.ext");
    assert_eq!(info["stored_bytes"].as_u64(), Some(0));

    // A sparse-aware copy drops the written zeros; apply must not turn
    // that into `A B C`: the copy has no change map, so it is refused.
    ok(
        p,
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "out.raw",
            "--output-type",
            "raw-sparse",
            "--block-size",
            "4K",
        ],
    );
    let cp = Command::new("cp")
        .args(["--sparse=always", "out.raw", "copied.raw"])
        .current_dir(p)
        .status()
        .unwrap();
    assert!(cp.success());
    let err = fails(
        p,
        &[
            "apply",
            "--base",
            "base.img",
            "copied.raw",
            "-o",
            "res.copied",
        ],
    );
    assert!(err.contains("copied.raw.map"), "{err}");
    assert!(!p.join("res.copied").exists());

    // Copied together with its map, the copy applies correctly even though
    // the zeros became a hole.
    std::fs::copy(p.join("out.raw.map"), p.join("copied.raw.map")).unwrap();
    ok(
        p,
        &[
            "apply",
            "--base",
            "base.img",
            "copied.raw",
            "-o",
            "res.copied",
        ],
    );
    assert_eq!(
        std::fs::read(p.join("res.copied")).unwrap(),
        std::fs::read(p.join("target.img")).unwrap()
    );

    // In place: the result replaces a copy of the base.
    std::fs::copy(p.join("base.img"), p.join("inplace.img")).unwrap();
    ok(
        p,
        &[
            "apply",
            "--base",
            "inplace.img",
            "out.ext",
            "-o",
            "inplace.img",
            "--force",
        ],
    );
    assert_eq!(
        std::fs::read(p.join("inplace.img")).unwrap(),
        std::fs::read(p.join("target.img")).unwrap()
    );
}

/// B02: hole-punched ranges are changes, not gaps; holes on both sides are
/// not a change.
#[test]
fn b02_discarded_ranges() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    for i in 0..16u64 {
        fill(&p.join("base.img"), i * 4096, 4096, (i + 1) as u8);
    }
    std::fs::copy(p.join("base.img"), p.join("target.img")).unwrap();
    for (off, len) in [(8192, 16384), (41984, 2048)] {
        let st = Command::new("fallocate")
            .args([
                "-p",
                "-o",
                &off.to_string(),
                "-l",
                &len.to_string(),
                "target.img",
            ])
            .current_dir(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let ext = roundtrip(p, Some("base.img"), "target.img", 4096);
    assert_eq!(ext, vec![(8192, 16384, "zero"), (40960, 4096, "data")]);

    // In place onto an existing copy of the base.
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
    std::fs::copy(p.join("base.img"), p.join("res.img")).unwrap();
    ok(
        p,
        &[
            "apply", "--base", "res.img", "out.ext", "-o", "res.img", "--force",
        ],
    );
    assert_eq!(
        std::fs::read(p.join("res.img")).unwrap(),
        std::fs::read(p.join("target.img")).unwrap()
    );

    // A hole on both sides is not a change.
    let st = Command::new("cp")
        .args(["--sparse=always", "target.img", "base2.img"])
        .current_dir(p)
        .status()
        .unwrap();
    assert!(st.success());
    ok(
        p,
        &[
            "export",
            "--base",
            "base2.img",
            "target.img",
            "-o",
            "same.ext",
            "--block-size",
            "4K",
        ],
    );
    assert!(info_extents(p, "same.ext").1.is_empty());
}

/// B04: the disk grew between the two snapshots; the wrong base is refused
/// and leaves no output.
#[test]
fn b04_disk_grown() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    fill(&p.join("base.img"), 0, 65536, 0x11);
    std::fs::copy(p.join("base.img"), p.join("target.img")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(p.join("target.img"))
        .unwrap()
        .set_len(98304)
        .unwrap();
    fill(&p.join("target.img"), 81920, 4096, 0x22);
    fill(&p.join("target.img"), 12288, 4096, 0x33);
    let ext = roundtrip(p, Some("base.img"), "target.img", 4096);
    assert_eq!(ext, vec![(12288, 4096, "data"), (81920, 4096, "data")]);

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
    let (info, _) = info_extents(p, "out.ext");
    assert_eq!(info["target_size"].as_u64(), Some(98304));
    assert_eq!(info["base_size"].as_u64(), Some(65536));
    std::fs::write(
        p.join("short.img"),
        &std::fs::read(p.join("base.img")).unwrap()[..61440],
    )
    .unwrap();
    let err = fails(
        p,
        &["apply", "--base", "short.img", "out.ext", "-o", "bad.img"],
    );
    assert!(err.contains("65536"), "{err}");
    assert!(!p.join("bad.img").exists());
}

/// B06: an image size that is not a multiple of the block size; the tail
/// is carried exactly, and a change to only the last byte is found.
#[test]
fn b06_size_not_a_multiple_of_the_block() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    fill(&p.join("base.img"), 0, 10000, 0x41);
    std::fs::copy(p.join("base.img"), p.join("target.img")).unwrap();
    fill(&p.join("target.img"), 9999, 1, 0x42);
    fill(&p.join("target.img"), 4095, 1, 0x42);
    let ext = roundtrip(p, Some("base.img"), "target.img", 4096);
    assert_eq!(ext, vec![(0, 4096, "data"), (8192, 1808, "data")]);
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
    let (info, _) = info_extents(p, "out.ext");
    assert_eq!(info["stored_bytes"].as_u64(), Some(4096 + 1808));

    std::fs::copy(p.join("base.img"), p.join("last.img")).unwrap();
    fill(&p.join("last.img"), 9999, 1, 0x43);
    let ext = roundtrip(p, Some("base.img"), "last.img", 4096);
    assert_eq!(ext, vec![(8192, 1808, "data")]);
}

/// B09: a change that straddles a block boundary is reported at its true
/// offsets, and the untouched blocks between are absent.
#[test]
fn b09_change_across_a_block_boundary() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    fill(&p.join("base.img"), 0, 32768, 0x55);
    std::fs::copy(p.join("base.img"), p.join("target.img")).unwrap();
    fill(&p.join("target.img"), 4091, 10, 0xAA);
    fill(&p.join("target.img"), 12288, 1, 0xAA);
    fill(&p.join("target.img"), 16383, 1, 0xAA);
    let ext = roundtrip(p, Some("base.img"), "target.img", 4096);
    assert_eq!(ext, vec![(0, 8192, "data"), (12288, 4096, "data")]);
}

/// B12: a truncated, altered or overlong export fed to apply. Every damage
/// is an error that names it, no output appears, an in-place apply leaves
/// the base as it was, and a stream that arrives one byte per write
/// through a pipe applies like the file.
#[test]
fn b12_truncated_or_corrupted_export() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    fill(&p.join("base.img"), 0, 262144, 0x11);
    std::fs::copy(p.join("base.img"), p.join("target.img")).unwrap();
    fill(&p.join("target.img"), 12288, 4096, 0x22);
    fill(&p.join("target.img"), 69632, 4096, 0x33);
    fill(&p.join("target.img"), 163840, 4096, 0);
    let export = [
        "export",
        "--base",
        "base.img",
        "target.img",
        "--block-size",
        "4096",
        "-o",
        "out.ext",
    ];
    ok(p, &export);
    let full = std::fs::read(p.join("out.ext")).unwrap();
    let n = full.len();
    for k in [0, 1, n / 2, n - 1] {
        std::fs::write(p.join("cut.ext"), &full[..k]).unwrap();
        let err = fails(
            p,
            &["apply", "--base", "base.img", "cut.ext", "-o", "res.img"],
        );
        assert!(
            err.contains("truncated") && err.contains(&format!("byte {k}")),
            "cut {k}: {err}"
        );
        assert!(!p.join("res.img").exists(), "cut {k} left res.img");
    }
    let mut flipped = full.clone();
    flipped[n / 2] ^= 0xFF;
    std::fs::write(p.join("flip.ext"), &flipped).unwrap();
    let err = fails(
        p,
        &["apply", "--base", "base.img", "flip.ext", "-o", "flip.img"],
    );
    assert!(err.contains("CRC") || err.contains("checksum"), "{err}");
    assert!(!p.join("flip.img").exists());
    let mut tail = full.clone();
    tail.extend_from_slice(b"junk");
    std::fs::write(p.join("tail.ext"), &tail).unwrap();
    let err = fails(
        p,
        &["apply", "--base", "base.img", "tail.ext", "-o", "tail.img"],
    );
    assert!(err.contains("after the end record"), "{err}");
    assert!(!p.join("tail.img").exists());

    // One byte per write through a pipe.
    let mut child = Command::new(bin())
        .args(["apply", "--base", "base.img", "-", "-o", "pipe.img"])
        .current_dir(p)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for byte in &full {
        stdin.write_all(std::slice::from_ref(byte)).unwrap();
        stdin.flush().unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    assert!(
        std::fs::read(p.join("pipe.img")).unwrap() == std::fs::read(p.join("target.img")).unwrap()
    );

    // In place: the output is the base itself, and the export is cut.
    std::fs::copy(p.join("base.img"), p.join("inplace.img")).unwrap();
    std::fs::write(p.join("half.ext"), &full[..n / 2]).unwrap();
    fails(
        p,
        &[
            "apply",
            "--base",
            "inplace.img",
            "half.ext",
            "-o",
            "inplace.img",
            "--force",
        ],
    );
    assert!(
        std::fs::read(p.join("inplace.img")).unwrap() == std::fs::read(p.join("base.img")).unwrap()
    );
}
