//! Images that change while an export reads them: the export fails with an
//! error naming the image, never crashes with `SIGBUS`, and never finishes
//! a stream (no end record) that could mix two states of the disk.

use snapdelta::format::qcow2::{Qcow2Encoder, Qcow2Options};
use snapdelta::format::rbd_diff::RbdDiffEncoder;
use snapdelta::{
    export_images, BlockSize, DataExtent, ExportHeader, ExportOptions, ExtentListEncoder,
    ExtentListReader, Image, Result, Sink, SinkSummary, ZeroExtent,
};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to do to the target once detection is over and streaming begins.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// Cut the file to a quarter of its size.
    Truncate,
    /// Rewrite one block that detection found unchanged, keeping the size.
    Rewrite,
}

/// A sink that changes the target on disk when it is told to begin, then
/// hands everything on to the encoder it wraps.
struct Meddler<'a> {
    inner: Box<dyn Sink + 'a>,
    target: PathBuf,
    change: Change,
}

impl Sink for Meddler<'_> {
    fn begin(&mut self, header: &ExportHeader) -> Result<()> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.target)
            .unwrap();
        // Older kernels stamp file times once per clock tick: let one pass
        // since the image was written and opened.
        std::thread::sleep(Duration::from_millis(20));
        match self.change {
            Change::Truncate => f.set_len(header.target_size / 4).unwrap(),
            // Block 0 is the same in base and target (see `images`).
            Change::Rewrite => f.write_all_at(&[0xEE; 4096], 0).unwrap(),
        }
        self.inner.begin(header)
    }

    fn data(&mut self, extent: &DataExtent<'_>) -> Result<()> {
        self.inner.data(extent)
    }

    fn zero(&mut self, extent: &ZeroExtent) -> Result<()> {
        self.inner.zero(extent)
    }

    fn finish(&mut self) -> Result<SinkSummary> {
        self.inner.finish()
    }
}

/// A 16 MiB base and a target that differs from it everywhere but in the
/// first 64 KiB, with a zeroed stretch, so that every encoder reads the
/// target's bytes and the base's checksums after detection.
fn images(dir: &Path) -> (PathBuf, PathBuf) {
    let size = 16usize << 20;
    let base: Vec<u8> = (0..size).map(|i| (i / 4096 % 251) as u8 | 1).collect();
    let mut target: Vec<u8> = base.iter().map(|b| b ^ 0x5A).collect();
    target[..65536].copy_from_slice(&base[..65536]);
    target[(8 << 20)..(9 << 20)].fill(0);
    let (b, t) = (dir.join("base.img"), dir.join("target.img"));
    std::fs::write(&b, base).unwrap();
    std::fs::write(&t, target).unwrap();
    (b, t)
}

fn encoders<'a>(out: &'a mut Vec<u8>, name: &str) -> Box<dyn Sink + 'a> {
    match name {
        "extent-list" => Box::new(ExtentListEncoder::new(out, true, None)),
        "extent-list-zstd" => Box::new(ExtentListEncoder::new(out, true, Some(1))),
        "qcow2" => Box::new(Qcow2Encoder::new(
            out,
            Qcow2Options {
                backing: Some("base.img".into()),
                zstd_level: None,
            },
        )),
        // Compression reads every cluster while planning, in `begin`.
        "qcow2-zstd" => Box::new(Qcow2Encoder::new(
            out,
            Qcow2Options {
                backing: Some("base.img".into()),
                zstd_level: Some(1),
            },
        )),
        "rbd-diff" => Box::new(RbdDiffEncoder::new(out, None, None).unwrap()),
        _ => unreachable!(),
    }
}

#[test]
fn a_target_changed_during_streaming_fails_the_export() {
    for change in [Change::Truncate, Change::Rewrite] {
        for name in [
            "extent-list",
            "extent-list-zstd",
            "qcow2",
            "qcow2-zstd",
            "rbd-diff",
        ] {
            for digests in [false, true] {
                let d = tempfile::tempdir().unwrap();
                let (b, t) = images(d.path());
                let base = Image::open(&b).unwrap();
                let target = Image::open(&t).unwrap();
                let mut out = Vec::new();
                let mut sink = Meddler {
                    inner: encoders(&mut out, name),
                    target: t.clone(),
                    change,
                };
                let options = ExportOptions {
                    block_size: BlockSize::new(65536).unwrap(),
                    digests,
                };
                let err = export_images(Some(&base), &target, &mut sink, &options, &mut |_| {})
                    .expect_err(&format!("{change:?} {name} digests={digests}"))
                    .to_string();
                assert!(
                    err.contains("target.img") && err.contains("changed"),
                    "{change:?} {name}: {err}"
                );
                drop(sink);
                if name.starts_with("extent-list") {
                    // The stream was never finished: a reader sees it cut.
                    let mut reader = ExtentListReader::new(out.as_slice()).unwrap();
                    let end = loop {
                        match reader.next_record() {
                            Ok(Some(_)) => continue,
                            other => break other.map(|r| r.is_none()),
                        }
                    };
                    assert!(end.is_err(), "{change:?} {name}: stream has an end record");
                }
            }
        }
    }
}

/// An image rewritten while its manifest is written: the manifest gets no
/// end record and the call fails naming the image.
#[test]
fn an_image_changed_while_its_manifest_is_written_fails() {
    use snapdelta::manifest::ManifestReader;
    let d = tempfile::tempdir().unwrap();
    let (_, t) = images(d.path());
    let image = Image::open(&t).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&t).unwrap();
    let mut changed = false;
    let mut out = Vec::new();
    let err = snapdelta::write_manifest(
        &image.source(),
        BlockSize::new(65536).unwrap(),
        &mut out,
        &mut |done| {
            // Once hashing is under way, rewrite a block far behind it.
            if done > 0 && !changed {
                std::thread::sleep(Duration::from_millis(20));
                f.write_all_at(&[0xEE; 4096], 0).unwrap();
                changed = true;
            }
        },
    )
    .expect_err("the image changed")
    .to_string();
    assert!(changed);
    assert!(
        err.contains("target.img") && err.contains("changed"),
        "{err}"
    );
    let mut reader = ManifestReader::new(out.as_slice()).unwrap();
    assert!(reader.finish().is_err(), "the manifest has an end record");
}
