//! Replays the saved inputs of `fuzz/regressions/TARGET/` through the same
//! checks the fuzz targets run, so that every input that once failed, and
//! a few that reach deep into each decoder, run in every test run.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

/// One target's check.
type Check = fn(&[u8]);

/// Runs `check` on every file of `fuzz/regressions/target`, and returns
/// how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    for input in &inputs {
        let data = std::fs::read(input).unwrap();
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "{target}: {} fails", input.display());
    }
    inputs.len()
}

#[test]
fn every_saved_input_passes_its_check() {
    let targets: [(&str, Check); 6] = [
        ("extent_list_decode", checks::extent_list_decode),
        ("rbd_diff_decode", checks::rbd_diff_decode),
        ("qcow2_read", checks::qcow2_read),
        ("encode_roundtrip", checks::encode_roundtrip),
        ("apply_export", checks::apply_export),
        ("manifest_decode", checks::manifest_decode),
    ];
    for (target, check) in targets {
        assert!(replay(target, check) > 0, "{target}: no saved inputs");
    }
}
