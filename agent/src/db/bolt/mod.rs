//! Reading and writing BoltDB (bbolt) files without the bbolt library.
//!
//! The format follows bbolt 1.3 on little-endian machines. A file has two meta
//! pages with an FNV-1a checksum, branch and leaf pages with 16-byte element
//! headers, overflow runs and inline buckets. Its freelist is either persisted
//! on a page or not persisted at all (`NoFreelistSync`).

mod error;
mod meta;
mod page;
mod walk;
mod write;

pub use error::BoltError;
pub use meta::{FORMAT_VERSION, MAGIC, MAX_PAGE_SIZE, MIN_PAGE_SIZE, Meta, NO_FREELIST};
pub use walk::{BucketRef, FreelistForm, Layout, ValueRef, parse};
pub use write::{
    MAX_KEY_SIZE, MAX_VALUE_SIZE, WriteBucket, WriteEntry, WriteError, write_database,
};

pub(crate) use write::write_meta_page;

#[cfg(test)]
mod tests;
