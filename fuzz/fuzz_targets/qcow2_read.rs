//! Arbitrary bytes as a qcow2 file: opening and walking every table either
//! fails with an error or yields mappings inside the file, and reading a
//! cluster never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapdelta::format::qcow2::{Mapping, Qcow2Reader};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.qcow2");
    std::fs::write(&path, data).unwrap();
    let Ok(q) = Qcow2Reader::open(&path) else {
        return;
    };
    let cs = q.cluster_size();
    let mut buf = vec![0u8; cs as usize];
    for i in 0..q.l1_len() {
        let Ok(table) = q.l2_table(i) else {
            return;
        };
        for mapping in table {
            match mapping {
                Mapping::Data { host } => assert!(host + cs <= q.file_size()),
                Mapping::Compressed { host, len } => assert!(host + len <= q.file_size()),
                Mapping::Zero | Mapping::Unallocated => continue,
            }
            let _ = q.read_cluster(mapping, &mut buf);
        }
    }
});
