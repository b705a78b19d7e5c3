//! qcow2 exports judged by qemu-img: `check`, `info`, `compare`, `map`
//! and `commit`, on the ext4 pairs and the engine's edge cases, with and
//! without compression; and qemu-img's own overlays read back by apply.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn qemu_img(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("qemu-img is needed for the qcow2 tests (apt-get install qemu-utils)");
    out
}

fn qemu_ok(dir: &Path, args: &[&str]) -> String {
    let out = qemu_img(dir, args);
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The target padded with zeros to a multiple of 512, as qemu sees it.
fn padded(dir: &Path, target: &str) -> String {
    let mut bytes = std::fs::read(dir.join(target)).unwrap();
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    let name = format!("{target}.padded");
    std::fs::write(dir.join(&name), bytes).unwrap();
    name
}

/// Per-cluster kinds qemu-img map reports for the overlay's own layer:
/// 'D' data, 'Z' zero, '.' not in this layer.
fn qemu_map(dir: &Path, overlay: &str, cs: u64, clusters: u64) -> Vec<char> {
    let out = qemu_ok(dir, &["map", "--output=json", overlay]);
    let entries: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut kinds = vec!['.'; clusters as usize];
    for e in entries {
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        let own = e["depth"].as_u64() == Some(0) && e["present"].as_bool() == Some(true);
        let kind = match (own, e["data"].as_bool(), e["zero"].as_bool()) {
            (true, Some(true), _) => 'D',
            (true, Some(false), Some(true)) => 'Z',
            _ => '.',
        };
        for c in start / cs..(start + len).div_ceil(cs) {
            if (c as usize) < kinds.len() {
                kinds[c as usize] = kind;
            }
        }
    }
    kinds
}

/// Exports base -> target as qcow2 (with and without zstd) and puts every
/// qemu-img judgement to it; then applies it and compares.
fn judge(dir: &Path, base: Option<&str>, target: &str, bs: u64) {
    let target_bytes = std::fs::read(dir.join(target)).unwrap();
    let base_bytes = base
        .map(|b| std::fs::read(dir.join(b)).unwrap())
        .unwrap_or_default();
    let expected = refdiff(&base_bytes, &target_bytes, bs as usize);
    let virtual_size = (target_bytes.len() as u64).div_ceil(512) * 512;
    let clusters = virtual_size.div_ceil(bs);
    let mut want = vec!['.'; clusters as usize];
    for &(o, l, k) in &expected {
        for c in o / bs..(o + l).div_ceil(bs) {
            want[c as usize] = if k == "data" { 'D' } else { 'Z' };
        }
    }
    // An unchanged last cluster whose rounding to 512 bytes would show a
    // longer base's bytes is stored as data.
    let n = target_bytes.len();
    let tail_from_base = base_bytes.get(n..(virtual_size as usize).min(base_bytes.len()));
    let mut listed_want = owned(&expected);
    if tail_from_base.is_some_and(|t| t.iter().any(|&b| b != 0)) && want.last() == Some(&'.') {
        *want.last_mut().unwrap() = 'D';
        let last = (n as u64 - 1) / bs * bs;
        match listed_want.last_mut() {
            Some(e) if e.0 + e.1 == last && e.2 == "data" => e.1 += n as u64 - last,
            _ => listed_want.push((last, n as u64 - last, "data".to_string())),
        }
    }
    let padded = padded(dir, target);
    for compress in [false, true] {
        let ov = format!("{target}-{compress}.qcow2");
        let bs_arg = bs.to_string();
        let mut args = vec![
            "export",
            target,
            "-o",
            &ov,
            "--output-type",
            "qcow2",
            "--block-size",
            &bs_arg,
        ];
        if let Some(b) = base {
            args.extend(["--base", b]);
        }
        if compress {
            args.extend(["--compress", "zstd", "--digest"]);
        }
        ok(dir, &args);

        let check = qemu_ok(dir, &["check", "--output=json", &ov]);
        let check: Value = serde_json::from_str(&check).unwrap();
        for field in ["corruptions", "leaks", "check-errors"] {
            assert_eq!(
                check.get(field).and_then(Value::as_u64).unwrap_or(0),
                0,
                "{ov}: {check}"
            );
        }
        let info: Value =
            serde_json::from_str(&qemu_ok(dir, &["info", "--output=json", &ov])).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["virtual-size"].as_u64(), Some(virtual_size));
        assert_eq!(info["cluster-size"].as_u64(), Some(bs));
        assert_eq!(info["dirty-flag"], false);
        match base {
            Some(b) => {
                assert_eq!(info["backing-filename"].as_str(), Some(b), "{info}");
                assert_eq!(info["backing-filename-format"], "raw");
            }
            None => assert!(info.get("backing-filename").is_none(), "{info}"),
        }
        qemu_ok(dir, &["compare", "-f", "qcow2", "-F", "raw", &ov, &padded]);
        assert_eq!(qemu_map(dir, &ov, bs, clusters), want, "{ov}: qemu-img map");

        // Our own reader rebuilds the exact target, true size included.
        let result = format!("{ov}.img");
        let mut args = vec!["apply", &ov, "-o", &result];
        if let Some(b) = base {
            args.extend(["--base", b]);
        }
        ok(dir, &args);
        assert!(
            std::fs::read(dir.join(&result)).unwrap() == target_bytes,
            "{ov}: apply"
        );
        let (_, listed) = info_extents(dir, &ov);
        assert_eq!(listed, listed_want, "{ov}: info");

        // qemu-img commit into a copy of the base gives the target.
        if let Some(b) = base {
            let copy = format!("{ov}.base");
            std::fs::copy(dir.join(b), dir.join(&copy)).unwrap();
            qemu_ok(dir, &["rebase", "-u", "-b", &copy, "-F", "raw", &ov]);
            qemu_ok(dir, &["commit", &ov]);
            let committed = std::fs::read(dir.join(&copy)).unwrap();
            let n = target_bytes.len();
            assert!(committed.len() >= n, "{ov}: committed base too short");
            assert!(
                committed[..n] == target_bytes[..],
                "{ov}: commit result differs"
            );
            assert!(committed[n..].iter().all(|&b| b == 0) || committed.len() == base_bytes.len());
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed) | 1)
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// A name, an optional base, a target and a block size.
type Case = (&'static str, Option<Vec<u8>>, Vec<u8>, u64);

#[test]
fn edge_cases_pass_every_qemu_img_check() {
    let b = pattern(300_000, 1);
    let mut cases: Vec<Case> = Vec::new();
    let mut t = b.clone();
    t[70_000..80_000].fill(0);
    t[200_000..200_010].fill(9);
    cases.push(("mixed", Some(b.clone()), t.clone(), 4096));
    cases.push(("mixed64k", Some(b.clone()), t, 65536));
    cases.push(("identical", Some(b.clone()), b.clone(), 65536));
    cases.push(("allzero", Some(b.clone()), vec![0; 300_000], 65536));
    let mut grown = b.clone();
    grown.resize(500_000, 0);
    grown[450_000] = 1;
    cases.push(("grown", Some(b.clone()), grown, 4096));
    let mut shrunk = b[..123_457].to_vec();
    shrunk[5] ^= 1;
    cases.push(("shrunk", Some(b.clone()), shrunk, 4096));
    let mut last = b.clone();
    *last.last_mut().unwrap() ^= 1;
    cases.push(("lastbyte", Some(b.clone()), last, 65536));
    cases.push(("nobase", None, pattern(200_000, 3), 65536));
    cases.push(("empty", Some(b.clone()), Vec::new(), 65536));
    cases.push(("empty-nobase", None, Vec::new(), 4096));
    cases.push(("big-cluster", Some(b.clone()), pattern(300_000, 7), 2 << 20));
    // B06: 10000 bytes, changes in the first block and at the last byte.
    let b06 = vec![0x41u8; 10000];
    let mut t06 = b06.clone();
    t06[9999] = 0x42;
    t06[4095] = 0x42;
    cases.push(("b06", Some(b06), t06, 4096));
    // B04: grown from 64 KiB to 96 KiB.
    let b04 = vec![0x11u8; 65536];
    let mut t04 = b04.clone();
    t04.resize(98304, 0);
    t04[81920..86016].fill(0x22);
    t04[12288..16384].fill(0x33);
    cases.push(("b04", Some(b04), t04, 4096));
    for (name, base, target, bs) in cases {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "target.img", &target);
        if let Some(base) = &base {
            write(d.path(), "base.img", base);
        }
        eprintln!("case {name}");
        judge(
            d.path(),
            base.as_ref().map(|_| "base.img"),
            "target.img",
            bs,
        );
    }
}

#[test]
fn ext4_pairs_pass_every_qemu_img_check() {
    let d = tempfile::tempdir().unwrap();
    make_ext4_pairs(d.path());
    for pair in ["small", "grown", "churn"] {
        judge(
            d.path(),
            Some(&format!("{pair}-base.img")),
            &format!("{pair}-target.img"),
            65536,
        );
    }
}

/// B13: odd characters in the base's name, another working directory,
/// and the 1023-byte limit on backing names.
#[test]
fn b13_backing_file_names() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::create_dir_all(p.join("base dir")).unwrap();
    std::fs::create_dir_all(p.join("elsewhere")).unwrap();
    fill(&p.join("base dir/ba:se,x.raw"), 0, 262144, 0x11);
    std::fs::copy(p.join("base dir/ba:se,x.raw"), p.join("target.raw")).unwrap();
    fill(&p.join("target.raw"), 65536, 4096, 0x22);
    ok(
        p,
        &[
            "export",
            "--base",
            "base dir/ba:se,x.raw",
            "target.raw",
            "-o",
            "base dir/o1.qcow2",
            "--output-type",
            "qcow2",
        ],
    );
    let info: Value =
        serde_json::from_str(&qemu_ok(p, &["info", "--output=json", "base dir/o1.qcow2"])).unwrap();
    assert_eq!(info["backing-filename"], "./ba:se,x.raw");
    assert_eq!(info["backing-filename-format"], "raw");
    qemu_ok(
        &p.join("elsewhere"),
        &["compare", "../base dir/o1.qcow2", "../target.raw"],
    );

    for total in [1023usize, 1024] {
        let mut name = String::new();
        while name.len() + 201 < total - 20 {
            name.push_str(&"a".repeat(200));
            name.push('/');
        }
        name.push_str(&"b".repeat(total - name.len() - 4));
        name.push_str(".raw");
        assert_eq!(name.len(), total);
        std::fs::create_dir_all(p.join(&name).parent().unwrap()).unwrap();
        fill(&p.join(&name), 0, 262144, 0x11);
        let ov = format!("l{total}.qcow2");
        let args = [
            "export",
            "--base",
            &name,
            "target.raw",
            "-o",
            &ov,
            "--output-type",
            "qcow2",
        ];
        if total == 1023 {
            ok(p, &args);
            qemu_ok(p, &["compare", &ov, "target.raw"]);
        } else {
            let out = run(p, &args);
            assert_ne!(out.status.code(), Some(0));
            assert!(String::from_utf8_lossy(&out.stderr).contains("too long"));
            assert!(!p.join(&ov).exists());
        }
    }
}

