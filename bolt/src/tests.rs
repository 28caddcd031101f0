use std::borrow::Cow;

use super::*;

fn entry<'a>(key: &'a [u8], value: Vec<u8>) -> WriteEntry<'a> {
    WriteEntry {
        key,
        value: Cow::Owned(value),
    }
}

/// A bucket read back: name, sequence, inline flag and entries.
type ReadBucket = (Vec<u8>, u64, bool, Vec<(Vec<u8>, Vec<u8>)>);

fn read_back(data: &[u8]) -> Vec<ReadBucket> {
    let layout = parse(data).expect("written file parses");
    layout
        .buckets
        .iter()
        .map(|bucket| {
            let entries = layout
                .entries(bucket)
                .iter()
                .map(|entry| {
                    (
                        data[entry.key.clone()].to_vec(),
                        data[entry.value.clone()].to_vec(),
                    )
                })
                .collect();
            (
                data[bucket.name.clone()].to_vec(),
                bucket.sequence,
                bucket.inline,
                entries,
            )
        })
        .collect()
}

fn sample_keys(count: usize) -> Vec<[u8; 8]> {
    (1..=count as u64).map(u64::to_be_bytes).collect()
}

#[test]
fn writer_output_reads_back() {
    let keys = sample_keys(5000);
    let big_keys = sample_keys(3);
    let mut buckets = vec![
        WriteBucket {
            name: b"users",
            sequence: 3,
            entries: vec![entry(b"\0\0\0\0\0\0\0\x01", b"{\"Id\":1}".to_vec())],
        },
        WriteBucket {
            name: b"bulk",
            sequence: 5000,
            entries: keys.iter().map(|key| entry(key, key.repeat(4))).collect(),
        },
        WriteBucket {
            name: b"large",
            sequence: 0,
            entries: big_keys
                .iter()
                .map(|key| entry(key, vec![key[7]; 70_000]))
                .collect(),
        },
        WriteBucket {
            name: b"empty",
            sequence: 9,
            entries: Vec::new(),
        },
    ];
    for page_size in [1024, 4096, 16384, 65536] {
        let data = write_database(page_size, 0, &mut buckets).expect("writes");
        let read = read_back(&data);
        let names: Vec<&[u8]> = read.iter().map(|bucket| bucket.0.as_slice()).collect();
        assert_eq!(names, [&b"bulk"[..], b"empty", b"large", b"users"]);
        assert_eq!(read[0].3.len(), 5000);
        assert_eq!(read[0].3[4999].1, keys[4999].repeat(4));
        assert_eq!(read[0].1, 5000);
        assert!(read[1].2, "empty bucket is inline");
        assert_eq!(read[1].1, 9);
        assert_eq!(read[2].3[2].1, vec![3u8; 70_000]);
        assert!(read[3].2, "small bucket is inline");
    }
}

#[test]
fn writer_rejects_duplicates() {
    let mut buckets = vec![WriteBucket {
        name: b"a",
        sequence: 0,
        entries: vec![entry(b"k", vec![1]), entry(b"k", vec![2])],
    }];
    assert_eq!(
        write_database(4096, 0, &mut buckets),
        Err(WriteError::DuplicateKey)
    );
}

#[test]
fn written_file_has_no_unreachable_pages() {
    let keys = sample_keys(3000);
    let mut buckets = vec![WriteBucket {
        name: b"bulk",
        sequence: 0,
        entries: keys.iter().map(|key| entry(key, vec![7; 300])).collect(),
    }];
    let data = write_database(4096, 0, &mut buckets).expect("writes");
    let layout = parse(&data).expect("parses");
    assert_eq!(
        layout.freelist,
        FreelistForm::Persisted {
            page: 2,
            free_pages: 0
        }
    );
    let unreachable: usize = layout
        .unreachable_ranges()
        .iter()
        .filter(|range| range.len() == 4096)
        .count();
    assert_eq!(unreachable, 0);
}

#[test]
fn truncated_written_file_is_rejected() {
    let keys = sample_keys(2000);
    let mut buckets = vec![WriteBucket {
        name: b"bulk",
        sequence: 0,
        entries: keys.iter().map(|key| entry(key, vec![1; 100])).collect(),
    }];
    let data = write_database(4096, 0, &mut buckets).expect("writes");
    for len in (0..data.len()).step_by(997) {
        assert!(parse(&data[..len]).is_err(), "length {len}");
    }
}

#[test]
fn writer_handles_keys_over_half_a_page() {
    // Two branch elements with these keys do not fit in one 1 KiB page, so
    // each branch node must still take at least two children for the tree
    // to end in one root.
    let keys: Vec<Vec<u8>> = (0..5u8).map(|index| vec![index; 600]).collect();
    let mut buckets = vec![WriteBucket {
        name: b"long-keys",
        sequence: 0,
        entries: keys
            .iter()
            .map(|key| entry(key, vec![key[0]; 10]))
            .collect(),
    }];
    let data = write_database(1024, 0, &mut buckets).expect("writes");
    let read = read_back(&data);
    assert_eq!(read.len(), 1);
    assert!(!read[0].2, "bucket is not inline");
    let read_keys: Vec<&[u8]> = read[0].3.iter().map(|(key, _)| key.as_slice()).collect();
    assert_eq!(read_keys, keys);
    assert_eq!(read[0].3[4].1, vec![4u8; 10]);
}

fn small_database() -> Vec<u8> {
    let keys = sample_keys(50);
    let mut buckets = vec![WriteBucket {
        name: b"bulk",
        sequence: 50,
        entries: keys.iter().map(|key| entry(key, key.repeat(8))).collect(),
    }];
    write_database(4096, 0, &mut buckets).expect("writes")
}

#[test]
fn newer_meta_pointing_outside_the_file_is_reported() {
    let mut data = small_database();
    let layout = parse(&data).expect("parses");
    let other = 1 - layout.active_meta_page;
    let mut newer = layout.meta;
    newer.txid += 1;
    newer.root = 1 << 40;
    let start = other as usize * layout.page_size;
    write_meta_page(&mut data[start..start + layout.page_size], other, &newer);

    let reparsed = parse(&data).expect("the older meta page still works");

    let skipped = reparsed
        .skipped_newer_meta
        .expect("the newer page is reported");
    assert_eq!(skipped.page, other);
    assert_eq!(skipped.txid, layout.meta.txid + 1);
    assert_eq!(reparsed.meta.txid, layout.meta.txid);
}

#[test]
fn torn_newer_meta_is_not_reported() {
    let mut data = small_database();
    let layout = parse(&data).expect("parses");
    let other = 1 - layout.active_meta_page;
    let mut newer = layout.meta;
    newer.txid += 1;
    let start = other as usize * layout.page_size;
    write_meta_page(&mut data[start..start + layout.page_size], other, &newer);
    // A torn write: the checksum no longer matches.
    data[start + 16 + 40] ^= 0xff;

    let reparsed = parse(&data).expect("the older meta page still works");

    assert_eq!(reparsed.skipped_newer_meta, None);
    assert_eq!(reparsed.meta.txid, layout.meta.txid);
}
