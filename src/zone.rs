//! The permit store: a hash table of permits laid out in a shared-memory zone.
//!
//! The table and its permits live in memory that every worker maps at the same address, so
//! they are linked with raw pointers, as nginx's own shared zones are. Each permit is one
//! allocation holding its header and the whole key, so a lookup touches one bucket slot and
//! the permits in that bucket's chain, and nothing else.
//!
//! The memory and the lock come from a [`Shared`] region: nginx's slab pool and its `ngx_shmtx`
//! in a worker (see `slab.rs`), the heap and a `Mutex` in the unit tests below. Everything here
//! runs under that lock, so the pointer code only has to be right for one writer at a time.

use core::hash::Hasher;
use core::mem::size_of;
use core::ptr::{self, NonNull};

use siphasher::sip::SipHasher13;

use crate::sale::{Admission, Cap, Lookup, PermitStore};

/// Allocation inside a locked region.
pub trait Arena {
    /// Allocates `size` bytes aligned for a pointer, or `None` when the region is full.
    fn alloc(&self, size: usize) -> Option<NonNull<u8>>;
}

/// A region of shared memory with a lock; locking yields the region's arena.
pub trait Shared {
    type Locked<'a>: Arena
    where
        Self: 'a;
    fn lock(&self) -> Self::Locked<'_>;
}

/// Tells a table laid out by one build of the module from one it cannot read, so that a
/// reload with a changed layout fails loudly instead of reading garbage.
const LAYOUT_MAGIC: u64 = 0x464c_5348_5341_4c01; // "FLSHSAL" + version 1

/// The table's header, at the start of the zone's first allocation; the buckets follow it.
#[repr(C)]
pub struct PermitTable {
    magic: u64,
    /// SipHash key, random per zone, so that nobody can choose keys that share a bucket.
    sip_key: [u64; 2],
    /// Permits stored now; compared with the cap.
    permits: u64,
    /// The number the next permit gets (1, 2, 3 ... in the order of admission).
    next_seq: u64,
    /// Set when an allocation first fails, so that "zone is full" is logged once.
    full_reported: u64,
    /// The key expression the zone was declared with, kept in the zone itself so that a reload
    /// can refuse a changed key without reading the previous cycle's configuration.
    key_spec: *const u8,
    key_spec_len: usize,
    mask: u64,
}

/// One permit: this header, then `key_len` bytes of key.
#[repr(C)]
struct Permit {
    next: *mut Permit,
    hash: u64,
    seq: u64,
    granted_ms: i64,
    key_len: u32,
}

/// Bytes of zone memory a permit's allocation asks for, before the allocator rounds it up.
pub const fn permit_size(key_len: usize) -> usize {
    size_of::<Permit>() + key_len
}

/// One bucket per 128 bytes of zone, rounded down to a power of two: a zone filled with
/// permits of typical keys then has chains of one or two.
pub fn bucket_count(zone_size: usize) -> usize {
    let wanted = (zone_size / 128).max(16);
    1 << (usize::BITS - 1 - wanted.leading_zeros())
}

impl PermitTable {
    /// Lays out an empty table with `buckets` (a power of two) empty chains for a zone whose
    /// key expression is `key_spec`.
    pub fn create(
        arena: &impl Arena,
        buckets: usize,
        sip_key: [u64; 2],
        key_spec: &[u8],
    ) -> Option<NonNull<Self>> {
        debug_assert!(buckets.is_power_of_two());
        let bytes =
            size_of::<Self>().checked_add(buckets.checked_mul(size_of::<*mut Permit>())?)?;
        let spec = arena.alloc(key_spec.len().max(1))?;
        let table = arena.alloc(bytes)?.cast::<Self>();
        // SAFETY: the arena returned `bytes` writable, pointer-aligned bytes: room for the
        // header and the bucket array right after it, which we initialise here in full; `spec`
        // has room for the key expression.
        unsafe {
            ptr::copy_nonoverlapping(key_spec.as_ptr(), spec.as_ptr(), key_spec.len());
            table.as_ptr().write(PermitTable {
                magic: LAYOUT_MAGIC,
                sip_key,
                permits: 0,
                next_seq: 1,
                full_reported: 0,
                key_spec: spec.as_ptr(),
                key_spec_len: key_spec.len(),
                mask: buckets as u64 - 1,
            });
            let first = table.as_ptr().add(1).cast::<*mut Permit>();
            for i in 0..buckets {
                first.add(i).write(ptr::null_mut());
            }
        }
        Some(table)
    }

