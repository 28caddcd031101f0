//! Splitting value ranges across threads for the crypto passes.

use std::ops::Range;
use std::thread;

/// Below this many value bytes one thread is faster than starting more.
const MIN_BYTES_PER_THREAD: usize = 4 << 20;

/// Returns how many threads to use for `bytes` bytes of values.
pub(crate) fn thread_count(bytes: usize) -> usize {
    let available = thread::available_parallelism().map_or(1, |count| count.get());
    available.min(8).min(bytes / MIN_BYTES_PER_THREAD).max(1)
}

/// Splits ranges sorted by start into at most `parts` groups of similar byte
/// size. A group boundary is placed only where every earlier range ends
/// before the next one starts, so each group covers its own byte region.
pub(crate) fn split_ranges(ranges: &[Range<usize>], parts: usize) -> Vec<&[Range<usize>]> {
    let total: usize = ranges.iter().map(|range| range.len()).sum();
    let target = total.div_ceil(parts.max(1)).max(1);
    let mut groups = Vec::with_capacity(parts);
    let mut start = 0;
    let mut bytes = 0;
    let mut max_end = 0;
    for (index, range) in ranges.iter().enumerate() {
        if bytes >= target && index > start && range.start >= max_end {
            groups.push(&ranges[start..index]);
            start = index;
            bytes = 0;
        }
        bytes += range.len();
        max_end = max_end.max(range.end);
    }
    if start < ranges.len() {
        groups.push(&ranges[start..]);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_ranges_keeps_every_range_once() {
        let ranges: Vec<Range<usize>> = (0..100).map(|index| index * 10..index * 10 + 7).collect();
        let groups = split_ranges(&ranges, 4);
        assert_eq!(groups.len(), 4);
        let joined: Vec<Range<usize>> = groups.concat();
        assert_eq!(joined, ranges);
    }

    #[test]
    fn split_ranges_never_cuts_overlaps() {
        let ranges = vec![0..100, 50..60, 99..120, 200..210];
        for group in split_ranges(&ranges, 4) {
            assert!(!group.is_empty());
        }
        assert_eq!(split_ranges(&ranges, 4)[0].len(), 3);
    }
}