/// Overlays that qemu-img writes, with a raw backing file, apply and
/// describe like ours.
#[test]
fn qemu_written_overlays_are_read() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let b = pattern(1 << 20, 1);
    let mut t = b.clone();
    t[100_000..200_000].fill(0);
    t[500_000..500_100].fill(7);
    write(p, "base.img", &b);
    write(p, "target.img", &t);
    qemu_ok(
        p,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "target.img",
            "-F",
            "raw",
            "rebased.qcow2",
        ],
    );
    qemu_ok(
        p,
        &["rebase", "-b", "base.img", "-F", "raw", "rebased.qcow2"],
    );
    qemu_ok(
        p,
        &[
            "convert",
            "-O",
            "qcow2",
            "-B",
            "base.img",
            "-F",
            "raw",
            "target.img",
            "converted.qcow2",
        ],
    );
    qemu_ok(
        p,
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-B",
            "base.img",
            "-F",
            "raw",
            "target.img",
            "deflate.qcow2",
        ],
    );
    qemu_ok(
        p,
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd",
            "-B",
            "base.img",
            "-F",
            "raw",
            "target.img",
            "zstd.qcow2",
        ],
    );
    for ov in [
        "rebased.qcow2",
        "converted.qcow2",
        "deflate.qcow2",
        "zstd.qcow2",
    ] {
        let out = format!("{ov}.img");
        ok(p, &["apply", "--base", "base.img", ov, "-o", &out]);
        assert!(std::fs::read(p.join(&out)).unwrap() == t, "{ov}");
        let (info, _) = info_extents(p, ov);
        assert_eq!(info["output_type"], "QCOW2");
        assert_eq!(info["backing_file"], "base.img");
        // Without the base the overlay is refused, naming its backing file.
        let err = run(p, &["apply", ov, "-o", "never.img"]);
        assert!(String::from_utf8_lossy(&err.stderr).contains("base.img"));
        assert!(!p.join("never.img").exists());
    }
}

