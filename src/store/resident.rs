//! Giving back the process's mapping of LMDB pages it is done with.
//!
//! LMDB reads through a read-only shared memory map of `data.mdb`. Every page a read touches
//! stays mapped, and the kernel maps the cached pages around a faulting one too (fault-around,
//! 64 KiB), so each page counts in the process's resident set until the process ends: a mount
//! that had read 10,000 messages of a 100,000-message store held 200 MiB of the file. The
//! pages are the kernel's page cache, reclaimable, but the resident set is what users and the
//! benchmark target see. [`Map`] drops the mapping of the whole map every so many object reads
//! and write transactions, and after bulk reads (`madvise(MADV_DONTNEED)`): the pages stay in
//! the page cache, and a later read maps them again (a minor fault). Only the mapping is dropped, never data: LMDB's map is
//! read-only (no `MDB_WRITEMAP`), so it never holds anything the file does not.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// Object reads between two releases of the whole map.
const READS_PER_SWEEP: u32 = 64;
/// Write transactions between two releases of the whole map (each reads the B-tree paths it
/// copies through the map: 2,000 deliveries left 78 MiB of the file mapped).
const WRITES_PER_SWEEP: u32 = 32;

/// The address range of the environment's map.
#[derive(Debug)]
pub struct Map {
    start: usize,
    len: usize,
    /// Object reads since the last sweep.
    reads: AtomicU32,
    /// Write transactions since the last sweep.
    writes: AtomicU32,
}

impl Map {
    /// The map of `file` (LMDB's `data.mdb`), found in `/proc/self/maps` (LMDB does not tell
    /// where it mapped the file). An empty range (nothing is ever released) if not found.
    pub fn find(file: &Path) -> Map {
        let none = Map {
            start: 0,
            len: 0,
            reads: AtomicU32::new(0),
            writes: AtomicU32::new(0),
        };
        let Ok(file) = std::fs::canonicalize(file) else {
            return none;
        };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return none;
        };
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for line in maps.lines() {
            // "start-end perms offset dev inode   path"
            let mut parts = line.splitn(6, ' ');
            let (Some(addrs), Some(path)) = (parts.next(), parts.nth(4)) else {
                continue;
            };
            if Path::new(path.trim_start()) != file {
                continue;
            }
            let Some((a, b)) = addrs.split_once('-') else {
                continue;
            };
            let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            ranges.push((a, b));
        }
        // One map, possibly listed in several adjacent pieces. Anything else (the file mapped
        // twice, with other memory between): nothing is released, rather than advise memory
        // that is not LMDB's.
        ranges.sort_unstable();
        let contiguous = ranges.windows(2).all(|w| w[0].1 == w[1].0);
        let range = match (ranges.first(), ranges.last()) {
            (Some(first), Some(last)) if contiguous => Some((first.0, last.1)),
            _ => None,
        };
        match range {
            Some((a, b)) if b > a => Map {
                start: a,
                len: b - a,
                reads: AtomicU32::new(0),
                writes: AtomicU32::new(0),
            },
            _ => none,
        }
    }

    /// Bytes covered (0: the map was not found).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// After an object read: every [`READS_PER_SWEEP`] of them, drops the mapping of the
    /// whole map (the value's pages, the B-tree pages the lookup went through and the 64 KiB
    /// around each; with reads spread over 100k messages that was 10 KiB per message read).
    /// Once per read, dropping just the value's window, cost a system call and a TLB flush
    /// per message for no smaller resident set.
    pub fn object_read(&self) {
        if self.reads.fetch_add(1, Ordering::Relaxed) % READS_PER_SWEEP == READS_PER_SWEEP - 1 {
            self.release_all();
        }
    }

    /// After a write transaction committed: every [`WRITES_PER_SWEEP`] of them, drops the
    /// mapping of the whole map.
    pub fn wrote(&self) {
        if self.writes.fetch_add(1, Ordering::Relaxed) % WRITES_PER_SWEEP == WRITES_PER_SWEEP - 1 {
            self.release_all();
        }
    }

    /// Drops the mapping of the whole map (after a bulk read, such as replaying the logs).
    pub fn release_all(&self) {
        if self.start != 0 {
            self.advise(self.start, self.start + self.len);
        }
    }

    fn advise(&self, from: usize, to: usize) {
        if to <= from {
            return;
        }
        // SAFETY: [from, to) is LMDB's map (page-aligned, as every mapping), a read-only MAP_SHARED file mapping that
        // lives as long as the environment (which outlives `self`, held beside it). For such
        // a mapping MADV_DONTNEED only removes page-table entries: a later access (LMDB's, or
        // a slice still borrowed by a reader) faults the same file page back in, unchanged.
        unsafe {
            libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED);
        }
    }
}
