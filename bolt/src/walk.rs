//! Walking every top-level bucket of a BoltDB file.

use std::ops::Range;

use super::error::BoltError;
use super::meta::{Meta, NO_FREELIST, SkippedMeta, select_meta};
use super::page::{
    BRANCH_PAGE, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, ELEMENT_SIZE, FREELIST_PAGE, LEAF_PAGE,
    LeafElement, PAGE_HEADER_SIZE, PageHeader, PageView, branch_element, leaf_element, page_at,
    read_u64,
};

/// Maximum depth of one B+tree. A real tree of this depth would need more pages
/// than a 64-bit file can hold, so deeper trees are corrupt or hostile.
const MAX_DEPTH: usize = 32;

/// Freelist form found in the active meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreelistForm {
    /// The freelist is stored on page `page` and lists `free_pages` ids.
    Persisted {
        /// Page id of the freelist.
        page: u64,
        /// Number of page ids listed.
        free_pages: u64,
    },
    /// The freelist is not persisted (bbolt's `NoFreelistSync`); readers
    /// rebuild it from the pages the tree does not reach.
    NotPersisted,
}

/// A top-level bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRef {
    /// Byte range of the bucket name in the file.
    pub name: Range<usize>,
    /// The bucket's sequence counter.
    pub sequence: u64,
    /// Whether the bucket is stored inline in its parent's leaf.
    pub inline: bool,
    /// Indices of this bucket's entries in [`Layout::values`].
    pub entries: Range<usize>,
}

/// One key/value pair, as byte ranges in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueRef {
    /// Byte range of the key.
    pub key: Range<usize>,
    /// Byte range of the value.
    pub value: Range<usize>,
}

/// Everything a reader found in a BoltDB file, as offsets into the bytes it was
/// parsed from.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Page size in bytes.
    pub page_size: usize,
    /// The active meta page.
    pub meta: Meta,
    /// Page id (0 or 1) of the active meta page.
    pub active_meta_page: u64,
    /// The other meta page, when it is newer, has a valid checksum and cannot
    /// be used: the file lost its newest transaction, probably by truncation.
    pub skipped_newer_meta: Option<SkippedMeta>,
    /// Freelist form of the file.
    pub freelist: FreelistForm,
    /// Top-level buckets in key order.
    pub buckets: Vec<BucketRef>,
    /// Entries of all buckets, each bucket's entries contiguous and in key order.
    pub values: Vec<ValueRef>,
    file_len: usize,
    reachable: PageSet,
    slack: Vec<Range<usize>>,
}

/// Parses a BoltDB file and walks every top-level bucket.
///
/// Every offset is checked before use, so corrupt or hostile input returns an
/// error. Nested buckets are rejected because Portainer does not create them.
pub fn parse(data: &[u8]) -> Result<Layout, BoltError> {
    let active = select_meta(data)?;
    let page_size = active.page_size;
    let file_pages = data.len().div_ceil(page_size) as u64;
    let mut walker = Walker {
        data,
        page_size,
        high_water: active.meta.high_water,
        reachable: PageSet::new(file_pages),
        buckets: Vec::new(),
        values: Vec::new(),
        slack: Vec::new(),
        used: Vec::new(),
    };
    walker.reachable.insert(0);
    walker.reachable.insert(1);

    walker.walk_tree(active.meta.root, 0, TreeKind::Root)?;
    let freelist = walker.read_freelist(active.meta.freelist)?;

    Ok(Layout {
        page_size,
        meta: active.meta,
        active_meta_page: active.page,
        skipped_newer_meta: active.skipped_newer,
        freelist,
        buckets: walker.buckets,
        values: walker.values,
        file_len: data.len(),
        reachable: walker.reachable,
        slack: walker.slack,
    })
}

impl Layout {
    /// Returns the entries of `bucket`.
    pub fn entries(&self, bucket: &BucketRef) -> &[ValueRef] {
        &self.values[bucket.entries.clone()]
    }

    /// Returns the byte ranges that hold nothing the active tree reaches: pages
    /// outside the tree and freelist (meta pages excluded), and unused bytes
    /// inside reachable pages. Stale data from older transactions lives there.
    /// The ranges are disjoint but not sorted.
    pub fn unreachable_ranges(&self) -> Vec<Range<usize>> {
        let mut ranges = self.slack.clone();
        let file_pages = self.file_len.div_ceil(self.page_size) as u64;
        for id in 2..file_pages {
            if self.reachable.contains(id) {
                continue;
            }
            let start = id as usize * self.page_size;
            let end = (start + self.page_size).min(self.file_len);
            match ranges.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => ranges.push(start..end),
            }
        }
        ranges
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TreeKind {
    /// The root bucket's tree, whose leaves hold bucket entries only.
    Root,
    /// A bucket's tree, whose leaves hold key/value pairs only.
    Bucket,
}

struct Walker<'a> {
    data: &'a [u8],
    page_size: usize,
    high_water: u64,
    reachable: PageSet,
    buckets: Vec<BucketRef>,
    values: Vec<ValueRef>,
    slack: Vec<Range<usize>>,
    /// Scratch list of the byte ranges in use on the current page.
    used: Vec<Range<usize>>,
}

