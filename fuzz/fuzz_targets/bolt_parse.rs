//! Feeds arbitrary bytes to the BoltDB reader and decrypts every value it
//! finds. Any panic, including an out-of-bounds slice, is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portainer_key_agent::db::PortainerKey;
use portainer_key_agent::db::bolt;

fuzz_target!(|data: &[u8]| {
    let Ok(layout) = bolt::parse(data) else {
        return;
    };
    let key = PortainerKey::from_key_file_bytes(b"abc");
    for bucket in &layout.buckets {
        let _ = &data[bucket.name.clone()];
        for entry in layout.entries(bucket) {
            let _ = &data[entry.key.clone()];
            let _ = key.decrypt(&data[entry.value.clone()]);
        }
    }
});
