//! Arbitrary bytes into the block manifest reader: it either fails with an
//! error or yields runs that cover exactly the header's blocks, then the
//! image digest, and never allocates more than one record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapdelta::manifest::{ManifestReader, Run, MAX_DATA_RUN};

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = ManifestReader::new(data) else {
        return;
    };
    let blocks = reader.header().block_count();
    let mut seen = 0u64;
    while seen < blocks {
        match reader.next_run(blocks - seen) {
            Ok(Run::Zero(n)) => {
                assert!(n >= 1 && n <= blocks - seen);
                seen += n;
            }
            Ok(Run::Data(d)) => {
                assert!(!d.is_empty() && d.len() as u64 <= MAX_DATA_RUN as u64);
                seen += d.len() as u64;
            }
            Err(_) => return,
        }
    }
    assert_eq!(seen, blocks);
    let _ = reader.finish();
});
