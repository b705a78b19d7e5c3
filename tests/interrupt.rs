//! Export and apply killed with SIGKILL at various points: a file under
//! the final name is always complete (it appears by a rename once whole),
//! and running the same command again succeeds.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A 48 MiB pair with changes spread over it, large enough that a run
/// takes a while even in a release build.
fn images(dir: &Path) {
    let size = 48usize << 20;
    let base: Vec<u8> = (0..size).map(|i| (i / 4096 * 13 % 251) as u8 | 1).collect();
    let mut target = base.clone();
    for (n, chunk) in target.chunks_mut(1 << 20).enumerate() {
        let step = 3 + n % 5;
        for (i, block) in chunk.chunks_mut(4096).enumerate() {
            if i % step == 0 {
                block
                    .iter_mut()
                    .for_each(|b| *b = b.wrapping_mul(7) ^ n as u8);
            }
        }
    }
    std::fs::write(dir.join("base.img"), base).unwrap();
    std::fs::write(dir.join("target.img"), target).unwrap();
}

/// Starts `snapdelta ARGS` in `dir`, kills it after `delay`, and returns
/// whether it had already finished (successfully) by then.
fn kill_after(dir: &Path, args: &[&str], delay: Duration) -> bool {
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let _ = child.kill();
    let status = child.wait().unwrap();
    status.success()
}

#[test]
fn killed_exports_and_applies_leave_nothing_under_the_final_name() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    images(p);
    let target = std::fs::read(p.join("target.img")).unwrap();
    let delays = [0, 2, 5, 10, 20, 40, 80, 160].map(Duration::from_millis);
    let mut interrupted = 0;
    for ty in ["metadata-and-data", "raw-sparse", "qcow2", "rbd-diff"] {
        let out = format!("out.{ty}");
        let export = [
            "export",
            "--base",
            "base.img",
            "target.img",
            "--output-type",
            ty,
            "--block-size",
            "4K",
            "--compress",
            "zstd:19",
            "-o",
            &out,
        ];
        // Only metadata-and-data and qcow2 compress.
        let export: Vec<&str> = if ty == "raw-sparse" || ty == "rbd-diff" {
            export
                .iter()
                .copied()
                .filter(|a| *a != "--compress" && *a != "zstd:19")
                .collect()
        } else {
            export.to_vec()
        };
        for delay in delays {
            let finished = kill_after(p, &export, delay);
            if finished {
                // It ran to the end before the kill: the output is whole.
                assert!(p.join(&out).exists());
            } else {
                interrupted += 1;
                // Killed before its rename: nothing under the name. Killed
                // in the instant after it: the output is whole. (A raw
                // sparse data file renamed just before its map is no
                // export without it: apply and info refuse it.)
                let whole = ty != "raw-sparse" || p.join(format!("{out}.map")).exists();
                if p.join(&out).exists() && whole {
                    ok(p, &["info", &out]);
                }
            }
            let _ = std::fs::remove_file(p.join(&out));
            let _ = std::fs::remove_file(p.join(format!("{out}.map")));
        }
        ok(p, &export);

        let apply = ["apply", "--base", "base.img", &out, "-o", "rebuilt.img"];
        for delay in delays {
            let finished = kill_after(p, &apply, delay);
            if finished {
                assert!(std::fs::read(p.join("rebuilt.img")).unwrap() == target);
                std::fs::remove_file(p.join("rebuilt.img")).unwrap();
            } else {
                interrupted += 1;
                if p.join("rebuilt.img").exists() {
                    assert!(
                        std::fs::read(p.join("rebuilt.img")).unwrap() == target,
                        "apply of {ty} killed after {delay:?} left a wrong image"
                    );
                    std::fs::remove_file(p.join("rebuilt.img")).unwrap();
                }
            }
        }
        ok(p, &apply);
        assert!(
            std::fs::read(p.join("rebuilt.img")).unwrap() == target,
            "{ty}"
        );
        std::fs::remove_file(p.join("rebuilt.img")).unwrap();
    }
    // The delays must have caught most runs in the middle.
    assert!(
        interrupted >= 32,
        "only {interrupted} runs were interrupted"
    );
}