impl Walker<'_> {
    fn walk_tree(&mut self, id: u64, depth: usize, kind: TreeKind) -> Result<(), BoltError> {
        if depth >= MAX_DEPTH {
            return Err(BoltError::TreeTooDeep {
                page: id,
                max: MAX_DEPTH,
            });
        }
        let page = page_at(self.data, self.page_size, self.high_water, id)?;
        self.mark_reachable(&page)?;

        match page.header.flags {
            BRANCH_PAGE => self.walk_branch(&page, depth, kind),
            LEAF_PAGE => self.walk_leaf(&page, kind),
            flags => Err(BoltError::UnexpectedPageType { page: id, flags }),
        }
    }

    fn mark_reachable(&mut self, page: &PageView) -> Result<(), BoltError> {
        for offset in 0..=u64::from(page.header.overflow) {
            let id = page.id + offset;
            if !self.reachable.insert(id) {
                return Err(BoltError::PageReferencedTwice { page: id });
            }
        }
        Ok(())
    }

    fn walk_branch(
        &mut self,
        page: &PageView,
        depth: usize,
        kind: TreeKind,
    ) -> Result<(), BoltError> {
        let count = usize::from(page.header.count);
        if count == 0 {
            return Err(BoltError::EmptyBranch { page: page.id });
        }

        self.start_page_usage(page);
        for index in 0..count {
            let element = branch_element(self.data, page, index)?;
            self.used.push(element.key);
        }
        self.record_slack(page, true)?;

        for index in 0..count {
            let child = branch_element(self.data, page, index)?.child;
            self.walk_tree(child, depth + 1, kind)?;
        }
        Ok(())
    }

    fn walk_leaf(&mut self, page: &PageView, kind: TreeKind) -> Result<(), BoltError> {
        let count = usize::from(page.header.count);
        self.start_page_usage(page);
        for index in 0..count {
            let element = leaf_element(self.data, page, index)?;
            self.used.push(element.key.start..element.value.end);
        }
        self.record_slack(page, true)?;

        for index in 0..count {
            let element = leaf_element(self.data, page, index)?;
            match kind {
                TreeKind::Root => self.visit_bucket(page.id, index, element)?,
                TreeKind::Bucket => self.visit_entry(page.id, index, element)?,
            }
        }
        Ok(())
    }

    fn visit_entry(
        &mut self,
        page: u64,
        index: usize,
        element: LeafElement,
    ) -> Result<(), BoltError> {
        if element.flags & BUCKET_LEAF_FLAG != 0 {
            return Err(BoltError::NestedBucket { page, index });
        }
        self.values.push(ValueRef {
            key: element.key,
            value: element.value,
        });
        Ok(())
    }

    fn visit_bucket(
        &mut self,
        page: u64,
        index: usize,
        element: LeafElement,
    ) -> Result<(), BoltError> {
        if element.flags & BUCKET_LEAF_FLAG == 0 {
            return Err(BoltError::ValueInRootBucket { page, index });
        }
        let invalid_header = BoltError::InvalidBucketHeader { page, index };
        let value = element.value;
        if value.len() < BUCKET_HEADER_SIZE {
            return Err(invalid_header);
        }
        let root = read_u64(self.data, value.start).ok_or(invalid_header.clone())?;
        let sequence = read_u64(self.data, value.start + 8).ok_or(invalid_header.clone())?;

        let first_entry = self.values.len();
        let inline = root == 0;
        if inline {
            let image = value.start + BUCKET_HEADER_SIZE..value.end;
            self.walk_inline_page(page, image).ok_or(invalid_header)??;
        } else {
            self.walk_tree(root, 0, TreeKind::Bucket)?;
        }

        self.buckets.push(BucketRef {
            name: element.key,
            sequence,
            inline,
            entries: first_entry..self.values.len(),
        });
        Ok(())
    }

    /// Walks an inline bucket's leaf page image. Returns `None` when the
    /// image is too short for a page header.
    fn walk_inline_page(
        &mut self,
        parent: u64,
        image: Range<usize>,
    ) -> Option<Result<(), BoltError>> {
        let header = PageHeader::read(self.data.get(image.clone())?, 0)?;
        if header.flags != LEAF_PAGE {
            return Some(Err(BoltError::UnexpectedPageType {
                page: parent,
                flags: header.flags,
            }));
        }
        let view = PageView {
            id: parent,
            span: image,
            header,
        };
        Some(self.walk_inline_elements(&view))
    }

    fn walk_inline_elements(&mut self, view: &PageView) -> Result<(), BoltError> {
        let count = usize::from(view.header.count);
        self.start_page_usage(view);
        for index in 0..count {
            let element = leaf_element(self.data, view, index)?;
            self.used.push(element.key.start..element.value.end);
        }
        self.record_slack(view, false)?;

        for index in 0..count {
            let element = leaf_element(self.data, view, index)?;
            self.visit_entry(view.id, index, element)?;
        }
        Ok(())
    }

    fn read_freelist(&mut self, id: u64) -> Result<FreelistForm, BoltError> {
        if id == NO_FREELIST {
            return Ok(FreelistForm::NotPersisted);
        }
        let page = page_at(self.data, self.page_size, self.high_water, id)?;
        if page.header.flags != FREELIST_PAGE {
            return Err(BoltError::UnexpectedPageType {
                page: id,
                flags: page.header.flags,
            });
        }
        self.mark_reachable(&page)?;

        let ids =
            freelist_ids(self.data, &page).ok_or(BoltError::TruncatedFreelist { page: id })?;
        let mut free = PageSet::new(self.high_water);
        for offset in ids.clone().step_by(8) {
            let entry =
                read_u64(self.data, offset).ok_or(BoltError::TruncatedFreelist { page: id })?;
            let valid = entry >= 2 && !self.reachable.contains(entry) && free.insert(entry);
            if !valid {
                return Err(BoltError::InvalidFreelistEntry { entry });
            }
        }
        push_range(&mut self.slack, ids.end..page.span.end);

        Ok(FreelistForm::Persisted {
            page: id,
            free_pages: (ids.len() / 8) as u64,
        })
    }

    fn start_page_usage(&mut self, page: &PageView) {
        self.used.clear();
        let elements = usize::from(page.header.count) * ELEMENT_SIZE;
        let end = (page.span.start + PAGE_HEADER_SIZE + elements).min(page.span.end);
        self.used.push(page.span.start..end);
    }

    /// Checks that no two parts of `page` overlap and, when `record` is set,
    /// adds the bytes that no header, element, key or value uses to the slack.
    fn record_slack(&mut self, page: &PageView, record: bool) -> Result<(), BoltError> {
        self.used.sort_unstable_by_key(|range| range.start);
        let mut cursor = page.span.start;
        for index in 0..self.used.len() {
            let used = self.used[index].clone();
            if used.start < cursor {
                return Err(BoltError::OverlappingElements { page: page.id });
            }
            if record && used.start > cursor {
                push_range(&mut self.slack, cursor..used.start);
            }
            cursor = used.end;
        }
        if record {
            push_range(&mut self.slack, cursor..page.span.end);
        }
        Ok(())
    }
}

