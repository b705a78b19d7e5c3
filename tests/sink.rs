//! A library user's own sink receives the whole diff, in order, with the
//! target's bytes, through the same pipeline as the built-in encoders.

use snapdelta::{
    export_images, BlockSize, DataExtent, Error, ExportHeader, ExportOptions, Image, Phase,
    Progress, Result, Sink, SinkSummary, ZeroExtent,
};

/// Rebuilds the target in memory from a copy of the base.
struct Rebuild {
    image: Vec<u8>,
    header: Option<(u64, u64, Option<[u8; 32]>)>,
    last_end: u64,
    calls: Vec<(&'static str, u64, u64)>,
    finished: bool,
}

impl Sink for Rebuild {
    fn begin(&mut self, header: &ExportHeader) -> Result<()> {
        assert!(self.header.is_none(), "begin called twice");
        self.image.resize(header.target_size as usize, 0);
        assert_eq!(header.target.len(), header.target_size);
        assert_eq!(
            header.extents.len() as u64,
            header.data_extents + header.zero_extents
        );
        self.header = Some((
            header.data_extents,
            header.zero_extents,
            header.target_digest,
        ));
        Ok(())
    }

    fn data(&mut self, e: &DataExtent<'_>) -> Result<()> {
        assert!(e.offset >= self.last_end, "out of order");
        let o = e.offset as usize;
        assert_eq!(
            e.base,
            &self.image[o..o + e.base.len()],
            "base bytes handed over"
        );
        self.image[o..o + e.bytes.len()].copy_from_slice(e.bytes);
        self.last_end = e.offset + e.bytes.len() as u64;
        self.calls.push(("data", e.offset, e.bytes.len() as u64));
        Ok(())
    }

    fn zero(&mut self, e: &ZeroExtent) -> Result<()> {
        assert!(e.offset >= self.last_end, "out of order");
        let o = e.offset as usize;
        self.image[o..o + e.length as usize].fill(0);
        self.last_end = e.offset + e.length;
        self.calls.push(("zero", e.offset, e.length));
        Ok(())
    }

    fn finish(&mut self) -> Result<SinkSummary> {
        self.finished = true;
        Ok(SinkSummary { bytes_written: 0 })
    }
}

#[test]
fn a_custom_sink_rebuilds_the_target() {
    let d = tempfile::tempdir().unwrap();
    let base: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 + 1).collect();
    let mut target = base.clone();
    target.resize(320_000, 0);
    target[5000..9000].fill(0xaa);
    target[65536..131072].fill(0);
    target[319_999] = 1;
    std::fs::write(d.path().join("b"), &base).unwrap();
    std::fs::write(d.path().join("t"), &target).unwrap();
    let b = Image::open(d.path().join("b")).unwrap();
    let t = Image::open(d.path().join("t")).unwrap();

    let mut sink = Rebuild {
        image: base.clone(),
        header: None,
        last_end: 0,
        calls: Vec::new(),
        finished: false,
    };
    let mut phases = Vec::new();
    let options = ExportOptions {
        block_size: BlockSize::new(4096).unwrap(),
        digests: true,
    };
    let summary = export_images(Some(&b), &t, &mut sink, &options, &mut |p: Progress| {
        phases.push(p.phase)
    })
    .unwrap();

    assert!(sink.finished);
    assert_eq!(sink.image, target);
    assert_eq!(
        sink.calls,
        vec![
            ("data", 4096, 8192),
            ("zero", 65536, 65536),
            ("data", 319_488, 512)
        ]
    );
    let header = sink.header.unwrap();
    assert_eq!((header.0, header.1), (2, 1));
    let digest =
        snapdelta::image_digest(&snapdelta::Source::from_bytes(&target), &mut |_| {}).unwrap();
    assert_eq!(header.2, Some(digest));
    assert_eq!(summary.data_bytes, 8192 + 512);
    assert_eq!(phases.first(), Some(&Phase::Detect));
    assert_eq!(phases.last(), Some(&Phase::Write));
}

/// A sink that fails stops the export; `finish` is not called.
#[test]
fn a_failing_sink_stops_the_export() {
    struct Fails(bool);
    impl Sink for Fails {
        fn begin(&mut self, _: &ExportHeader) -> Result<()> {
            Ok(())
        }
        fn data(&mut self, _: &DataExtent<'_>) -> Result<()> {
            Err(Error::Unsupported("no room".into()))
        }
        fn zero(&mut self, _: &ZeroExtent) -> Result<()> {
            Ok(())
        }
        fn finish(&mut self) -> Result<SinkSummary> {
            self.0 = true;
            Ok(SinkSummary::default())
        }
    }
    let target = vec![1u8; 8192];
    let map = snapdelta::detect(&[], &target, BlockSize::new(4096).unwrap());
    let mut sink = Fails(false);
    let err = snapdelta::export_map(&map, &[], &target, None, &mut sink).unwrap_err();
    assert!(err.to_string().contains("no room"));
    assert!(!sink.0, "finish called after an error");
}
