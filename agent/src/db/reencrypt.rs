//! Re-encrypting a mapped database into a staged copy, one chunk at a time.
//!
//! Each value keeps its length (`plaintext + 28` bytes), so a chunk of the
//! original is copied into a small buffer, its values are decrypted with the
//! old key and sealed with the new one in place, and everything the active
//! tree does not reach is zeroed before the chunk is written at the same
//! offset of the copy. The chunk is then read back from the copy and every
//! value in it is authenticated with the new key. Chunks never cut a value.
//! A chunk stays in the CPU cache while it is worked on, so each byte crosses
//! the memory bus about as often as it does in `cp`. Threads take contiguous
//! runs of chunks.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use zeroize::Zeroizing;

use super::bolt::{Layout, MAX_PAGE_SIZE, write_meta_page};
use super::crypto::{PASS_THROUGH_VALUE, PortainerKey};
use super::error::DbError;
use super::files::StagedFile;
use super::parallel::thread_count;

/// Bytes per chunk, unless a value is larger: about the size of a core's L2
/// cache on current x86 and ARM server CPUs.
const CHUNK_SIZE: usize = 1 << 20;
/// Alignment of chunk offsets and buffers: the x86 and ARM memory page size.
const PAGE_ALIGN: usize = 4096;

// The first chunk must hold both meta pages.
const _: () = assert!(CHUNK_SIZE >= 2 * MAX_PAGE_SIZE);

/// The key a database is encrypted with and the key it moves to.
#[derive(Debug)]
pub(crate) struct KeyPair {
    pub(crate) old: PortainerKey,
    pub(crate) new: PortainerKey,
}

/// Values and bytes handled by a rewrite.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    /// Values re-encrypted, each read back from the copy and authenticated
    /// with the new key.
    pub(crate) encrypted: u64,
    /// `false` values copied unchanged.
    pub(crate) pass_through: u64,
    /// Bytes of stale data zeroed outside the meta pages.
    pub(crate) cleared: u64,
}

impl Counts {
    fn add(self, other: Counts) -> Counts {
        Counts {
            encrypted: self.encrypted + other.encrypted,
            pass_through: self.pass_through + other.pass_through,
            cleared: self.cleared + other.cleared,
        }
    }
}

/// Reason a rewrite stopped.
#[derive(Debug)]
pub(crate) enum ReencryptError {
    /// A value of the original did not authenticate with the old key.
    Authentication,
    /// A value read back from the copy did not authenticate with the new key.
    CopyRejected,
    /// Writing or reading back the copy failed.
    Io(DbError),
}

/// Writes the re-encrypted image of `source` into `staged`, which must be
/// empty. On error the staged file contains an unspecified part of the image.
pub(crate) fn reencrypt_into(
    source: &[u8],
    layout: &Layout,
    keys: &KeyPair,
    staged: &StagedFile,
) -> Result<Counts, ReencryptError> {
    let plan = Plan::new(source.len(), layout);
    let value_bytes = plan.values.iter().map(Range::len).sum();
    let per_thread = plan.chunks.len().div_ceil(thread_count(value_bytes)).max(1);
    let failed = AtomicBool::new(false);
    let job = Job {
        source,
        layout,
        plan: &plan,
        keys,
        staged,
        failed: &failed,
    };

    thread::scope(|scope| {
        let workers: Vec<_> = plan
            .chunks
            .chunks(per_thread)
            .map(|chunks| scope.spawn(|| job.run(chunks)))
            .collect();
        workers
            .into_iter()
            .try_fold(Counts::default(), |total, worker| {
                let counts = worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                Ok(total.add(counts))
            })
    })
}

/// Zeroes every byte of a whole file image that the active tree does not use
/// and rewrites both meta pages. Returns the bytes zeroed outside the meta
/// pages.
pub(crate) fn clear_stale_data(data: &mut [u8], layout: &Layout) -> u64 {
    let stale = sorted_stale_ranges(layout);
    let cleared = clear_window(data, 0, &stale);
    rewrite_meta_pages(data, layout);
    cleared
}

/// A part of the file that one worker copies, edits and writes.
#[derive(Debug)]
struct Chunk {
    bytes: Range<usize>,
    /// Indices into [`Plan::values`] of the values inside `bytes`.
    values: Range<usize>,
}

#[derive(Debug)]
struct Plan {
    /// Value ranges sorted by start.
    values: Vec<Range<usize>>,
    /// Stale ranges sorted by start, which do not overlap.
    stale: Vec<Range<usize>>,
    chunks: Vec<Chunk>,
    largest_chunk: usize,
}

impl Plan {
    fn new(file_len: usize, layout: &Layout) -> Plan {
        let mut values: Vec<Range<usize>> = layout
            .values
            .iter()
            .map(|entry| entry.value.clone())
            .collect();
        values.sort_unstable_by_key(|range| range.start);
        let chunks = split_into_chunks(file_len, &values, layout.page_size.max(PAGE_ALIGN));
        let largest_chunk = chunks.iter().map(|chunk| chunk.bytes.len()).max();
        Plan {
            values,
            stale: sorted_stale_ranges(layout),
            chunks,
            largest_chunk: largest_chunk.unwrap_or(0),
        }
    }
}

