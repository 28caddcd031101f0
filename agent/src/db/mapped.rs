//! Read-only memory maps of database files, as bbolt itself uses.
//!
//! A map lets the tools parse a file of any size and stream it into a copy
//! without first copying it into a buffer of its own size. Large buffers cost
//! more than the copy suggests: the kernel zeroes every fresh page, and data
//! that does not fit in the CPU cache crosses the memory bus twice more.

#![allow(
    unsafe_code,
    reason = "mapping a file is unsafe in memmap2; the safety argument is on Mapped::new"
)]

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::ops::Deref;

use memmap2::Mmap;

/// The bytes of a file, mapped read-only. An empty file has no mapping,
/// because `mmap` rejects zero-length maps. The map borrows the open file, so
/// a lock held through that file outlives the map.
#[derive(Debug)]
pub(crate) struct Mapped<'file> {
    map: Option<Mmap>,
    file: PhantomData<&'file File>,
}

impl<'file> Mapped<'file> {
    /// Maps `file`, which must be open for reading. Pages are faulted in on
    /// first access, and the kernel maps several neighbours per fault.
    ///
    /// The caller must hold bbolt's `flock` on the file, or have created the
    /// file itself, for as long as the map lives.
    pub(crate) fn new(file: &'file File) -> io::Result<Mapped<'file>> {
        if file.metadata()?.len() == 0 {
            return Ok(Mapped {
                map: None,
                file: PhantomData,
            });
        }
        // SAFETY: a map is only sound while no other process writes or
        // truncates the file. Callers hold bbolt's flock, which Portainer and
        // every bbolt program take before writing, or map a temporary copy
        // they created with O_EXCL. A process that ignores the lock and
        // truncates the file makes a read past the new end raise SIGBUS,
        // which ends this process before any rename. The original file then
        // stays in place. Every offset the reader takes from the file is
        // checked against the length fixed here.
        let map = unsafe { Mmap::map(file)? };
        Ok(Mapped {
            map: Some(map),
            file: PhantomData,
        })
    }
}

impl Deref for Mapped<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn maps_the_file_bytes() {
        let mut file = tempfile::tempfile().expect("temporary file");
        file.write_all(b"bolt page bytes").expect("write");
        let mapped = Mapped::new(&file).expect("map");
        assert_eq!(&*mapped, b"bolt page bytes");
    }

    #[test]
    fn empty_file_maps_to_no_bytes() {
        let file = tempfile::tempfile().expect("temporary file");
        let mapped = Mapped::new(&file).expect("map");
        assert!(mapped.is_empty());
    }
}