/// What the reader does not support is refused with a clear error.
#[test]
fn unsupported_and_damaged_qcow2_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(p, "base.img", &pattern(1 << 20, 1));
    write(p, "data.raw", &pattern(1 << 20, 2));
    qemu_ok(p, &["create", "-q", "-f", "qcow2", "snap.qcow2", "1M"]);
    qemu_ok(p, &["snapshot", "-c", "s1", "snap.qcow2"]);
    qemu_ok(
        p,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "ext.qcow2",
            "1M",
        ],
    );
    qemu_ok(
        p,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=data.raw",
            "datafile.qcow2",
            "1M",
        ],
    );
    qemu_ok(
        p,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=s0,data=pass",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0",
            "enc.qcow2",
            "1M",
        ],
    );
    qemu_ok(p, &["convert", "-q", "-O", "qcow2", "base.img", "b.qcow2"]);
    qemu_ok(
        p,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "-b",
            "b.qcow2",
            "-F",
            "qcow2",
            "v2q.qcow2",
        ],
    );
    let err = fails(
        p,
        &["apply", "--base", "b.qcow2", "v2q.qcow2", "-o", "never.img"],
    );
    assert!(err.contains("\"qcow2\" backing file"), "{err}");
    for (file, words) in [
        ("snap.qcow2", "internal snapshots"),
        ("ext.qcow2", "extended L2"),
        ("datafile.qcow2", "external data file"),
        ("enc.qcow2", "encrypted"),
    ] {
        let err = fails(p, &["apply", file, "-o", "never.img"]);
        assert!(err.contains(words), "{file}: {err}");
        fails(p, &["info", file]);
    }

    // Hand-damaged copies of one of our overlays.
    let mut t = pattern(1 << 20, 1);
    t[0] ^= 1;
    write(p, "target.img", &t);
    ok(
        p,
        &[
            "export",
            "--base",
            "base.img",
            "target.img",
            "-o",
            "ok.qcow2",
            "--output-type",
            "qcow2",
            "--digest",
        ],
    );
    let good = std::fs::read(p.join("ok.qcow2")).unwrap();
    let patch = |name: &str, at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        write(p, name, &b);
    };
    patch("unknown-bit.qcow2", 72, &(1u64 << 40).to_be_bytes());
    patch("name-1024.qcow2", 16, &1024u32.to_be_bytes());
    patch("name-past.qcow2", 8, &(65530u64).to_be_bytes());
    patch("l1-past.qcow2", 40, &(1u64 << 40).to_be_bytes());
    patch("bits.qcow2", 20, &30u32.to_be_bytes());
    for (file, words) in [
        ("unknown-bit.qcow2", "incompatible feature"),
        ("name-1024.qcow2", "1 to 1023"),
        ("name-past.qcow2", "first cluster"),
        ("l1-past.qcow2", "L1 table offset"),
        ("bits.qcow2", "cluster_bits"),
    ] {
        let err = fails(p, &["apply", "--base", "base.img", file, "-o", "never.img"]);
        assert!(err.contains(words), "{file}: {err}");
        assert!(!p.join("never.img").exists());
    }
    for cut in [0, 100, good.len() / 2, good.len() - 1] {
        write(p, "cut.qcow2", &good[..cut]);
        let out = run(
            p,
            &[
                "apply",
                "--base",
                "base.img",
                "cut.qcow2",
                "-o",
                "never.img",
            ],
        );
        assert_eq!(out.status.code(), Some(1), "cut {cut}");
        assert!(!p.join("never.img").exists());
    }
    // The wrong base is caught by the digests the overlay records.
    write(p, "other.img", &pattern(1 << 20, 9));
    let err = fails(
        p,
        &[
            "apply",
            "--base",
            "other.img",
            "ok.qcow2",
            "-o",
            "never.img",
        ],
    );
    assert!(err.contains("mismatch"), "{err}");
}

