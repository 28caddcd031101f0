//! Reads and writes BoltDB (bbolt) files, the database format of Portainer,
//! without the bbolt library.
//!
//! The format follows bbolt 1.3 on little-endian machines. A file has two meta
//! pages with an FNV-1a checksum, branch and leaf pages with 16-byte element
//! headers, overflow runs and inline buckets. Its freelist is either persisted
//! on a page or not persisted at all (`NoFreelistSync`).
//!
//! [`parse`] works on a byte slice and returns byte ranges into it. It checks
//! every offset, length and page id before use, so on hostile or damaged input
//! it returns a [`BoltError`] instead of panicking or reading out of bounds.
//! Every range in a [`Layout`] lies inside the slice it was parsed from. The
//! repository's `bolt_parse` fuzz target checks both on mutated bbolt files.
//!
//! The crate does not open, map or lock files, does not decrypt values
//! (Portainer's AES-GCM values are opaque bytes here), and rejects nested
//! buckets, which Portainer does not create. It updates no file in place:
//! [`write_database`] writes a fresh, compact file, and [`write_meta_page`]
//! rewrites one meta page of an existing image.

mod error;
mod meta;
mod page;
mod walk;
mod write;

pub use error::BoltError;
pub use meta::{
    FORMAT_VERSION, MAGIC, MAX_PAGE_SIZE, MIN_PAGE_SIZE, Meta, NO_FREELIST, SkippedMeta,
};
pub use walk::{BucketRef, FreelistForm, Layout, ValueRef, parse};
pub use write::{
    MAX_KEY_SIZE, MAX_VALUE_SIZE, WriteBucket, WriteEntry, WriteError, write_database,
    write_meta_page,
};

#[cfg(test)]
mod tests;
