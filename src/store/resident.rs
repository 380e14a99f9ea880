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
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Object reads between two releases of the whole map.
const READS_PER_SWEEP: u32 = 64;
/// The unit of [`Map::will_need`]'s readahead (a power of two): objects stored at the same
/// time sit next to each other in the file, and a folder's messages were mostly stored
/// together (an import, a day's mail), so the chunk around one object often holds the next
/// ones; a larger chunk reads more that no one asked for where they were not.
pub const CHUNK: usize = 256 << 10;
/// Records written (put, deleted) between two releases of the whole map: a write
/// transaction reads the B-tree paths it copies through the map. Counted by record, not by
/// transaction: a batch of 256 deliveries is one transaction of ~1,500 records, and 32 of
/// them between sweeps left ~80 MiB of the file mapped (the mount's RSS peaked at 209 MiB).
const WRITES_PER_SWEEP: u32 = 256;

/// The address range of the environment's map.
#[derive(Debug)]
pub struct Map {
    start: usize,
    len: usize,
    /// Object reads since the last sweep.
    reads: AtomicU32,
    /// Write transactions since the last sweep.
    writes: AtomicU32,
    /// The kernel's read-around was switched off ([`Map::will_need`]).
    random: AtomicBool,
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
            random: AtomicBool::new(false),
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
                random: AtomicBool::new(false),
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

    /// After `n` object lookups that read no value (a prefetch, `prefetch.rs`): counted as
    /// object reads, the mapping dropped when they cross a multiple of [`READS_PER_SWEEP`].
    pub fn looked_up(&self, n: u32) {
        if n == 0 {
            return;
        }
        let before = self.reads.fetch_add(n, Ordering::Relaxed);
        if before / READS_PER_SWEEP != before.wrapping_add(n) / READS_PER_SWEEP {
            self.release_all();
        }
    }

    /// After a write transaction of `records` records committed: drops the mapping of the
    /// whole map when the count crosses a multiple of [`WRITES_PER_SWEEP`] (so after every
    /// large transaction, and after every few dozen small ones).
    pub fn wrote(&self, records: u32) {
        let records = records.max(1);
        let before = self.writes.fetch_add(records, Ordering::Relaxed);
        if before / WRITES_PER_SWEEP != before.wrapping_add(records) / WRITES_PER_SWEEP {
            self.release_all();
        }
    }

    /// Asks the kernel to start reading the pages of these ranges (values inside the map),
    /// each widened to the [`CHUNK`] around it, into the page cache (`madvise(MADV_WILLNEED)`,
    /// for `prefetch.rs`): the call does not wait for the disk and maps nothing into the
    /// process. Returns how many ranges were advised (none outside the map, or when the map
    /// was not found).
    ///
    /// The first call also switches off the kernel's read-around for the map
    /// (`MADV_RANDOM`): without it every page fault of a cold lookup reads the device's whole
    /// readahead window (`read_ahead_kb`, 8 MiB on the benchmark's disk) around the B-tree
    /// page, which in a store of random-keyed objects is mostly pages no one asked for. A
    /// process that prefetches says what it will read instead.
    pub fn will_need(&self, ranges: &[(usize, usize)]) -> usize {
        if self.len == 0 {
            return 0;
        }
        if !self.random.swap(true, Ordering::Relaxed) {
            // SAFETY: the whole map: see `advise`. MADV_RANDOM only changes the kernel's
            // readahead policy for this mapping.
            unsafe {
                libc::madvise(self.start as *mut libc::c_void, self.len, libc::MADV_RANDOM);
            }
        }
        let align = CHUNK.max(page_size());
        let mut spans: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for &(start, len) in ranges {
            let Some(end) = start.checked_add(len) else {
                continue;
            };
            if len == 0 || start < self.start || end > self.start + self.len {
                continue;
            }
            let from = (start - self.start) & !(align - 1);
            let to = (end - self.start).div_ceil(align).saturating_mul(align);
            spans.push((from, to.min(self.len)));
        }
        let advised = spans.len();
        // Neighbouring objects (stored at the same time) share chunks: one call per run.
        spans.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (a, b) in spans {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        for (a, b) in merged {
            // SAFETY: [start + a, start + b) is page-aligned and inside LMDB's map (checked
            // above), a read-only MAP_SHARED file mapping that lives as long as the
            // environment. For such a mapping MADV_WILLNEED only starts readahead of the
            // file's pages into the page cache: it changes no memory and maps no page.
            unsafe {
                libc::madvise(
                    (self.start + a) as *mut libc::c_void,
                    b - a,
                    libc::MADV_WILLNEED,
                );
            }
        }
        advised
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

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    match usize::try_from(p) {
        Ok(p) if p.is_power_of_two() => p,
        _ => 4096,
    }
}