/// Splits `0..file_len` into chunks of about [`CHUNK_SIZE`] bytes that
/// start and end on multiples of `align` (or at the end of the file) and that
/// no value crosses, so each write fills whole memory pages of the copy and
/// no page is written by two threads. `values` must be sorted by start. Hostile
/// files may contain overlapping values. Those land in one chunk, and the
/// second decryption of the shared bytes fails.
fn split_into_chunks(file_len: usize, values: &[Range<usize>], align: usize) -> Vec<Chunk> {
    let mut chunks = Vec::with_capacity(file_len / CHUNK_SIZE + 1);
    let mut start = 0;
    let mut next_value = 0;
    while start < file_len {
        let first_value = next_value;
        let mut end = start + CHUNK_SIZE;
        loop {
            end = end.next_multiple_of(align).min(file_len);
            let before = next_value;
            while let Some(value) = values.get(next_value).filter(|value| value.start < end) {
                end = end.max(value.end.min(file_len));
                next_value += 1;
            }
            if next_value == before {
                break;
            }
        }
        chunks.push(Chunk {
            bytes: start..end,
            values: first_value..next_value,
        });
        start = end;
    }
    chunks
}

fn sorted_stale_ranges(layout: &Layout) -> Vec<Range<usize>> {
    let mut stale = layout.unreachable_ranges();
    stale.sort_unstable_by_key(|range| range.start);
    stale
}

/// Zeroes the parts of `stale` inside `window`, which starts at file offset
/// `offset`. Returns the bytes zeroed.
fn clear_window(window: &mut [u8], offset: usize, stale: &[Range<usize>]) -> u64 {
    let end = offset + window.len();
    let first = stale.partition_point(|range| range.end <= offset);
    let mut cleared = 0;
    for range in stale[first..].iter().take_while(|range| range.start < end) {
        let start = range.start.max(offset) - offset;
        let stop = range.end.min(end) - offset;
        window[start..stop].fill(0);
        cleared += (stop - start) as u64;
    }
    cleared
}

/// Makes both meta pages, at the start of `data`, point at the active tree.
/// The other meta page gets the same tree one txid earlier, so bbolt still
/// opens the active one and its next commit lands on the other page.
fn rewrite_meta_pages(data: &mut [u8], layout: &Layout) {
    let page_size = layout.page_size;
    let active = layout.meta;
    let older_txid = active.txid.checked_sub(1).unwrap_or(1);
    for page in 0..2u64 {
        let mut meta = active;
        if page != layout.active_meta_page {
            meta.txid = older_txid;
        }
        let start = page as usize * page_size;
        write_meta_page(&mut data[start..start + page_size], page, &meta);
    }
}

/// The inputs every worker shares.
struct Job<'a> {
    source: &'a [u8],
    layout: &'a Layout,
    plan: &'a Plan,
    keys: &'a KeyPair,
    staged: &'a StagedFile,
    /// Set by the first worker that fails, so the others stop early.
    failed: &'a AtomicBool,
}

impl Job<'_> {
    fn run(&self, chunks: &[Chunk]) -> Result<Counts, ReencryptError> {
        let result = self.rewrite_chunks(chunks);
        if result.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        result
    }

    fn rewrite_chunks(&self, chunks: &[Chunk]) -> Result<Counts, ReencryptError> {
        let mut chunk_buffer = AlignedBuffer::new(self.plan.largest_chunk);
        let mut read_back_buffer = AlignedBuffer::new(self.plan.largest_chunk);
        let mut rng = rand::rng();
        let mut counts = Counts::default();
        for chunk in chunks {
            if self.failed.load(Ordering::Relaxed) {
                break;
            }
            let buffer = chunk_buffer.slice(chunk.bytes.len());
            buffer.copy_from_slice(&self.source[chunk.bytes.clone()]);
            let offset = chunk.bytes.start;
            let values = &self.plan.values[chunk.values.clone()];

            for range in values {
                let value = &mut buffer[range.start - offset..range.end - offset];
                if value == PASS_THROUGH_VALUE {
                    counts.pass_through += 1;
                    continue;
                }
                self.keys
                    .old
                    .open_in_place(value)
                    .map_err(|_| ReencryptError::Authentication)?;
                self.keys.new.seal_in_place(value, &mut rng);
                counts.encrypted += 1;
            }
            counts.cleared += clear_window(buffer, offset, &self.plan.stale);
            if offset == 0 {
                rewrite_meta_pages(buffer, self.layout);
            }
            self.staged
                .write_at(buffer, offset as u64)
                .map_err(ReencryptError::Io)?;

            let written = read_back_buffer.slice(chunk.bytes.len());
            self.staged
                .read_at(written, offset as u64)
                .map_err(ReencryptError::Io)?;
            self.check_written(written, offset, values)?;
        }
        Ok(counts)
    }

    /// Authenticates every encrypted value of a chunk read back from the
    /// copy, decrypting in place in the read-back buffer.
    fn check_written(
        &self,
        written: &mut [u8],
        offset: usize,
        values: &[Range<usize>],
    ) -> Result<(), ReencryptError> {
        for range in values {
            let value = &mut written[range.start - offset..range.end - offset];
            if value != PASS_THROUGH_VALUE {
                self.keys
                    .new
                    .open_in_place(value)
                    .map_err(|_| ReencryptError::CopyRejected)?;
            }
        }
        Ok(())
    }
}

