//! Arbitrary bytes into the rbd diff reader: it either fails with an error
//! or yields records that stay inside the announced size and in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapdelta::format::rbd_diff::{RbdDiffReader, RbdRecord};

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = RbdDiffReader::new(data) else {
        return;
    };
    let (mut end, mut size) = (0u64, None);
    loop {
        match reader.next_record() {
            Ok(Some(RbdRecord::Size(s))) => size = Some(s),
            Ok(Some(RbdRecord::Write { offset, data })) => {
                let size = size.expect("writes follow the size record");
                assert!(offset >= end && offset + data.len() as u64 <= size);
                assert!(!data.is_empty());
                end = offset + data.len() as u64;
            }
            Ok(Some(RbdRecord::Zero { offset, length })) => {
                let size = size.expect("zeros follow the size record");
                assert!(offset >= end && offset + length <= size && length > 0);
                end = offset + length;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
});
