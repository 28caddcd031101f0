//! Thread counts for the crypto passes.

use std::thread;

/// Below this many value bytes one thread is faster than starting more.
const MIN_BYTES_PER_THREAD: usize = 4 << 20;

/// Returns how many threads to use for `bytes` bytes of values.
pub(crate) fn thread_count(bytes: usize) -> usize {
    let available = thread::available_parallelism().map_or(1, |count| count.get());
    available.min(8).min(bytes / MIN_BYTES_PER_THREAD).max(1)
}