/// A zeroizing buffer whose usable part starts on a [`PAGE_ALIGN`] boundary.
/// It is allocated once, so it never moves and leaves no unwiped copy.
struct AlignedBuffer {
    bytes: Zeroizing<Vec<u8>>,
    start: usize,
}

impl AlignedBuffer {
    fn new(len: usize) -> AlignedBuffer {
        let bytes = Zeroizing::new(vec![0u8; len + PAGE_ALIGN]);
        let start = bytes.as_ptr().align_offset(PAGE_ALIGN).min(PAGE_ALIGN);
        AlignedBuffer { bytes, start }
    }

    /// Returns the first `len` bytes of the aligned part.
    fn slice(&mut self, len: usize) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(chunks: &[Chunk]) -> Vec<Range<usize>> {
        chunks.iter().map(|chunk| chunk.bytes.clone()).collect()
    }

    fn assert_chunks_are_sound(chunks: &[Chunk], file_len: usize, values: &[Range<usize>]) {
        let ranges = covered(chunks);
        assert_eq!(ranges.first().map(|range| range.start), Some(0));
        assert_eq!(ranges.last().map(|range| range.end), Some(file_len));
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
            assert_eq!(
                pair[0].end % PAGE_ALIGN,
                0,
                "boundary {} is not aligned",
                pair[0].end
            );
        }
        for (index, value) in values.iter().enumerate() {
            let holder = chunks
                .iter()
                .find(|chunk| chunk.values.contains(&index))
                .expect("every value is in a chunk");
            assert!(
                holder.bytes.start <= value.start,
                "{value:?} starts before its chunk"
            );
            assert!(
                value.end <= holder.bytes.end,
                "{value:?} ends after its chunk"
            );
        }
    }

    #[test]
    fn chunks_cover_the_file_on_aligned_boundaries_without_cutting_values() {
        let chunk = CHUNK_SIZE;
        let file_len = 3 * chunk + 100;
        let values = vec![
            10..20,
            chunk - 5..chunk + 5,
            chunk + 4090..chunk + 4200,
            2 * chunk + 7..2 * chunk + 9,
        ];
        let chunks = split_into_chunks(file_len, &values, PAGE_ALIGN);
        assert_chunks_are_sound(&chunks, file_len, &values);
        // The value across the first boundary pulls it to the next aligned
        // offset, where a second value starts, so the chunk ends after that one.
        assert_eq!(chunks[0].bytes, 0..chunk + 2 * PAGE_ALIGN);
        assert_eq!(chunks[0].values, 0..3);
    }

    #[test]
    fn a_value_larger_than_a_chunk_gets_one_chunk() {
        let chunk = CHUNK_SIZE;
        let after = 5 * chunk + 2 * PAGE_ALIGN;
        let values = [100..5 * chunk + 1, after..after + 10];
        let chunks = split_into_chunks(6 * chunk, &values, PAGE_ALIGN);
        assert_chunks_are_sound(&chunks, 6 * chunk, &values);
        assert_eq!(chunks[0].bytes, 0..5 * chunk + PAGE_ALIGN);
        assert_eq!(chunks[0].values, 0..1);
        assert_eq!(chunks[1].values, 1..2);
    }

    #[test]
    fn overlapping_values_share_a_chunk() {
        let chunk = CHUNK_SIZE;
        let values = vec![chunk - 10..chunk + 10, chunk - 5..3 * chunk];
        let chunks = split_into_chunks(4 * chunk, &values, PAGE_ALIGN);
        assert_chunks_are_sound(&chunks, 4 * chunk, &values);
        assert_eq!(chunks[0].values, 0..2);
    }

    #[test]
    fn clear_window_zeroes_only_the_overlap() {
        // The window covers file offsets 8..22.
        let stale = vec![0..4, 6..12, 20..30];
        let mut window = [0xffu8; 14];
        let cleared = clear_window(&mut window, 8, &stale);
        assert_eq!(cleared, 4 + 2);
        let mut expected = [0xffu8; 14];
        expected[..4].fill(0);
        expected[12..].fill(0);
        assert_eq!(window, expected);
    }
}