    /// Whether this table was laid out by this build of the module.
    pub fn is_compatible(&self) -> bool {
        self.magic == LAYOUT_MAGIC
    }

    /// Permits stored now.
    pub fn permits(&self) -> u64 {
        self.permits
    }

    /// The key expression the zone was created with.
    pub fn key_spec(&self) -> &[u8] {
        // SAFETY: `create` copied `key_spec_len` bytes there, and they never change.
        unsafe { core::slice::from_raw_parts(self.key_spec, self.key_spec_len) }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.sip_key[0], self.sip_key[1]);
        h.write(key);
        h.finish()
    }

    fn bucket(&mut self, hash: u64) -> *mut *mut Permit {
        let index = (hash & self.mask) as usize;
        // SAFETY: `index <= mask`, and `create` laid out `mask + 1` buckets right after the
        // header this `&mut self` points to.
        unsafe { (self as *mut Self).add(1).cast::<*mut Permit>().add(index) }
    }

    fn find(&mut self, hash: u64, key: &[u8]) -> Option<NonNull<Permit>> {
        // SAFETY: every chain is null-terminated and every link points to a permit written in
        // full by `insert`, whose key bytes follow its header; the caller holds the lock.
        unsafe {
            let mut p = *self.bucket(hash);
            while let Some(permit) = p.as_ref() {
                if permit.hash == hash
                    && permit.key_len as usize == key.len()
                    && permit_key(p) == key
                {
                    return NonNull::new(p);
                }
                p = permit.next;
            }
        }
        None
    }

    fn insert(&mut self, arena: &impl Arena, hash: u64, key: &[u8], now_ms: i64) -> Option<u64> {
        let key_len = u32::try_from(key.len()).ok()?;
        let memory = arena.alloc(permit_size(key.len()))?;
        let permit = memory.cast::<Permit>().as_ptr();
        let seq = self.next_seq;
        let bucket = self.bucket(hash);
        // SAFETY: the arena gave us `permit_size(key.len())` pointer-aligned bytes: the header
        // and the key after it. The bucket slot is valid (see `bucket`); linking at the head
        // keeps every chain null-terminated.
        unsafe {
            permit.write(Permit { next: *bucket, hash, seq, granted_ms: now_ms, key_len });
            ptr::copy_nonoverlapping(key.as_ptr(), permit.add(1).cast::<u8>(), key.len());
            *bucket = permit;
        }
        self.next_seq += 1;
        self.permits += 1;
        Some(seq)
    }

    fn under_cap(&self, cap: Cap) -> bool {
        cap.is_none_or(|cap| self.permits < cap)
    }
}

/// The key bytes that follow a permit's header.
///
/// # Safety
/// `p` points to a permit written by `PermitTable::insert`, and the zone's lock is held.
unsafe fn permit_key<'a>(p: *const Permit) -> &'a [u8] {
    // SAFETY: `insert` copied `key_len` bytes right after the header.
    unsafe { core::slice::from_raw_parts(p.add(1).cast::<u8>(), (*p).key_len as usize) }
}

/// A table and the region it lives in, as the decision sees it: each call takes the lock once.
pub struct ZoneStore<'a, S: Shared> {
    shared: &'a S,
    table: NonNull<PermitTable>,
    now_ms: i64,
    newly_full: bool,
}

impl<'a, S: Shared> ZoneStore<'a, S> {
    /// # Safety
    /// `table` was created by [`PermitTable::create`] inside `shared`, and stays mapped for `'a`.
    pub unsafe fn new(shared: &'a S, table: NonNull<PermitTable>, now_ms: i64) -> Self {
        ZoneStore { shared, table, now_ms, newly_full: false }
    }

    /// True once, for the request that first found the zone without room for a permit.
    pub fn newly_full(&self) -> bool {
        self.newly_full
    }

