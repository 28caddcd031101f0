//! Writing a fresh, compact BoltDB file.
//!
//! The output has two meta pages (txid 0 and 1, same tree), an empty persisted
//! freelist on page 2 and every bucket's tree after it, so bbolt's `tx.Check()`
//! finds every page reachable. Buckets small enough for bbolt to store inline
//! (a single leaf of at most a quarter page, bbolt 1.3 `Bucket.inlineable`) are
//! written inline, as bbolt itself would.

use std::borrow::Cow;

use thiserror::Error;

use super::meta::{MAX_PAGE_SIZE, META_SIZE, MIN_PAGE_SIZE, Meta};
use super::page::{
    BRANCH_PAGE, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, ELEMENT_SIZE, FREELIST_PAGE, LEAF_PAGE,
    META_PAGE, PAGE_HEADER_SIZE, PageHeader,
};

/// bbolt's maximum key size in bytes.
pub const MAX_KEY_SIZE: usize = 32768;
/// bbolt's maximum value size in bytes.
pub const MAX_VALUE_SIZE: usize = (1 << 31) - 2;

/// Page id of the freelist in a file this module writes.
const FREELIST_PAGE_ID: u64 = 2;

/// Minimum number of items in a node, bbolt 1.3's `minKeysPerPage`. With one
/// item per node, keys longer than half a page would give every branch level
/// as many nodes as the level below, and the tree would never reach one root.
const MIN_ITEMS_PER_NODE: usize = 2;

/// A bucket to write.
#[derive(Debug, Clone)]
pub struct WriteBucket<'a> {
    /// Bucket name.
    pub name: &'a [u8],
    /// Bucket sequence counter.
    pub sequence: u64,
    /// Key/value pairs, in any order.
    pub entries: Vec<WriteEntry<'a>>,
}

/// A key/value pair to write.
#[derive(Debug, Clone)]
pub struct WriteEntry<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: Cow<'a, [u8]>,
}

/// Input that cannot be written as a BoltDB file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The page size is not a power of two between 1 KiB and 64 KiB.
    #[error("unsupported page size {0}")]
    UnsupportedPageSize(usize),
    /// Two buckets have the same name.
    #[error("duplicate bucket name")]
    DuplicateBucket,
    /// A bucket has the same key twice.
    #[error("duplicate key in a bucket")]
    DuplicateKey,
    /// A key or bucket name is empty or longer than bbolt allows.
    #[error("key of {0} bytes is empty or longer than 32768 bytes")]
    InvalidKeySize(usize),
    /// A value is longer than bbolt allows.
    #[error("value of {0} bytes is longer than bbolt allows")]
    ValueTooLarge(usize),
}

/// Writes `buckets` as a new BoltDB file image with the given page size.
///
/// Buckets and keys are sorted here. `root_sequence` is the root bucket's
/// sequence counter (kept from the source file by callers that copy one).
pub fn write_database(
    page_size: usize,
    root_sequence: u64,
    buckets: &mut [WriteBucket<'_>],
) -> Result<Vec<u8>, WriteError> {
    let supported =
        page_size.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size);
    if !supported {
        return Err(WriteError::UnsupportedPageSize(page_size));
    }
    sort_and_check(buckets)?;

    let mut writer = PageWriter {
        out: vec![0; 3 * page_size],
        page_size,
    };
    let bucket_values: Vec<Vec<u8>> = buckets
        .iter()
        .map(|bucket| writer.write_bucket(bucket))
        .collect();
    let root_items: Vec<LeafItem<'_>> = buckets
        .iter()
        .zip(&bucket_values)
        .map(|(bucket, value)| LeafItem {
            flags: BUCKET_LEAF_FLAG,
            key: bucket.name,
            value,
        })
        .collect();
    let root = writer.write_tree(&root_items);

    writer.finish(root, root_sequence);
    Ok(writer.out)
}

