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

/// A qcow2 v3 file with `2^bits`-byte clusters and `vsize` bytes of
/// virtual size, whose L1 table (from cluster 1) points to `tables` L2
/// tables (after the L1 table) whose first `filled` entries in all are
/// `entry`, followed by `payload`.
fn qcow2_file(
    path: &Path,
    bits: u32,
    vsize: u64,
    tables: u64,
    filled: u64,
    entry: u64,
    payload: &[u8],
) {
    let cs = 1u64 << bits;
    let l1_entries = vsize.div_ceil(cs * (cs / 8));
    let l1_clusters = (l1_entries * 8).div_ceil(cs).max(1);
    let l2_at = cs * (1 + l1_clusters);
    let mut head = vec![0u8; cs as usize];
    for (at, v) in [
        (0, 0x5146_49fbu32),
        (4, 3),
        (20, bits),
        (36, l1_entries as u32),
    ] {
        head[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    head[24..32].copy_from_slice(&vsize.to_be_bytes());
    head[40..48].copy_from_slice(&cs.to_be_bytes());
    head[96..100].copy_from_slice(&4u32.to_be_bytes()); // refcount order
    head[100..104].copy_from_slice(&104u32.to_be_bytes()); // header length
    let mut file = head;
    let mut l1 = vec![0u8; (l1_clusters * cs) as usize];
    for i in 0..tables {
        let at = i as usize * 8;
        l1[at..at + 8].copy_from_slice(&(l2_at + i * cs).to_be_bytes());
    }
    file.extend(l1);
    for n in 0..tables * cs / 8 {
        file.extend(if n < filled { entry } else { 0 }.to_be_bytes());
    }
    file.extend(payload);
    file.resize(file.len().next_multiple_of(512), 0);
    std::fs::write(path, file).unwrap();
}

/// Compressed clusters that all point at one small deflate stream would
/// make a file of a few hundred KiB decompress into gigabytes: each
/// compressed cluster needs bytes of its own, and this file is refused.
#[test]
fn qcow2_compressed_clusters_that_share_their_bytes_are_refused() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let bits = 16;
    let cs = 1u64 << bits;
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![1u8; cs as usize]).unwrap();
    let blob = z.finish().unwrap();
    let entry = |tables: u64| {
        let data_at = cs * 2 + tables * cs;
        let sectors = blob.len().div_ceil(512) as u64 - 1;
        1 << 62 | sectors << (62 - (bits - 8)) | data_at
    };
    let (tables, entries) = (4, cs / 8);
    let vsize = tables * entries * cs;
    qcow2_file(
        &p.join("bomb.qcow2"),
        bits,
        vsize,
        tables,
        tables * entries,
        entry(tables),
        &blob,
    );
    // One such entry is a valid image: its bytes are its own.
    qcow2_file(&p.join("one.qcow2"), bits, cs, 1, 1, entry(1), &blob);
    let (_, extents) = info_extents(p, "one.qcow2");
    assert_eq!(extents, [(0, cs, "data".to_string())]);
    for args in [
        vec!["info", "bomb.qcow2"],
        vec!["apply", "bomb.qcow2", "-o", "r.img"],
    ] {
        let err = fails(p, &args);
        assert!(err.contains("clusters are shared"), "{err}");
        assert!(!p.join("r.img").exists());
    }
}

/// A qcow2 image of a huge virtual size whose L1 table is empty maps no
/// cluster: the reader hands back no entries for an unallocated L1 entry,
/// so describing it costs the L1 table, not the virtual size.
#[test]
fn qcow2_unallocated_tables_cost_nothing() {
    use snapdelta::format::qcow2::Qcow2Reader;
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let vsize = 1u64 << 50;
    qcow2_file(&p.join("huge.qcow2"), 16, vsize, 0, 0, 0, &[]);
    let q = Qcow2Reader::open(&p.join("huge.qcow2")).unwrap();
    assert_eq!(q.l1_len(), 1 << 21);
    assert!((0..q.l1_len()).all(|i| q.l2_table(i).unwrap().is_empty()));
    let (v, extents) = info_extents(p, "huge.qcow2");
    assert_eq!(v["target_size"], vsize);
    assert!(extents.is_empty());
}