/// Returns the byte range of a freelist page's id array. A count of 0xFFFF
/// means the real count is stored in the first u64 slot.
fn freelist_ids(data: &[u8], page: &PageView) -> Option<Range<usize>> {
    let mut start = page.span.start + PAGE_HEADER_SIZE;
    let mut count = u64::from(page.header.count);
    if count == 0xFFFF {
        count = read_u64(data, start)?;
        start += 8;
    }
    let len = usize::try_from(count).ok()?.checked_mul(8)?;
    let end = start.checked_add(len)?;
    (end <= page.span.end).then_some(start..end)
}

fn push_range(ranges: &mut Vec<Range<usize>>, range: Range<usize>) {
    if range.is_empty() {
        return;
    }
    match ranges.last_mut() {
        Some(last) if last.end == range.start => last.end = range.end,
        _ => ranges.push(range),
    }
}

/// A set of page ids, as a bitmap sized to the file.
#[derive(Debug, Clone)]
struct PageSet {
    words: Vec<u64>,
    len: u64,
}

impl PageSet {
    fn new(len: u64) -> PageSet {
        PageSet {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// Inserts `id`; returns false if it was present or is out of range.
    fn insert(&mut self, id: u64) -> bool {
        if id >= self.len {
            return false;
        }
        let word = &mut self.words[(id / 64) as usize];
        let bit = 1u64 << (id % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }

    fn contains(&self, id: u64) -> bool {
        id < self.len && self.words[(id / 64) as usize] & (1u64 << (id % 64)) != 0
    }
}
