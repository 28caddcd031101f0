//! Page headers and the elements of branch and leaf pages.

use std::ops::Range;

use super::error::BoltError;

pub(crate) const PAGE_HEADER_SIZE: usize = 16;
/// Size of one leaf or branch element header.
pub(crate) const ELEMENT_SIZE: usize = 16;
/// Size of the header at the start of a bucket entry's value.
pub(crate) const BUCKET_HEADER_SIZE: usize = 16;

pub(crate) const BRANCH_PAGE: u16 = 0x01;
pub(crate) const LEAF_PAGE: u16 = 0x02;
pub(crate) const META_PAGE: u16 = 0x04;
pub(crate) const FREELIST_PAGE: u16 = 0x10;
/// Leaf element flag of a bucket entry.
pub(crate) const BUCKET_LEAF_FLAG: u32 = 0x01;

pub(crate) fn read_u16(bytes: &[u8], offset: usize) -> Option<u16> {
    let raw = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes(raw.try_into().ok()?))
}

pub(crate) fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let raw = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

pub(crate) fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    let raw = bytes.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

/// A page header: `id u64, flags u16, count u16, overflow u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageHeader {
    pub(crate) id: u64,
    pub(crate) flags: u16,
    pub(crate) count: u16,
    pub(crate) overflow: u32,
}

impl PageHeader {
    pub(crate) fn read(bytes: &[u8], offset: usize) -> Option<PageHeader> {
        Some(PageHeader {
            id: read_u64(bytes, offset)?,
            flags: read_u16(bytes, offset + 8)?,
            count: read_u16(bytes, offset + 10)?,
            overflow: read_u32(bytes, offset + 12)?,
        })
    }

    pub(crate) fn write(&self, bytes: &mut [u8]) {
        bytes[0..8].copy_from_slice(&self.id.to_le_bytes());
        bytes[8..10].copy_from_slice(&self.flags.to_le_bytes());
        bytes[10..12].copy_from_slice(&self.count.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.overflow.to_le_bytes());
    }
}

/// A page in the file, or an inline bucket's page image inside a value.
#[derive(Debug, Clone)]
pub(crate) struct PageView {
    /// Page id used in error messages; for an inline page, its parent's id.
    pub(crate) id: u64,
    /// Byte range of the whole node, overflow pages included.
    pub(crate) span: Range<usize>,
    pub(crate) header: PageHeader,
}

/// Locates page `id`, checking that its whole span lies inside the file and
/// below the high-water mark, and that its header carries the same id.
pub(crate) fn page_at(
    data: &[u8],
    page_size: usize,
    high_water: u64,
    id: u64,
) -> Result<PageView, BoltError> {
    let out_of_bounds = BoltError::PageOutOfBounds { page: id };
    if id < 2 || id >= high_water {
        return Err(out_of_bounds);
    }
    let start = usize::try_from(id)
        .ok()
        .and_then(|id| id.checked_mul(page_size))
        .ok_or(out_of_bounds.clone())?;
    let header = PageHeader::read(data, start).ok_or(out_of_bounds.clone())?;
    if header.id != id {
        return Err(BoltError::PageIdMismatch {
            page: id,
            found: header.id,
        });
    }

    let pages = u64::from(header.overflow) + 1;
    let last = id.checked_add(pages).ok_or(out_of_bounds.clone())?;
    let end = (pages as usize)
        .checked_mul(page_size)
        .and_then(|len| start.checked_add(len))
        .ok_or(out_of_bounds.clone())?;
    if last > high_water || end > data.len() {
        return Err(out_of_bounds);
    }
    Ok(PageView {
        id,
        span: start..end,
        header,
    })
}

/// Leaf element: flags and the absolute byte ranges of its key and value.
#[derive(Debug, Clone)]
pub(crate) struct LeafElement {
    pub(crate) flags: u32,
    pub(crate) key: Range<usize>,
    pub(crate) value: Range<usize>,
}

/// Branch element: the absolute byte range of its key and the child page id.
#[derive(Debug, Clone)]
pub(crate) struct BranchElement {
    pub(crate) key: Range<usize>,
    pub(crate) child: u64,
}

fn element_address(page: &PageView, index: usize) -> Option<usize> {
    let address = page
        .span
        .start
        .checked_add(PAGE_HEADER_SIZE)?
        .checked_add(index.checked_mul(ELEMENT_SIZE)?)?;
    (address.checked_add(ELEMENT_SIZE)? <= page.span.end).then_some(address)
}

/// Returns `address + offset .. + len` if it lies inside the page.
fn range_in_page(page: &PageView, start: usize, len: u32) -> Option<Range<usize>> {
    let end = start.checked_add(len as usize)?;
    (start >= page.span.start && end <= page.span.end).then_some(start..end)
}

/// Reads leaf element `index`; `pos` is relative to the element's own address.
pub(crate) fn leaf_element(
    data: &[u8],
    page: &PageView,
    index: usize,
) -> Result<LeafElement, BoltError> {
    let parse = || {
        let address = element_address(page, index)?;
        let flags = read_u32(data, address)?;
        let pos = read_u32(data, address + 4)? as usize;
        let key_size = read_u32(data, address + 8)?;
        let value_size = read_u32(data, address + 12)?;
        let key = range_in_page(page, address.checked_add(pos)?, key_size)?;
        let value = range_in_page(page, key.end, value_size)?;
        Some(LeafElement { flags, key, value })
    };
    parse().ok_or(BoltError::ElementOutOfBounds {
        page: page.id,
        index,
    })
}

/// Reads branch element `index`.
pub(crate) fn branch_element(
    data: &[u8],
    page: &PageView,
    index: usize,
) -> Result<BranchElement, BoltError> {
    let parse = || {
        let address = element_address(page, index)?;
        let pos = read_u32(data, address)? as usize;
        let key_size = read_u32(data, address + 4)?;
        let child = read_u64(data, address + 8)?;
        let key = range_in_page(page, address.checked_add(pos)?, key_size)?;
        Some(BranchElement { key, child })
    };
    parse().ok_or(BoltError::ElementOutOfBounds {
        page: page.id,
        index,
    })
}