/// A 1 MiB base, a target that differs in two blocks and a key file.
fn pair_and_key() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    fill(&p.join("base.img"), 0, 1 << 20, 1);
    std::fs::copy(p.join("base.img"), p.join("target.img")).unwrap();
    fill(&p.join("target.img"), 8192, 8192, 2);
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
    std::fs::write(p.join("key"), key).unwrap();
    d
}

/// A key given for an export that is not encrypted is refused by apply
/// and info, in every output type: a plaintext export must not pass for
/// one its reader believes authenticated by the key.
#[test]
fn a_key_for_a_plaintext_export_is_refused() {
    let d = pair_and_key();
    let p = d.path();
    for ty in ["metadata-and-data", "raw-sparse", "qcow2", "rbd-diff"] {
        let out = format!("e.{ty}");
        assert!(export(p, &["--output-type", ty, "-o", &out])
            .status
            .success());
        for args in [
            vec!["info", "--key-file", "key", &out],
            vec![
                "apply",
                "--base",
                "base.img",
                &out,
                "-o",
                "r.img",
                "--key-file",
                "key",
            ],
        ] {
            let err = fails(p, &args);
            assert!(err.contains("is not encrypted"), "{ty}: {err}");
            assert!(!p.join("r.img").exists());
        }
        ok(p, &["apply", "--base", "base.img", &out, "-o", "r.img"]);
        std::fs::remove_file(p.join("r.img")).unwrap();
    }
}

/// Two names of one file among a command's outputs and the files it
/// reads are refused before anything is written, whether the file exists
/// yet or not: the manifest never replaces the export (or its map), and
/// no output replaces the key, the export or the manifest being read.
#[test]
fn outputs_never_replace_each_other_or_what_is_read() {
    let d = pair_and_key();
    let p = d.path();
    let refused = |args: &[&str]| {
        let out = run(p, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("are the same file"), "{args:?}: {err}");
    };
    for extra in [
        &["-o", "out.sdx", "--manifest-out", "./out.sdx"][..],
        &[
            "-o",
            "r",
            "--output-type",
            "raw-sparse",
            "--manifest-out",
            "r.map",
        ],
        &["-o", "key", "--key-file", "key"],
        &["-o", "e.sdx", "--key-file", "key", "--manifest-out", "key"],
    ] {
        for force in [&[][..], &["--force"]] {
            let mut args = vec!["export", "--base", "base.img", "target.img"];
            args.extend(extra);
            args.extend(force);
            refused(&args);
            for name in ["out.sdx", "r", "r.map", "e.sdx"] {
                assert!(!p.join(name).exists(), "{extra:?}: {name} written");
            }
        }
    }
    ok(
        p,
        &["export", "--base", "base.img", "target.img", "-o", "e.sdx"],
    );
    ok(p, &["manifest", "base.img", "-o", "m.sdm"]);
    let kept: Vec<_> = ["e.sdx", "m.sdm", "key"]
        .iter()
        .map(|n| std::fs::read(p.join(n)).unwrap())
        .collect();
    for output in ["e.sdx", "m.sdm"] {
        let apply = [
            "apply",
            "--base",
            "base.img",
            "e.sdx",
            "--base-manifest",
            "m.sdm",
        ];
        refused(&[&apply[..], &["-o", output, "--force"]].concat());
    }
    refused(&[
        "apply",
        "--base",
        "base.img",
        "e.sdx",
        "-o",
        "key",
        "--key-file",
        "key",
        "--force",
    ]);
    ok(
        p,
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "r",
            "--output-type",
            "raw-sparse",
        ],
    );
    refused(&["apply", "--base", "base.img", "r", "-o", "r.map", "--force"]);
    for (n, bytes) in ["e.sdx", "m.sdm", "key"].iter().zip(kept) {
        assert_eq!(std::fs::read(p.join(n)).unwrap(), bytes, "{n} changed");
    }
}
