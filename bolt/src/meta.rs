//! Meta pages: the two roots of a BoltDB file.

use super::error::BoltError;
use super::page::{META_PAGE, PAGE_HEADER_SIZE, read_u32, read_u64};

/// Magic number at the start of every meta page.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The only file format version bbolt writes.
pub const FORMAT_VERSION: u32 = 2;
/// `freelist` value of a meta page whose freelist is not persisted.
pub const NO_FREELIST: u64 = u64::MAX;
/// Smallest page size this tool accepts, in bytes.
pub const MIN_PAGE_SIZE: usize = 1024;
/// Largest page size this tool accepts, in bytes (64 KiB, the largest kernel
/// page size bbolt picks by default).
pub const MAX_PAGE_SIZE: usize = 65536;

/// Encoded size of a meta record, checksum included.
pub(crate) const META_SIZE: usize = 64;
/// Bytes covered by the checksum: every field before it.
const CHECKSUMMED_SIZE: usize = 56;

/// A decoded meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Page size in bytes.
    pub page_size: u32,
    /// Meta flags (unused by bbolt, kept as found).
    pub flags: u32,
    /// Page id of the root bucket's tree.
    pub root: u64,
    /// Sequence counter of the root bucket.
    pub root_sequence: u64,
    /// Page id of the freelist, or [`NO_FREELIST`].
    pub freelist: u64,
    /// High-water mark: the first page id never allocated.
    pub high_water: u64,
    /// Id of the transaction that wrote this meta page.
    pub txid: u64,
}

impl Meta {
    /// Decodes and validates a meta record (the 64 bytes after the page header).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Meta, &'static str> {
        let field32 = |offset| read_u32(bytes, offset).ok_or("is truncated");
        let field64 = |offset| read_u64(bytes, offset).ok_or("is truncated");

        if field32(0)? != MAGIC {
            return Err("has no BoltDB magic");
        }
        if field32(4)? != FORMAT_VERSION {
            return Err("has an unsupported version");
        }
        let checksum = field64(CHECKSUMMED_SIZE)?;
        if checksum != fnv1a64(&bytes[..CHECKSUMMED_SIZE]) {
            return Err("has a wrong checksum");
        }

        Ok(Meta {
            page_size: field32(8)?,
            flags: field32(12)?,
            root: field64(16)?,
            root_sequence: field64(24)?,
            freelist: field64(32)?,
            high_water: field64(40)?,
            txid: field64(48)?,
        })
    }

    /// Encodes this meta record with a fresh checksum.
    pub(crate) fn encode(&self) -> [u8; META_SIZE] {
        let mut out = [0u8; META_SIZE];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.root.to_le_bytes());
        out[24..32].copy_from_slice(&self.root_sequence.to_le_bytes());
        out[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        out[40..48].copy_from_slice(&self.high_water.to_le_bytes());
        out[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let checksum = fnv1a64(&out[..CHECKSUMMED_SIZE]);
        out[CHECKSUMMED_SIZE..].copy_from_slice(&checksum.to_le_bytes());
        out
    }

    /// Checks the fields that point into the file against its length.
    fn check_bounds(&self, file_len: usize) -> Result<(), &'static str> {
        let page_size = self.page_size as usize;
        let file_pages = (file_len / page_size) as u64;
        if self.high_water < 3 || self.high_water > file_pages {
            return Err("has a high-water mark outside the file");
        }
        if self.root < 2 || self.root >= self.high_water {
            return Err("has a root page out of bounds");
        }
        let freelist_ok =
            self.freelist == NO_FREELIST || (self.freelist >= 2 && self.freelist < self.high_water);
        if !freelist_ok {
            return Err("has a freelist page out of bounds");
        }
        Ok(())
    }
}

/// FNV-1a, 64 bit: bbolt's meta page checksum.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The meta page a reader must use, with the page size it implies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ActiveMeta {
    pub(crate) meta: Meta,
    /// 0 or 1: the page the meta was read from.
    pub(crate) page: u64,
    pub(crate) page_size: usize,
    /// The other meta page, when its checksum is valid and its txid newer but
    /// it cannot be used: the file lost its newest transaction.
    pub(crate) skipped_newer: Option<SkippedMeta>,
}

/// A meta page with a valid checksum and a newer txid that was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkippedMeta {
    /// Page id, 0 or 1.
    pub page: u64,
    /// Its transaction id.
    pub txid: u64,
    /// Reason it was not used, such as "has a root page out of bounds".
    pub reason: &'static str,
}

