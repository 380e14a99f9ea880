//! Readahead of objects about to be read (issue #4 c): the FUSE mount reads a cold folder one
//! message at a time, and each object read through LMDB's map is a synchronous page fault at
//! a random place in `data.mdb` (objects are keyed by content hash). [`Store::prefetch_objects`]
//! looks the next objects up and asks the kernel to start reading their pages
//! (`madvise(MADV_WILLNEED)`): many reads in flight at once, no decryption, and no resident
//! memory (the pages go to the page cache; the advice maps nothing into the process).
//!
//! It is a hint: missing ids are skipped, errors are not reported beyond a count, and one call
//! looks at most [`MAX_OBJECTS`] ids and advises at most [`MAX_BYTES`] bytes.

use super::{Error, Inner, Result, Store, schema};
use crate::crypto::ObjectId;

/// The most ids one call looks up (the rest are ignored).
pub const MAX_OBJECTS: usize = 256;
/// The most bytes of values one call advises (the objects after that are ignored).
pub const MAX_BYTES: usize = 16 << 20;

impl Store {
    /// Starts reading the pages of these objects into the page cache, without waiting for
    /// them and without mapping them into the process. Returns how many objects were found
    /// and advised. Missing ids are skipped; only the first [`MAX_OBJECTS`] ids are looked up
    /// and at most [`MAX_BYTES`] advised.
    pub async fn prefetch_objects(&self, ids: Vec<ObjectId>) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.blocking(move |s| prefetch(s, &ids)).await
    }
}

fn prefetch(s: &Inner, ids: &[ObjectId]) -> Result<usize> {
    let rtxn = s.env.read_txn().map_err(Error::from)?;
    let mut ranges = Vec::with_capacity(ids.len().min(MAX_OBJECTS));
    let mut bytes = 0usize;
    let mut looked = 0u32;
    for id in ids.iter().take(MAX_OBJECTS) {
        looked += 1;
        // The lookup itself reads the B-tree's pages (synchronously); the value's pages are
        // only advised, never touched.
        let Some(value) = s.objects.get(&rtxn, &schema::object_key(id))? else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        bytes = bytes.saturating_add(value.len());
        if bytes > MAX_BYTES {
            break;
        }
        ranges.push((value.as_ptr() as usize, value.len()));
    }
    let advised = s.map.will_need(&ranges);
    drop(rtxn);
    // The lookups mapped B-tree pages: counted like object reads, so that they are given back.
    s.map.looked_up(looked);
    Ok(advised)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SealedObject;

    /// A hint for ids that are not there, garbage, or too many is harmless: nothing fails,
    /// nothing changes, and the objects that are there still read back right.
    #[tokio::test]
    async fn prefetch_of_missing_or_garbage_ids_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sized(dir.path(), 64 << 20).unwrap();
        assert_eq!(store.prefetch_objects(Vec::new()).await.unwrap(), 0);
        let objs: Vec<SealedObject> = (0..8u8)
            .map(|i| SealedObject::seal(&vec![i; 10_000]).unwrap().0)
            .collect();
        let ids = store.put_objects(objs.clone()).await.unwrap();
        let garbage = vec![ObjectId([0; 32]), ObjectId([0xff; 32]), ObjectId([7; 32])];
        assert_eq!(store.prefetch_objects(garbage.clone()).await.unwrap(), 0);
        let mut mixed = garbage;
        mixed.extend(ids.iter().copied());
        assert_eq!(store.prefetch_objects(mixed).await.unwrap(), ids.len());
        // More than the bound: only the first MAX_OBJECTS are looked at.
        let many: Vec<ObjectId> = std::iter::repeat_n(ids[0], MAX_OBJECTS + 100).collect();
        assert_eq!(store.prefetch_objects(many).await.unwrap(), MAX_OBJECTS);
        for (id, obj) in ids.iter().zip(&objs) {
            let got = store.get_object(*id).await.unwrap().unwrap();
            assert_eq!(got.as_bytes(), obj.as_bytes());
        }
        assert_eq!(store.stats().await.unwrap().objects, ids.len() as u64);
    }

    /// A prefetch maps nothing into the process (issue #4, item e): advising 8 MiB of objects
    /// leaves the resident pages of data.mdb where they were, and the objects then read back
    /// right.
    #[tokio::test]
    async fn prefetch_adds_nothing_to_the_resident_set() {
        let dir = tempfile::tempdir().unwrap();
        let (store, objs, ids, file) = crate::store::tests::store_of_8_mib(dir.path()).await;
        let before = crate::store::tests::mapped_kib(&file);
        assert_eq!(
            store.prefetch_objects(ids.clone()).await.unwrap(),
            ids.len()
        );
        let grew = crate::store::tests::mapped_kib(&file).saturating_sub(before);
        assert!(grew < 1024, "data.mdb's resident pages grew by {grew} KiB");
        for (id, obj) in ids.iter().zip(&objs) {
            let got = store.get_object(*id).await.unwrap().unwrap();
            assert_eq!(got.as_bytes(), obj.as_bytes());
        }
    }

    /// Large objects: the byte bound stops the advice.
    #[tokio::test]
    async fn prefetch_stops_at_the_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sized(dir.path(), 256 << 20).unwrap();
        let objs: Vec<SealedObject> = (0..4u8)
            .map(|i| SealedObject::seal(&vec![i; 5 << 20]).unwrap().0)
            .collect();
        let ids = store.put_objects(objs).await.unwrap();
        // 5 MiB each: three fit in MAX_BYTES (16 MiB), the fourth does not.
        assert_eq!(store.prefetch_objects(ids).await.unwrap(), 3);
    }
}