    /// Permits stored now, read under the lock.
    pub fn permits(&self) -> u64 {
        let _locked = self.shared.lock();
        // SAFETY: see `new`; the lock is held.
        unsafe { self.table.as_ref().permits() }
    }

    /// Runs `f` on the table with the lock held.
    fn with_table<T>(&mut self, f: impl FnOnce(&mut PermitTable, &S::Locked<'_>) -> T) -> T {
        let locked = self.shared.lock();
        // SAFETY: see `new`; the lock serialises every access to the table across workers.
        let table = unsafe { self.table.as_mut() };
        f(table, &locked)
    }
}

impl<S: Shared> PermitStore for ZoneStore<'_, S> {
    fn lookup(&mut self, key: &[u8], cap: Cap) -> Lookup {
        self.with_table(|table, _| {
            let hash = table.hash(key);
            if table.find(hash, key).is_some() {
                Lookup::Permitted
            } else if table.under_cap(cap) {
                Lookup::Open
            } else {
                Lookup::SoldOut
            }
        })
    }

    fn admit(&mut self, key: &[u8], cap: Cap) -> Admission {
        let now_ms = self.now_ms;
        let (admission, newly_full) = self.with_table(|table, arena| {
            let hash = table.hash(key);
            if table.find(hash, key).is_some() {
                return (Admission::Permitted, false);
            }
            if !table.under_cap(cap) {
                return (Admission::SoldOut, false);
            }
            match table.insert(arena, hash, key, now_ms) {
                Some(_seq) => (Admission::Admitted, false),
                None => {
                    let first = table.full_reported == 0;
                    table.full_reported = 1;
                    (Admission::ZoneFull, first)
                }
            }
        });
        self.newly_full |= newly_full;
        admission
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{alloc, Layout};
    use std::cell::Cell;
    use std::sync::{Mutex, MutexGuard};

    /// The heap as a zone: a byte budget stands in for the zone's size.
    struct Heap {
        used: Mutex<Cell<usize>>,
        budget: usize,
    }

    impl Heap {
        fn new(budget: usize) -> Self {
            Heap { used: Mutex::new(Cell::new(0)), budget }
        }
    }

    struct HeapLocked<'a>(MutexGuard<'a, Cell<usize>>, usize);