/// Picks the valid meta page with the higher txid, as bbolt does.
///
/// The page size comes from meta page 0. When page 0 is damaged, every
/// supported page size is tried for meta page 1.
pub(crate) fn select_meta(data: &[u8]) -> Result<ActiveMeta, BoltError> {
    if data.len() < PAGE_HEADER_SIZE + META_SIZE {
        return Err(BoltError::TooSmall { len: data.len() });
    }

    let first = decode_meta_page(data, 0, None);
    let page_size = match first {
        Ok(meta) => Some(meta.page_size as usize),
        Err(_) => None,
    };
    let second = match page_size {
        Some(size) => decode_meta_page(data, size, Some(size)),
        None => find_second_meta(data),
    };

    match (first, second) {
        (Ok(a), Ok(b)) if b.txid > a.txid => Ok(active(b, 1, None)),
        (Ok(a), Ok(_)) => Ok(active(a, 0, None)),
        (Ok(a), Err(reason)) => {
            let skipped = skipped_newer(data, a.page_size as usize, 1, reason, a.txid);
            Ok(active(a, 0, skipped))
        }
        (Err(reason), Ok(b)) => {
            let skipped = skipped_newer(data, 0, 0, reason, b.txid);
            Ok(active(b, 1, skipped))
        }
        (Err(first), Err(second)) => Err(BoltError::NoValidMeta { first, second }),
    }
}

fn active(meta: Meta, page: u64, skipped_newer: Option<SkippedMeta>) -> ActiveMeta {
    ActiveMeta {
        meta,
        page,
        page_size: meta.page_size as usize,
        skipped_newer,
    }
}

/// Describes the rejected meta page at `offset` when its checksum is valid
/// and its txid is newer than `used_txid`. A torn write leaves a bad checksum
/// instead, which bbolt also skips without loss.
fn skipped_newer(
    data: &[u8],
    offset: usize,
    page: u64,
    reason: &'static str,
    used_txid: u64,
) -> Option<SkippedMeta> {
    let start = offset + PAGE_HEADER_SIZE;
    let meta = Meta::decode(data.get(start..start + META_SIZE)?).ok()?;
    (meta.txid > used_txid).then_some(SkippedMeta {
        page,
        txid: meta.txid,
        reason,
    })
}

fn find_second_meta(data: &[u8]) -> Result<Meta, &'static str> {
    let mut size = MIN_PAGE_SIZE;
    while size <= MAX_PAGE_SIZE {
        if let Ok(meta) = decode_meta_page(data, size, Some(size)) {
            return Ok(meta);
        }
        size *= 2;
    }
    Err("is not valid at any supported page size")
}

/// Decodes the meta page at `offset`, requiring `expected_page_size` if given.
fn decode_meta_page(
    data: &[u8],
    offset: usize,
    expected_page_size: Option<usize>,
) -> Result<Meta, &'static str> {
    let start = offset + PAGE_HEADER_SIZE;
    let bytes = data.get(start..start + META_SIZE).ok_or("is truncated")?;
    let flags = super::page::read_u16(data, offset + 8).ok_or("is truncated")?;
    if flags != META_PAGE {
        return Err("is not a meta page");
    }

    let meta = Meta::decode(bytes)?;
    let size = meta.page_size as usize;
    let supported = size.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&size);
    if !supported {
        return Err("has an unsupported page size");
    }
    if expected_page_size.is_some_and(|expected| expected != size) {
        return Err("disagrees with meta page 0 about the page size");
    }
    meta.check_bounds(data.len())?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Meta {
        Meta {
            page_size: 4096,
            flags: 0,
            root: 3,
            root_sequence: 0,
            freelist: 2,
            high_water: 4,
            txid: 7,
        }
    }

    #[test]
    fn fnv1a64_matches_published_values() {
        // Reference values from the FNV specification's test suite.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn meta_round_trips() {
        let meta = sample();
        assert_eq!(Meta::decode(&meta.encode()), Ok(meta));
    }

    #[test]
    fn meta_with_flipped_bit_is_rejected() {
        let encoded = sample().encode();
        for index in 0..META_SIZE {
            let mut damaged = encoded;
            damaged[index] ^= 0x01;
            assert!(Meta::decode(&damaged).is_err(), "byte {index}");
        }
    }
}
