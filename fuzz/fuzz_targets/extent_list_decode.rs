//! Arbitrary bytes into the extent-list decoder: it either fails with an
//! error or yields records that keep the format's promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapdelta::format::extent_list::Record;
use snapdelta::ExtentListReader;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = ExtentListReader::new(data) else {
        return;
    };
    let header = reader.header().clone();
    let mut end = 0u64;
    loop {
        match reader.next_record() {
            Ok(Some(Record::Data {
                offset,
                length,
                payload,
                ..
            })) => {
                assert!(offset >= end && offset + length <= header.target_size);
                assert!(length <= header.record_limit);
                if let Some(p) = payload {
                    assert_eq!(p.len() as u64, length);
                }
                end = offset + length;
            }
            Ok(Some(Record::Zero { offset, length, .. })) => {
                assert!(offset >= end && offset + length <= header.target_size);
                end = offset + length;
            }
            Ok(None) => {
                let t = reader.trailer().expect("trailer after the last record");
                assert_eq!(t.data_bytes, header.data_bytes);
                assert_eq!(t.zero_bytes, header.zero_bytes);
                break;
            }
            Err(_) => break,
        }
    }
});
