//! Inputs and paths a hostile or careless user hands over: each is refused
//! cleanly or handled right, with no input or device harmed.

mod common;
use common::*;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Stdio};

fn export(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "export",
        "--base",
        "base.img",
        "target.img",
        "--block-size",
        "4K",
    ];
    args.extend(extra);
    run(dir, &args)
}

/// A raw sparse export whose target begins like another format is still
/// read as raw sparse: its map decides, not the disk's first bytes.
#[test]
fn raw_sparse_data_that_looks_like_another_format() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    for (i, head) in [
        b"rbd diff v1\ns\x00\x20\x00\x00\x00\x00\x00\x00e".to_vec(),
        b"QFI\xfb\x00\x00\x00\x03".to_vec(),
        b"\x89SDX\r\n\x1a\n".to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        fill(&p.join("base.img"), 0, 8192, 0x42);
        std::fs::copy(p.join("base.img"), p.join("target.img")).unwrap();
        let mut target = std::fs::read(p.join("target.img")).unwrap();
        target[..head.len()].copy_from_slice(&head);
        std::fs::write(p.join("target.img"), &target).unwrap();
        let out = format!("x{i}.raw");
        assert!(export(p, &["--output-type", "raw-sparse", "-o", &out])
            .status
            .success());
        let (info, _) = info_extents(p, &out);
        assert_eq!(info["output_type"], "RAW_SPARSE", "{i}");
        let rebuilt = format!("r{i}.img");
        ok(p, &["apply", "--base", "base.img", &out, "-o", &rebuilt]);
        assert!(std::fs::read(p.join(&rebuilt)).unwrap() == target, "{i}");
    }
}

/// Not even --force replaces a FIFO (or a device) with a regular file.
#[test]
fn force_never_replaces_a_fifo_or_device() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    fill(&p.join("base.img"), 0, 65536, 1);
    fill(&p.join("target.img"), 0, 65536, 2);
    let fifo = p.join("pipe");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = export(p, &["-o", "pipe", "--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("device, FIFO or socket"));
    ok(
        p,
        &["export", "--base", "base.img", "target.img", "-o", "e.sdx"],
    );
    let out = run(
        p,
        &[
            "apply", "--base", "base.img", "e.sdx", "-o", "pipe", "--force",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(fifo.symlink_metadata().unwrap().file_type().is_fifo());
}

/// A raw sparse export's map may not replace an input.
#[test]
fn a_raw_sparse_map_never_replaces_an_input() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    fill(&p.join("base.img"), 0, 65536, 1);
    fill(&p.join("victim.map"), 0, 65536, 2);
    let before = std::fs::read(p.join("victim.map")).unwrap();
    let out = run(
        p,
        &[
            "export",
            "--base",
            "base.img",
            "victim.map",
            "-o",
            "victim",
            "--output-type",
            "raw-sparse",
            "--force",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(p.join("victim.map")).unwrap() == before);
    assert!(!p.join("victim").exists());
}

/// Overwrites 8 bytes of `path` at `at`.
fn poke(path: &Path, at: u64, bytes: [u8; 8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&bytes, at).unwrap();
}

fn peek(path: &Path, at: usize) -> [u8; 8] {
    std::fs::read(path).unwrap()[at..at + 8].try_into().unwrap()
}

/// qcow2 tables that share an L2 table or a data cluster would make a small
/// file cost work in proportion to its tables: both are refused.
#[test]
fn qcow2_tables_that_share_clusters_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // 4 MiB in 4 KiB clusters: two L1 entries; changes in the first 2 MiB.
    fill(&p.join("base.img"), 0, 4 << 20, 1);
    std::fs::copy(p.join("base.img"), p.join("target.img")).unwrap();
    fill(&p.join("target.img"), 0, 8192, 2);
    assert!(export(p, &["--output-type", "qcow2", "-o", "q.qcow2"])
        .status
        .success());
    let q = p.join("q.qcow2");
    let l1 = u64::from_be_bytes(peek(&q, 40));
    let l2 = u64::from_be_bytes(peek(&q, l1 as usize)) & 0x00ff_ffff_ffff_fe00;
    let first_entry = peek(&q, l2 as usize);

    std::fs::copy(&q, p.join("shared-l2.qcow2")).unwrap();
    poke(&p.join("shared-l2.qcow2"), l1 + 8, peek(&q, l1 as usize));
    std::fs::copy(&q, p.join("shared-data.qcow2")).unwrap();
    for j in 2..512 {
        poke(&p.join("shared-data.qcow2"), l2 + j * 8, first_entry);
    }
    for (name, want) in [
        ("shared-l2.qcow2", "already in use"),
        ("shared-data.qcow2", "clusters are shared"),
    ] {
        for args in [
            vec!["info", name],
            vec!["apply", "--base", "base.img", name, "-o", "r.img"],
        ] {
            let err = fails(p, &args);
            assert!(err.contains(want), "{name}: {err}");
            assert!(!p.join("r.img").exists());
        }
    }
}

/// A key file that never ends is read no further than a key can be long.
#[test]
fn an_endless_key_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    fill(&p.join("base.img"), 0, 65536, 1);
    fill(&p.join("target.img"), 0, 65536, 2);
    let out = export(p, &["-o", "e.sdx", "--key-file", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too long"));
    assert!(!p.join("e.sdx").exists());
}

/// Reports that cannot be written are errors with exit 1, not panics; and
/// standard output cannot be an input, nor apply's output.
#[test]
fn standard_output_full_or_an_input() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    fill(&p.join("base.img"), 0, 65536, 1);
    fill(&p.join("target.img"), 0, 65536, 2);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let status = Command::new(bin())
        .args(["export", "--base", "base.img", "target.img", "-o", "e.sdx"])
        .current_dir(p)
        .stdout(Stdio::from(full))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));

    let before = std::fs::read(p.join("target.img")).unwrap();
    let target = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p.join("target.img"))
        .unwrap();
    let out = Command::new(bin())
        .args(["export", "--base", "base.img", "target.img", "-o", "-"])
        .current_dir(p)
        .stdout(Stdio::from(target))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(std::fs::read(p.join("target.img")).unwrap() == before);

    let out = run(p, &["apply", "--base", "base.img", "e.sdx", "-o", "-"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!p.join("-").exists());
}
