//! Writes arbitrary buckets with the BoltDB writer and checks that the reader
//! returns exactly what was written: bucket names, sequences and inline flags,
//! every key and value, the page size, the root sequence and an empty
//! persisted freelist. Any panic is a bug in the writer or the reader.
#![no_main]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::ControlFlow;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use portainer_bolt::{
    FreelistForm, Layout, MAX_KEY_SIZE, WriteBucket, WriteEntry, parse, write_database,
};

/// Upper bounds that keep one run in the millisecond range and its memory
/// below a few MiB. A bucket gets at most 2500 generated entries, whose keys
/// and values add up to at most 256 KiB, and 1024 entries read from the input.
/// 2500 entries with 4-byte keys and 1-byte values fill three tree levels on
/// 1 KiB pages.
const MAX_BUCKETS: u32 = 8;
const MAX_INPUT_ENTRIES: u32 = 1024;
const MAX_GENERATED_ENTRIES: u32 = 2500;
const MAX_GENERATED_BYTES: usize = 256 * 1024;

/// Page header and leaf element header sizes, as bbolt 1.3 lays them out.
const PAGE_HEADER_SIZE: usize = 16;
const ELEMENT_SIZE: usize = 16;

type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug)]
struct Bucket {
    sequence: u64,
    entries: Entries,
}

/// A database to write, deduplicated and sorted as the file stores it, with
/// no empty or oversized key, so the writer must accept it.
#[derive(Debug)]
struct Input {
    page_size: usize,
    root_sequence: u64,
    buckets: BTreeMap<Vec<u8>, Bucket>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = read_input(&mut Unstructured::new(data)) else {
        return;
    };
    let file = write(&input);
    let layout = match parse(&file) {
        Ok(layout) => layout,
        Err(error) => panic!("written file does not parse: {error}"),
    };
    check_header(&input, &layout);
    check_unreachable_ranges(&layout);
    check_buckets(&input, &layout, &file);
});

fn read_input(u: &mut Unstructured<'_>) -> Result<Input> {
    let page_size = 1024 << u.int_in_range(0..=6)?;
    let root_sequence = u.arbitrary()?;
    let mut buckets = BTreeMap::new();
    u.arbitrary_loop(None, Some(MAX_BUCKETS), |u| {
        // Padding reaches names longer than a page, which small inputs
        // would not.
        let mut name = vec![b'n'; u.int_in_range(0..=MAX_KEY_SIZE)?];
        name.extend_from_slice(u.arbitrary()?);
        let bucket = read_bucket(u)?;
        if is_valid_key(&name) {
            buckets.insert(name, bucket);
        }
        Ok(continue_while_data(u))
    })?;
    Ok(Input {
        page_size,
        root_sequence,
        buckets,
    })
}

/// Reads a bucket: generated entries, then entries read from the input.
fn read_bucket(u: &mut Unstructured<'_>) -> Result<Bucket> {
    let sequence = u.arbitrary()?;
    let mut entries = generated_entries(u)?;
    u.arbitrary_loop(None, Some(MAX_INPUT_ENTRIES), |u| {
        let key: Vec<u8> = u.arbitrary()?;
        let value: Vec<u8> = u.arbitrary()?;
        if is_valid_key(&key) {
            entries.insert(key, value);
        }
        Ok(continue_while_data(u))
    })?;
    Ok(Bucket { sequence, entries })
}

/// Generates entries with keys `fill * padding ++ index` and equal values, so
/// that small inputs still reach multi-level trees, keys longer than a page
/// and overflow values.
fn generated_entries(u: &mut Unstructured<'_>) -> Result<Entries> {
    let count = u.int_in_range(0..=MAX_GENERATED_ENTRIES)?;
    let bytes_per_entry = MAX_GENERATED_BYTES / count.max(1) as usize;
    let padding = u.int_in_range(0..=bytes_per_entry.min(MAX_KEY_SIZE - 4))?;
    let value_len = u.int_in_range(0..=bytes_per_entry - padding)?;
    let fill: u8 = u.arbitrary()?;

    // The keys come in order, so `collect` builds the map in one pass. An
    // insert per entry would compare keys each time, which libFuzzer's memcmp
    // hook makes slow.
    let entries = (0..count)
        .map(|index| {
            let mut key = vec![fill; padding];
            key.extend_from_slice(&index.to_be_bytes());
            (key, vec![fill; value_len])
        })
        .collect();
    Ok(entries)
}

/// Ends a loop once the input is used up, because every later item would be
/// empty.
fn continue_while_data(u: &Unstructured<'_>) -> ControlFlow<()> {
    if u.is_empty() {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

fn is_valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_SIZE
}

fn write(input: &Input) -> Vec<u8> {
    let mut buckets: Vec<WriteBucket<'_>> = input
        .buckets
        .iter()
        .map(|(name, bucket)| WriteBucket {
            name,
            sequence: bucket.sequence,
            entries: bucket
                .entries
                .iter()
                .map(|(key, value)| WriteEntry {
                    key,
                    value: Cow::Borrowed(value),
                })
                .collect(),
        })
        .collect();
    match write_database(input.page_size, input.root_sequence, &mut buckets) {
        Ok(file) => file,
        Err(error) => panic!("writer rejected valid input: {error}"),
    }
}

fn check_header(input: &Input, layout: &Layout) {
    assert_eq!(layout.page_size, input.page_size);
    assert_eq!(layout.meta.root_sequence, input.root_sequence);
    let empty_freelist = FreelistForm::Persisted {
        page: 2,
        free_pages: 0,
    };
    assert_eq!(layout.freelist, empty_freelist);
}

/// Checks that the file has no unused page. The writer allocates pages only
/// for nodes, and every node starts with a page header, so unused bytes never
/// start on a page boundary.
fn check_unreachable_ranges(layout: &Layout) {
    for range in layout.unreachable_ranges() {
        assert_ne!(
            range.start % layout.page_size,
            0,
            "unreachable range {range:?} starts a page"
        );
    }
}

fn check_buckets(input: &Input, layout: &Layout, file: &[u8]) {
    assert_eq!(layout.buckets.len(), input.buckets.len(), "bucket count");
    for (read, (name, written)) in layout.buckets.iter().zip(&input.buckets) {
        assert_eq!(&file[read.name.clone()], name.as_slice(), "bucket name");
        assert_eq!(read.sequence, written.sequence, "bucket sequence");
        assert_eq!(
            read.inline,
            is_inlineable(&written.entries, input.page_size),
            "inline flag of bucket {name:?}"
        );

        let entries = layout.entries(read);
        assert_eq!(entries.len(), written.entries.len(), "entry count");
        for (entry, (key, value)) in entries.iter().zip(&written.entries) {
            assert_eq!(&file[entry.key.clone()], key.as_slice(), "key");
            assert_eq!(&file[entry.value.clone()], value.as_slice(), "value");
        }
    }
}

/// bbolt 1.3 `Bucket.inlineable`: one leaf of at most a quarter page.
fn is_inlineable(entries: &Entries, page_size: usize) -> bool {
    let elements: usize = entries
        .iter()
        .map(|(key, value)| ELEMENT_SIZE + key.len() + value.len())
        .sum();
    PAGE_HEADER_SIZE + elements <= page_size / 4
}