/// The overlay is written in one sequential pass: to a pipe it is the same
/// bytes as to a file, and qemu-img accepts it.
#[test]
fn qcow2_streams_to_a_pipe() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let b = pattern(3 << 20, 1);
    let mut t = b.clone();
    t[1 << 20..(1 << 20) + 5000].fill(0);
    t[2 << 20] ^= 1;
    write(p, "base.img", &b);
    write(p, "target.img", &t);
    for compress in [&[][..], &["--compress", "zstd:5"]] {
        let mut args = vec![
            "export",
            "--base",
            "base.img",
            "target.img",
            "--output-type",
            "qcow2",
            "--block-size",
            "4K",
        ];
        args.extend_from_slice(compress);
        let mut to_file = args.clone();
        to_file.extend(["-o", "file.qcow2", "--force"]);
        ok(p, &to_file);
        let mut to_pipe = args.clone();
        to_pipe.extend(["-o", "-"]);
        let piped = ok(p, &to_pipe).stdout;
        assert!(
            piped == std::fs::read(p.join("file.qcow2")).unwrap(),
            "{compress:?}"
        );
        write(p, "piped.qcow2", &piped);
        qemu_ok(p, &["check", "piped.qcow2"]);
        qemu_ok(p, &["compare", "piped.qcow2", "target.img"]);
    }
}
