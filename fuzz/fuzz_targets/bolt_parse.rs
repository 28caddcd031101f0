//! Feeds arbitrary bytes to the BoltDB reader. Any panic is a bug: an
//! out-of-bounds slice or an arithmetic overflow in the reader, or a broken
//! property checked below.
//!
//! The target parses each input twice: as it is, and with both meta pages
//! rewritten with fresh checksums. Without the second parse almost every
//! mutation of a meta page fails its checksum, so the fuzzer could not reach
//! other roots, freelists, high-water marks and page sizes.
//!
//! For every file that parses, the target slices every bucket name, key and
//! value. It checks that the unreachable ranges are disjoint and lie outside
//! the meta pages and outside every live byte. Then it does what `db rotate`
//! does before it renames a file into place: zero the unreachable ranges and
//! rewrite both meta pages. The copy must parse to the same layout, because
//! the reader reads nothing from those bytes once it has picked the meta page.
#![no_main]

use std::hint::black_box;
use std::ops::Range;

use libfuzzer_sys::fuzz_target;
use portainer_bolt::{Layout, MAX_PAGE_SIZE, MIN_PAGE_SIZE, Meta, parse, write_meta_page};

/// Size of a page header, and of a page header and meta record together.
const PAGE_HEADER_SIZE: usize = 16;
const META_PAGE_USED: usize = PAGE_HEADER_SIZE + 64;

fuzz_target!(|data: &[u8]| {
    check_file(data);
    if let Some(resealed) = reseal_meta_pages(data) {
        check_file(&resealed);
    }
});

fn check_file(data: &[u8]) {
    let Ok(layout) = parse(data) else {
        return;
    };
    let live = live_ranges(data, &layout);
    let unreachable = sorted_unreachable_ranges(data, &layout);
    check_no_overlap(&unreachable, &live);
    check_clearing_keeps_layout(data, &layout, &unreachable, &live);
}

/// Returns a copy of `data` whose two meta pages carry their own fields with
/// a valid header, magic, version and checksum, or `None` when page 0 names
/// no supported page size or the file is too short for both meta records.
fn reseal_meta_pages(data: &[u8]) -> Option<Vec<u8>> {
    let page_size = read_u32(data, PAGE_HEADER_SIZE + 8)? as usize;
    let supported =
        page_size.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size);
    if !supported || data.len() < page_size + META_PAGE_USED {
        return None;
    }

    let mut copy = data.to_vec();
    for page in 0..2u64 {
        let start = page as usize * page_size;
        let meta = read_meta_fields(&data[start + PAGE_HEADER_SIZE..])?;
        let end = (start + page_size).min(copy.len());
        write_meta_page(&mut copy[start..end], page, &meta);
    }
    Some(copy)
}

/// Reads the fields of a meta record, whatever its magic, version and
/// checksum.
fn read_meta_fields(record: &[u8]) -> Option<Meta> {
    Some(Meta {
        page_size: read_u32(record, 8)?,
        flags: read_u32(record, 12)?,
        root: read_u64(record, 16)?,
        root_sequence: read_u64(record, 24)?,
        freelist: read_u64(record, 32)?,
        high_water: read_u64(record, 40)?,
        txid: read_u64(record, 48)?,
    })
}

fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

/// Slices every bucket name, key and value, checks that the buckets' entry
/// ranges tile `layout.values`, and returns the non-empty ranges.
fn live_ranges(data: &[u8], layout: &Layout) -> Vec<Range<usize>> {
    let mut live = Vec::new();
    let mut next_entry = 0;
    for bucket in &layout.buckets {
        black_box(&data[bucket.name.clone()]);
        live.push(bucket.name.clone());
        assert_eq!(
            bucket.entries.start, next_entry,
            "bucket entries are contiguous"
        );
        next_entry = bucket.entries.end;
        for entry in layout.entries(bucket) {
            black_box(&data[entry.key.clone()]);
            black_box(&data[entry.value.clone()]);
            live.push(entry.key.clone());
            live.push(entry.value.clone());
        }
    }
    assert_eq!(next_entry, layout.values.len(), "buckets cover every entry");
    live.retain(|range| !range.is_empty());
    live
}

/// Returns the unreachable ranges sorted by start, after checking that each
/// lies inside the file and after the two meta pages, and that none overlap.
fn sorted_unreachable_ranges(data: &[u8], layout: &Layout) -> Vec<Range<usize>> {
    let mut ranges = layout.unreachable_ranges();
    ranges.sort_unstable_by_key(|range| range.start);
    let meta_end = 2 * layout.page_size;
    let mut previous_end = meta_end;
    for range in &ranges {
        assert!(!range.is_empty(), "empty unreachable range {range:?}");
        assert!(
            range.end <= data.len(),
            "unreachable range {range:?} past the file"
        );
        assert!(
            range.start >= previous_end,
            "unreachable range {range:?} overlaps a meta page or the previous range"
        );
        previous_end = range.end;
    }
    ranges
}

/// Checks that no live range shares a byte with an unreachable range. The
/// unreachable ranges are sorted and disjoint, so for each live range the only
/// candidate is the first unreachable range that ends after its start.
fn check_no_overlap(unreachable: &[Range<usize>], live: &[Range<usize>]) {
    for range in live {
        let index = unreachable.partition_point(|other| other.end <= range.start);
        if let Some(other) = unreachable.get(index) {
            assert!(
                other.start >= range.end,
                "live range {range:?} overlaps unreachable range {other:?}"
            );
        }
    }
}

/// Zeroes the unreachable ranges and rewrites both meta pages the way
/// `db rotate` does, then checks that the copy parses to the same layout with
/// the same bytes in every live range.
fn check_clearing_keeps_layout(
    data: &[u8],
    layout: &Layout,
    unreachable: &[Range<usize>],
    live: &[Range<usize>],
) {
    let mut copy = data.to_vec();
    for range in unreachable {
        copy[range.clone()].fill(0);
    }
    let page_size = layout.page_size;
    let older_txid = layout.meta.txid.checked_sub(1).unwrap_or(1);
    for page in 0..2u64 {
        let mut meta = layout.meta;
        if page != layout.active_meta_page {
            meta.txid = older_txid;
        }
        let start = page as usize * page_size;
        write_meta_page(&mut copy[start..start + page_size], page, &meta);
    }

    let reparsed = match parse(&copy) {
        Ok(reparsed) => reparsed,
        Err(error) => panic!("cleared copy does not parse: {error}"),
    };
    assert_eq!(reparsed.page_size, layout.page_size);
    assert_eq!(reparsed.meta.root, layout.meta.root);
    assert_eq!(reparsed.freelist, layout.freelist);
    assert_eq!(reparsed.buckets, layout.buckets);
    assert_eq!(reparsed.values, layout.values);
    for range in live {
        assert_eq!(
            copy[range.clone()],
            data[range.clone()],
            "live range {range:?} changed"
        );
    }
}