fn sort_and_check(buckets: &mut [WriteBucket<'_>]) -> Result<(), WriteError> {
    buckets.sort_by(|a, b| a.name.cmp(b.name));
    if buckets.windows(2).any(|pair| pair[0].name == pair[1].name) {
        return Err(WriteError::DuplicateBucket);
    }
    for bucket in buckets.iter_mut() {
        check_key(bucket.name)?;
        bucket.entries.sort_by(|a, b| a.key.cmp(b.key));
        if bucket
            .entries
            .windows(2)
            .any(|pair| pair[0].key == pair[1].key)
        {
            return Err(WriteError::DuplicateKey);
        }
        for entry in &bucket.entries {
            check_key(entry.key)?;
            if entry.value.len() > MAX_VALUE_SIZE {
                return Err(WriteError::ValueTooLarge(entry.value.len()));
            }
        }
    }
    Ok(())
}

fn check_key(key: &[u8]) -> Result<(), WriteError> {
    if key.is_empty() || key.len() > MAX_KEY_SIZE {
        return Err(WriteError::InvalidKeySize(key.len()));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct LeafItem<'a> {
    flags: u32,
    key: &'a [u8],
    value: &'a [u8],
}

/// A written node: its first key and page id, as its parent branch lists it.
#[derive(Debug, Clone, Copy)]
struct ChildRef<'a> {
    key: &'a [u8],
    id: u64,
}

fn leaf_size(items: &[LeafItem<'_>]) -> usize {
    let elements: usize = items
        .iter()
        .map(|item| ELEMENT_SIZE + item.key.len() + item.value.len())
        .sum();
    PAGE_HEADER_SIZE + elements
}

struct PageWriter {
    out: Vec<u8>,
    page_size: usize,
}

impl PageWriter {
    /// Writes a bucket's tree (or builds its inline image) and returns the
    /// bucket entry's value: `root u64, sequence u64`, then any inline page.
    fn write_bucket(&mut self, bucket: &WriteBucket<'_>) -> Vec<u8> {
        let items: Vec<LeafItem<'_>> = bucket
            .entries
            .iter()
            .map(|entry| LeafItem {
                flags: 0,
                key: entry.key,
                value: &entry.value,
            })
            .collect();

        let size = leaf_size(&items);
        let inline = size <= self.page_size / 4;
        let root = if inline { 0 } else { self.write_tree(&items) };

        let mut value = Vec::with_capacity(BUCKET_HEADER_SIZE + if inline { size } else { 0 });
        value.extend_from_slice(&root.to_le_bytes());
        value.extend_from_slice(&bucket.sequence.to_le_bytes());
        if inline {
            let start = value.len();
            value.resize(start + size, 0);
            encode_leaf(&mut value[start..], 0, 0, &items);
        }
        value
    }

    /// Writes a B+tree over sorted `items` and returns its root page id.
    fn write_tree<'a>(&mut self, items: &[LeafItem<'a>]) -> u64 {
        let mut level = self.write_leaves(items);
        while level.len() > 1 {
            level = self.write_branches(&level);
        }
        level[0].id
    }

    fn write_leaves<'a>(&mut self, items: &[LeafItem<'a>]) -> Vec<ChildRef<'a>> {
        let mut nodes = Vec::new();
        for chunk in pack(items, self.page_size, |item| {
            ELEMENT_SIZE + item.key.len() + item.value.len()
        }) {
            let (id, overflow, span) = self.allocate(leaf_size(chunk));
            encode_leaf(span, id, overflow, chunk);
            let key = chunk.first().map_or(&[][..], |item| item.key);
            nodes.push(ChildRef { key, id });
        }
        nodes
    }

    fn write_branches<'a>(&mut self, children: &[ChildRef<'a>]) -> Vec<ChildRef<'a>> {
        let mut nodes = Vec::new();
        for chunk in pack(children, self.page_size, |child| {
            ELEMENT_SIZE + child.key.len()
        }) {
            let size = PAGE_HEADER_SIZE
                + chunk
                    .iter()
                    .map(|child| ELEMENT_SIZE + child.key.len())
                    .sum::<usize>();
            let (id, overflow, span) = self.allocate(size);
            encode_branch(span, id, overflow, chunk);
            nodes.push(ChildRef {
                key: chunk[0].key,
                id,
            });
        }
        nodes
    }

    /// Appends a node of `size` bytes; returns its id, overflow count and span.
    fn allocate(&mut self, size: usize) -> (u64, u32, &mut [u8]) {
        let pages = size.div_ceil(self.page_size).max(1);
        let start = self.out.len();
        let id = (start / self.page_size) as u64;
        self.out.resize(start + pages * self.page_size, 0);
        let overflow = u32::try_from(pages - 1).unwrap_or(u32::MAX);
        (id, overflow, &mut self.out[start..])
    }

    /// Writes the freelist page and both meta pages.
    fn finish(&mut self, root: u64, root_sequence: u64) {
        let page_size = self.page_size;
        let freelist = PageHeader {
            id: FREELIST_PAGE_ID,
            flags: FREELIST_PAGE,
            count: 0,
            overflow: 0,
        };
        freelist.write(&mut self.out[2 * page_size..]);

        let mut meta = Meta {
            page_size: page_size as u32,
            flags: 0,
            root,
            root_sequence,
            freelist: FREELIST_PAGE_ID,
            high_water: (self.out.len() / page_size) as u64,
            txid: 0,
        };
        for page in 0..2u64 {
            meta.txid = page;
            write_meta_page(
                &mut self.out[page as usize * page_size..][..page_size],
                page,
                &meta,
            );
        }
    }
}

