use thiserror::Error;

/// A structural problem found while reading a BoltDB file.
///
/// Page ids are the file's own `pgid` values. An inline bucket is reported with
/// the id of the leaf page that contains it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BoltError {
    /// The file is shorter than one meta page.
    #[error("file is too small to be a BoltDB file ({len} bytes)")]
    TooSmall {
        /// File length in bytes.
        len: usize,
    },
    /// Neither meta page has the BoltDB magic, version 2 and a matching checksum.
    #[error("no valid meta page: page 0 {first}, page 1 {second}")]
    NoValidMeta {
        /// Reason for rejecting meta page 0.
        first: &'static str,
        /// Reason for rejecting meta page 1.
        second: &'static str,
    },
    /// A page id is outside the file or above the meta page's high-water mark.
    #[error("page {page} is out of bounds")]
    PageOutOfBounds {
        /// The page id that was referenced.
        page: u64,
    },
    /// A page header names another page id than the one it was read at.
    #[error("page {page} has id {found} in its header")]
    PageIdMismatch {
        /// The page id that was read.
        page: u64,
        /// The id stored in the page header.
        found: u64,
    },
    /// A page does not have the type the tree expects at that place.
    #[error("page {page} has unexpected flags {flags:#06x}")]
    UnexpectedPageType {
        /// The page id.
        page: u64,
        /// The flags found in the page header.
        flags: u16,
    },
    /// An element header, key or value reaches past the end of its page.
    #[error("page {page}: element {index} is out of bounds")]
    ElementOutOfBounds {
        /// The page id.
        page: u64,
        /// The element index inside the page.
        index: usize,
    },
    /// A page is referenced twice, either by a cycle or by two parents.
    #[error("page {page} is referenced more than once")]
    PageReferencedTwice {
        /// The page id.
        page: u64,
    },
    /// Two elements, keys or values of one page share bytes.
    #[error("page {page}: elements overlap")]
    OverlappingElements {
        /// The page id.
        page: u64,
    },
    /// A branch page has no elements.
    #[error("branch page {page} is empty")]
    EmptyBranch {
        /// The page id.
        page: u64,
    },
    /// A tree is deeper than any real BoltDB file can be.
    #[error("page {page}: tree is deeper than {max} levels")]
    TreeTooDeep {
        /// The page id where the limit was reached.
        page: u64,
        /// The depth limit.
        max: usize,
    },
    /// The root bucket contains a plain key/value pair.
    #[error("page {page}: element {index} of the root bucket is not a bucket")]
    ValueInRootBucket {
        /// The page id.
        page: u64,
        /// The element index.
        index: usize,
    },
    /// A bucket contains another bucket; Portainer uses top-level buckets only.
    #[error("page {page}: element {index} is a nested bucket, which this tool does not support")]
    NestedBucket {
        /// The page id.
        page: u64,
        /// The element index.
        index: usize,
    },
    /// A bucket entry's value is shorter than the 16-byte bucket header.
    #[error("page {page}: element {index} has an invalid bucket header")]
    InvalidBucketHeader {
        /// The page id.
        page: u64,
        /// The element index.
        index: usize,
    },
    /// The freelist page lists an id that is out of range or also in use.
    #[error("freelist entry {entry} is invalid")]
    InvalidFreelistEntry {
        /// The page id listed in the freelist.
        entry: u64,
    },
    /// The freelist's id array reaches past the end of its page.
    #[error("freelist page {page} is truncated")]
    TruncatedFreelist {
        /// The page id of the freelist.
        page: u64,
    },
}