    impl Arena for HeapLocked<'_> {
        fn alloc(&self, size: usize) -> Option<NonNull<u8>> {
            let used = self.0.get() + size;
            if used > self.1 {
                return None;
            }
            self.0.set(used);
            // The tests leak their tables; a few megabytes per test process.
            let layout = Layout::from_size_align(size, 8).ok()?;
            // SAFETY: `layout` has a non-zero size.
            NonNull::new(unsafe { alloc(layout) })
        }
    }

    impl Shared for Heap {
        type Locked<'a> = HeapLocked<'a>;
        fn lock(&self) -> HeapLocked<'_> {
            HeapLocked(self.used.lock().unwrap(), self.budget)
        }
    }

    fn table(heap: &Heap, buckets: usize) -> NonNull<PermitTable> {
        PermitTable::create(&heap.lock(), buckets, [1, 2], b"$arg_user").unwrap()
    }

    #[test]
    fn admit_then_permitted_then_cap() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 16);
        let mut store = unsafe { ZoneStore::new(&heap, t, 0) };
        assert_eq!(store.lookup(b"alice", Some(2)), Lookup::Open);
        assert_eq!(store.admit(b"alice", Some(2)), Admission::Admitted);
        assert_eq!(store.lookup(b"alice", Some(2)), Lookup::Permitted);
        assert_eq!(store.admit(b"alice", Some(2)), Admission::Permitted);
        assert_eq!(store.admit(b"bob", Some(2)), Admission::Admitted);
        assert_eq!(store.lookup(b"carol", Some(2)), Lookup::SoldOut);
        assert_eq!(store.admit(b"carol", Some(2)), Admission::SoldOut);
        // A higher cap elsewhere still sees the two permits.
        assert_eq!(store.admit(b"carol", Some(3)), Admission::Admitted);
        assert_eq!(store.permits(), 3);
    }

    #[test]
    fn keys_are_compared_whole() {
        let heap = Heap::new(1 << 20);
        // One bucket: every key collides, so only the full comparison tells them apart.
        let t = table(&heap, 1);
        let mut store = unsafe { ZoneStore::new(&heap, t, 0) };
        assert_eq!(store.admit(b"abc", None), Admission::Admitted);
        assert_eq!(store.lookup(b"ab", None), Lookup::Open);
        assert_eq!(store.lookup(b"abcd", None), Lookup::Open);
        assert_eq!(store.lookup(b"abd", None), Lookup::Open);
        assert_eq!(store.lookup(b"\xffbc", None), Lookup::Open);
        assert_eq!(store.admit(b"ab", None), Admission::Admitted);
        assert_eq!(store.lookup(b"abc", None), Lookup::Permitted);
        assert_eq!(store.lookup(b"ab", None), Lookup::Permitted);
    }

    #[test]
    fn permits_get_numbers_in_order_of_admission() {
        let heap = Heap::new(1 << 20);
        let mut t = table(&heap, 64);
        let mut store = unsafe { ZoneStore::new(&heap, t, 42) };
        for i in 0..100u32 {
            assert_eq!(store.admit(&i.to_be_bytes(), None), Admission::Admitted);
        }
        let t = unsafe { t.as_mut() };
        for i in 0..100u32 {
            let key = i.to_be_bytes();
            let p = t.find(t.hash(&key), &key).unwrap();
            let p = unsafe { p.as_ref() };
            assert_eq!((p.seq, p.granted_ms), (u64::from(i) + 1, 42));
        }
    }

    #[test]
    fn a_full_zone_refuses_and_reports_once() {
        let heap = Heap::new(4096);
        let t = table(&heap, 16);
        let mut store = unsafe { ZoneStore::new(&heap, t, 0) };
        let mut admitted = 0;
        while store.admit(format!("buyer-{admitted}").as_bytes(), None) == Admission::Admitted {
            admitted += 1;
        }
        assert!(admitted > 10, "only {admitted} permits fit");
        assert!(store.newly_full());
        let mut later = unsafe { ZoneStore::new(&heap, t, 0) };
        assert_eq!(later.admit(b"someone else", None), Admission::ZoneFull);
        assert!(!later.newly_full(), "the full zone is reported once");
        // The permits already there still count.
        assert_eq!(later.admit(b"buyer-0", None), Admission::Permitted);
        assert_eq!(later.permits(), admitted);
    }

    #[test]
    fn cap_is_exact_under_concurrency() {
        let heap = Heap::new(16 << 20);
        let t = table(&heap, 1024);
        struct SendTable(NonNull<PermitTable>);
        // SAFETY: every access to the table goes through the heap's mutex.
        unsafe impl Sync for SendTable {}
        let shared_table = SendTable(t);
        let admitted: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|thread| {
                    let (heap, t) = (&heap, &shared_table);
                    s.spawn(move || {
                        let mut store = unsafe { ZoneStore::new(heap, t.0, 0) };
                        (0..2_000u32)
                            .filter(|i| {
                                let key = format!("{thread}-{i}");
                                store.admit(key.as_bytes(), Some(100)) == Admission::Admitted
                            })
                            .count() as u64
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 100);
        let store = unsafe { ZoneStore::new(&heap, t, 0) };
        assert_eq!(store.permits(), 100);
    }

    #[test]
    fn sizing() {
        assert_eq!(bucket_count(10 << 20), 65_536);
        assert_eq!(bucket_count(32 * 1024), 256);
        assert_eq!(bucket_count(0), 16);
        // A typical 40-byte key fits one 128-byte slab chunk with its header.
        assert!(permit_size(40) <= 128);
        assert!(permit_size(16) <= 64);
    }

    #[test]
    fn foreign_layouts_are_detected() {
        let heap = Heap::new(1 << 20);
        let mut t = table(&heap, 16);
        assert!(unsafe { t.as_ref() }.is_compatible());
        assert_eq!(unsafe { t.as_ref() }.key_spec(), b"$arg_user");
        unsafe { t.as_mut() }.magic = 7;
        assert!(!unsafe { t.as_ref() }.is_compatible());
    }
}