/// Overwrites meta page `id` (0 or 1) in `span`: header, `meta` with a fresh
/// checksum, then zeros to the end of `span`.
///
/// # Panics
///
/// Panics if `span` is shorter than 80 bytes (page header and meta record).
/// Callers pass the whole page, which is at least [`MIN_PAGE_SIZE`] bytes.
pub fn write_meta_page(span: &mut [u8], id: u64, meta: &Meta) {
    span.fill(0);
    let header = PageHeader {
        id,
        flags: META_PAGE,
        count: 0,
        overflow: 0,
    };
    header.write(span);
    span[PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + META_SIZE].copy_from_slice(&meta.encode());
}

/// Splits `items` into nodes that fit one page each, with at least
/// [`MIN_ITEMS_PER_NODE`] items in every node but the last. A node that does
/// not fit spans overflow pages.
fn pack<T>(items: &[T], page_size: usize, item_size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut size = PAGE_HEADER_SIZE;
    for (index, item) in items.iter().enumerate() {
        let next = item_size(item);
        if index - start >= MIN_ITEMS_PER_NODE && size + next > page_size {
            chunks.push(&items[start..index]);
            start = index;
            size = PAGE_HEADER_SIZE;
        }
        size += next;
    }
    chunks.push(&items[start..]);
    chunks
}

fn write_u32(span: &mut [u8], offset: usize, value: u32) {
    span[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

/// Encodes a leaf page: header, element array, then each key and value.
fn encode_leaf(span: &mut [u8], id: u64, overflow: u32, items: &[LeafItem<'_>]) {
    let header = PageHeader {
        id,
        flags: LEAF_PAGE,
        count: items.len() as u16,
        overflow,
    };
    header.write(span);

    let mut data = PAGE_HEADER_SIZE + items.len() * ELEMENT_SIZE;
    for (index, item) in items.iter().enumerate() {
        let element = PAGE_HEADER_SIZE + index * ELEMENT_SIZE;
        write_u32(span, element, item.flags);
        write_u32(span, element + 4, (data - element) as u32);
        write_u32(span, element + 8, item.key.len() as u32);
        write_u32(span, element + 12, item.value.len() as u32);
        span[data..data + item.key.len()].copy_from_slice(item.key);
        data += item.key.len();
        span[data..data + item.value.len()].copy_from_slice(item.value);
        data += item.value.len();
    }
}

/// Encodes a branch page: header, element array, then each child's first key.
fn encode_branch(span: &mut [u8], id: u64, overflow: u32, children: &[ChildRef<'_>]) {
    let header = PageHeader {
        id,
        flags: BRANCH_PAGE,
        count: children.len() as u16,
        overflow,
    };
    header.write(span);

    let mut data = PAGE_HEADER_SIZE + children.len() * ELEMENT_SIZE;
    for (index, child) in children.iter().enumerate() {
        let element = PAGE_HEADER_SIZE + index * ELEMENT_SIZE;
        write_u32(span, element, (data - element) as u32);
        write_u32(span, element + 4, child.key.len() as u32);
        span[element + 8..element + 16].copy_from_slice(&child.id.to_le_bytes());
        span[data..data + child.key.len()].copy_from_slice(child.key);
        data += child.key.len();
    }
}
