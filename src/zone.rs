//! The permit store: a hash table of permits laid out in a shared-memory zone.
//!
//! The table and its permits live in memory that every worker maps at the same address, so
//! they are linked with raw pointers, as nginx's own shared zones are. Each permit is one
//! allocation holding its header and the whole key, so a lookup touches one bucket slot and
//! the permits in that bucket's chain, and nothing else.
//!
//! Besides its bucket chain, every permit sits on one of two lists: permits with an expiry, in
//! order of expiry, and permits without, in order of admission. Expired permits are taken off
//! the front of the first list before each look at the cap, so they stop counting the moment
//! they expire, and no request ever scans the zone.
//!
//! The memory and the lock come from a [`Shared`] region: nginx's slab pool and its `ngx_shmtx`
//! in a worker (see `slab.rs`), the heap and a `Mutex` in the unit tests below. Everything here
//! runs under that lock, except the statistics and overrides, which are atomics.

use core::hash::Hasher;
use core::mem::size_of;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use siphasher::sip::SipHasher13;

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::health::Health;
use crate::link::Link;

use crate::line::{Estimate, Heard, LineFigures, LineFull, LineState, Place, Ranks};
use crate::sale::{
    expiry, prequeue_wins, shuffled, Admission, Cap, Grant, Held, ItemInfo, Lookup, Outcome,
    Overrides, PermitInfo, PermitKey, PermitLookup, PermitStore, Queue, Queued, Registration, Sale,
    COUNTED,
};

/// Allocation inside a locked region.
pub trait Arena {
    /// Allocates `size` bytes aligned for a pointer, or `None` when the region is full.
    fn alloc(&self, size: usize) -> Option<NonNull<u8>>;
    /// Gives back what `alloc` returned.
    ///
    /// # Safety
    /// `p` came from this arena's `alloc(size)` and is not used afterwards.
    unsafe fn free(&self, p: NonNull<u8>, size: usize);
}

/// An arena that allocates nothing: for lookups that must not make anything.
pub enum NoArena {}

impl Arena for NoArena {
    fn alloc(&self, _size: usize) -> Option<NonNull<u8>> {
        None
    }
    unsafe fn free(&self, _p: NonNull<u8>, _size: usize) {}
}

/// A region of shared memory with a lock; locking yields the region's arena.
pub trait Shared {
    type Locked<'a>: Arena
    where
        Self: 'a;
    fn lock(&self) -> Self::Locked<'_>;
}

/// A shared region is shared through a reference too (the tests' heap).
impl<T: Shared> Shared for &T {
    type Locked<'a>
        = T::Locked<'a>
    where
        Self: 'a;
    fn lock(&self) -> Self::Locked<'_> {
        T::lock(self)
    }
}

/// Tells a table laid out by one build of the module from one it cannot read, so that a
/// reload with a changed layout fails loudly instead of reading garbage.
const LAYOUT_MAGIC: u64 = 0x464c_5348_5341_4c08; // "FLSHSAL" + version 8

/// Counters kept in the zone, exact across workers, updated without the lock.
#[repr(C)]
#[derive(Default)]
pub struct Stats {
    /// Requests decided, by outcome and dry run: see [`crate::sale::Outcome::counter`].
    pub requests: [AtomicU64; COUNTED],
    pub granted: AtomicU64,
    pub revoked: AtomicU64,
    pub expired: AtomicU64,
    /// Tokens `flash_sale_verify` checked for this zone, passed and refused.
    pub tokens_valid: AtomicU64,
    pub tokens_refused: AtomicU64,
    /// Round trips to Redis for a zone kept there, and those that failed.
    pub redis_calls: AtomicU64,
    pub redis_errors: AtomicU64,
    /// The failed ones by kind, in the order of `remote::Failure::KINDS`.
    pub redis_failures: [AtomicU64; 5],
    /// Records the state file could not take (a full disk, an I/O error).
    pub state_errors: AtomicU64,
}

impl Stats {
    /// Counts a failed round trip to Redis, in all and by its kind (`Failure::index`).
    pub fn redis_failed(&self, kind: usize) {
        Stats::count(&self.redis_errors);
        if let Some(counter) = self.redis_failures.get(kind) {
            Stats::count(counter);
        }
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter with its name in the state file: outcomes by name, so that a file stays
    /// readable when outcomes are added.
    pub fn named_values(&self) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = self
            .outcome_counters()
            .map(|(name, c)| (format!("requests.{name}"), c.load(Ordering::Relaxed)))
            .collect();
        for (name, c) in self.totals() {
            all.push((name.to_string(), c.load(Ordering::Relaxed)));
        }
        all
    }

    /// The counters besides the outcomes', by their names in the state file.
    fn totals(&self) -> [(&'static str, &AtomicU64); 8] {
        [
            ("granted", &self.granted),
            ("revoked", &self.revoked),
            ("expired", &self.expired),
            ("tokens_valid", &self.tokens_valid),
            ("tokens_refused", &self.tokens_refused),
            ("redis_calls", &self.redis_calls),
            ("redis_errors", &self.redis_errors),
            ("state_errors", &self.state_errors),
        ]
    }

    /// Each outcome's counter once (passing outcomes have no dry-run counter of their own).
    fn outcome_counters(&self) -> impl Iterator<Item = (&'static str, &AtomicU64)> {
        Outcome::counted().map(|(o, dry_run)| (o.name(dry_run), &self.requests[o.counter(dry_run)]))
    }

    fn named(&self, name: &str) -> Option<&AtomicU64> {
        match name.strip_prefix("requests.") {
            Some(outcome) => self.outcome_counters().find(|&(n, _)| n == outcome).map(|(_, c)| c),
            None => self.totals().into_iter().find(|&(n, _)| n == name).map(|(_, c)| c),
        }
    }
}

/// A sale's [`Overrides`] as the zone keeps them, for every worker to read without the lock:
/// one atomic per field (the ratio as its `f64` bits), and a bit mask of the fields set,
/// written last (Release) and read first (Acquire).
#[repr(C)]
#[derive(Default)]
pub struct SharedOverrides {
    /// Which fields are set: one bit per field, written last, read first.
    set: AtomicU64,
    block_ratio: AtomicU64,
    max_permits: AtomicU64,
    start_ms: AtomicI64,
    end_ms: AtomicI64,
    queue_rate: AtomicU64,
}

const RATIO: u64 = 1;
const CAP: u64 = 2;
const START: u64 = 4;
const END: u64 = 8;
const RATE: u64 = 16;

impl SharedOverrides {
    /// The overrides now.
    pub fn load(&self) -> Overrides {
        let set = self.set.load(Ordering::Acquire);
        // The common case, on every request: nothing overridden.
        if set == 0 {
            return Overrides::default();
        }
        let has = |bit| set & bit != 0;
        Overrides {
            block_ratio: has(RATIO)
                .then(|| f64::from_bits(self.block_ratio.load(Ordering::Relaxed))),
            max_permits: has(CAP).then(|| self.max_permits.load(Ordering::Relaxed)),
            start_ms: has(START).then(|| self.start_ms.load(Ordering::Relaxed)),
            end_ms: has(END).then(|| self.end_ms.load(Ordering::Relaxed)),
            queue_rate: has(RATE).then(|| self.queue_rate.load(Ordering::Relaxed)),
        }
    }

    /// Makes `overrides` the zone's: the fields it has are written, then the mask of them.
    /// A field it clears keeps its last value, unread, so that a reader that took the mask
    /// before this store reads that value, never one this store half wrote. The caller holds
    /// the zone's lock, so that stores do not interleave.
    pub fn store(&self, overrides: &Overrides) {
        fn put<T>(set: &mut u64, bit: u64, value: Option<T>, store: impl FnOnce(T)) {
            if let Some(value) = value {
                store(value);
                *set |= bit;
            }
        }
        let mut set = 0;
        put(&mut set, RATIO, overrides.block_ratio, |v| {
            self.block_ratio.store(v.to_bits(), Ordering::Relaxed)
        });
        put(&mut set, CAP, overrides.max_permits, |v| self.max_permits.store(v, Ordering::Relaxed));
        put(&mut set, START, overrides.start_ms, |v| self.start_ms.store(v, Ordering::Relaxed));
        put(&mut set, END, overrides.end_ms, |v| self.end_ms.store(v, Ordering::Relaxed));
        put(&mut set, RATE, overrides.queue_rate, |v| self.queue_rate.store(v, Ordering::Relaxed));
        self.set.store(set, Ordering::Release);
    }
}

/// A list of permits, through their `prev` and `next` links.
#[repr(C)]
struct List {
    head: *mut Permit,
    tail: *mut Permit,
}

/// The table's header, at the start of the zone's first allocation; the buckets follow it.
#[repr(C)]
pub struct PermitTable {
    magic: u64,
    /// SipHash key, random per zone, so that nobody can choose keys that share a bucket.
    sip_key: [u64; 2],
    /// Permits stored now; compared with the cap.
    permits: u64,
    /// The number the next permit gets (1, 2, 3 ... in the order of admission, never reused).
    next_seq: u64,
    /// Set when an allocation first fails, so that "zone is full" is logged once.
    full_reported: u64,
    /// The key expression the zone was declared with, kept in the zone itself so that a reload
    /// can refuse a changed key without reading the previous cycle's configuration.
    key_spec: *const u8,
    key_spec_len: usize,
    /// Permits with an expiry, soonest first.
    timed: List,
    /// Permits without one, oldest first.
    untimed: List,
    /// Keys registered for the pre-queue's draw: a table of its own in the same zone, created
    /// by the first registration and freed by the draw; null when nobody waits.
    prequeue: *mut PermitTable,
    /// The waiting line (`flash_sale_queue`): its waiters, a table of their own in the same
    /// zone (a waiter's `seq` is his ticket, `granted_ms` when he joined, `expires_ms` when
    /// he leaves unless he asks again), made for the first waiter; null before.
    line: *mut PermitTable,
    /// The tree of live tickets (`ranks_len` slots; see [`Ranks`]), made with the line.
    ranks: *mut u32,
    ranks_len: usize,
    /// The line's counts and pace.
    line_state: LineState,
    /// For a zone that sells several items: each item's count and stock, a chained table of
    /// `items_mask + 1` buckets, made for the first item; null before. Only the zone's own
    /// table has one (`counts_items`), not its line's nor its pre-queue's.
    items: *mut *mut Item,
    items_mask: u64,
    next_item: u64,
    counts_items: bool,
    /// For a zone kept in Redis: what this host heard of the waiters in Redis's line (and of
    /// buyers registered for the pre-queue there), in `waiters_len` slots, two ways per hash;
    /// made for the first; null before.
    waiters: *mut WaiterSlot,
    waiters_len: usize,
    pub stats: Stats,
    pub overrides: SharedOverrides,
    /// For a zone kept in Redis: the link's health and the last SOLD_OUT, shared by workers.
    pub link: Link,
    /// For a zone with a state file: whether records reach it, and how much has been
    /// appended since it was last compacted.
    pub journal: JournalHealth,
    mask: u64,
}

/// A state file's health, shared by the workers through the zone.
#[repr(C)]
#[derive(Default)]
pub struct JournalHealth {
    /// Whether appends land; see [`Health`].
    pub health: Health,
    /// Bytes appended since the last compaction, and the size that compaction left.
    pub appended: AtomicU64,
    pub compacted: AtomicU64,
    /// When a worker started compacting the file (Unix ms); 0 while none does.
    pub compacting: AtomicU64,
    /// 1 while compactions fail (a directory nginx's user cannot write, a full disk).
    failing: AtomicU64,
}

impl JournalHealth {
    /// Counts `bytes` appended at `now_ms`; true when the journal has grown enough past its
    /// last compaction that this caller should compact it now (one caller at a time; a
    /// compaction that has not finished in [`COMPACT_STALE_MS`], its worker killed, is taken
    /// over): more than its compacted size again, and at least [`COMPACT_MIN_BYTES`].
    pub fn appended(&self, bytes: u64, now_ms: i64) -> bool {
        let appended = self.appended.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if appended < COMPACT_MIN_BYTES.max(self.compacted.load(Ordering::Acquire)) {
            return false;
        }
        let since = self.compacting.load(Ordering::Acquire);
        let free = since == 0 || now_ms.saturating_sub(since as i64) > COMPACT_STALE_MS;
        free && self
            .compacting
            .compare_exchange(since, now_ms.max(1) as u64, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// A compaction left `bytes`; `None` if it failed: the journal then waits until it has
    /// grown by its whole size again before the next try, so that a compaction that keeps
    /// failing (a directory nginx's user cannot write) costs a constant share of the appends,
    /// not a read of the whole file every few records.
    pub fn compacted(&self, bytes: Option<u64>) {
        self.failing.store(u64::from(bytes.is_none()), Ordering::Release);
        let appended = self.appended.swap(0, Ordering::AcqRel);
        match bytes {
            Some(bytes) => self.compacted.store(bytes, Ordering::Release),
            None => {
                self.compacted.fetch_add(appended, Ordering::AcqRel);
            }
        }
        self.compacting.store(0, Ordering::Release);
    }
}

impl JournalHealth {
    /// Whether the last compaction failed.
    pub fn compaction_failed(&self) -> bool {
        self.failing.load(Ordering::Acquire) != 0
    }
}

/// How long a compaction may take before another worker takes it over, in milliseconds.
pub const COMPACT_STALE_MS: i64 = 60_000;

/// The least a journal grows before a worker compacts it.
pub const COMPACT_MIN_BYTES: u64 = 64 * 1024;

/// One slot of a host's cache of what it heard of waiters in Redis: the key's hash (with its
/// lowest bit set: 0 is an empty slot) and what was heard. 40 bytes, no key: two keys whose
/// 64-bit keyed hashes are equal would share a place, which a zone's secret hash key makes
/// as unlikely as guessing it.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct WaiterSlot {
    tag: u64,
    heard: Heard,
}

/// The most silent waiters one step takes out of the line.
const LEAVE_PER_STEP: usize = 4096;

/// One permit: this header, then `key_len` bytes of key. 56 bytes, so that a 40-byte key
/// fits a 128-byte slab chunk and a 200-byte key a 256-byte one.
#[repr(C)]
struct Permit {
    /// The next permit in the same bucket.
    next: *mut Permit,
    /// Neighbours on the permit's list (`timed` or `untimed`).
    list_prev: *mut Permit,
    list_next: *mut Permit,
    seq: u64,
    granted_ms: i64,
    /// When the permit stops counting; 0 for never.
    expires_ms: i64,
    /// The low half of the buyer's key's hash: enough to pick the bucket (tables have far
    /// fewer than 2^32 buckets) and to skip most key comparisons. Hashed by the buyer alone, so
    /// that a buyer's permits for several items share a chain, where they are counted.
    hash: u32,
    /// The bytes after the header: the buyer's key, then the item (`item_len` of them; 0 in a
    /// zone that sells one item). Both fit the header's padding: a permit grows by its item.
    key_len: u16,
    item_len: u16,
}

/// One item of a zone that sells several (`flash_sale_item`): this header, then the item.
/// Made with the item's first permit, registration or stock override, freed when it has none.
#[repr(C)]
struct Item {
    next: *mut Item,
    /// Permits held for the item now: what its cap is compared with.
    permits: u64,
    /// Buyers registered for it in the pre-queue.
    registered: u64,
    /// Its stock set through the admin API, [`NO_STOCK`] when not: wins over `stock`.
    max_permits: u64,
    /// The cap the last request decided for it was configured with (`flash_sale_max_permits`,
    /// perhaps from a `map`), [`NO_STOCK`] for none.
    stock: u64,
    /// 1, 2, 3 ... in the order items were first seen: the listing's order.
    number: u64,
    hash: u32,
    len: u16,
}

/// An item stock that is not set.
const NO_STOCK: u64 = u64::MAX;

fn stock(value: u64) -> Option<u64> {
    (value != NO_STOCK).then_some(value)
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
        let empty = || List { head: ptr::null_mut(), tail: ptr::null_mut() };
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
                timed: empty(),
                untimed: empty(),
                prequeue: ptr::null_mut(),
                line: ptr::null_mut(),
                ranks: ptr::null_mut(),
                ranks_len: 0,
                line_state: LineState::default(),
                items: ptr::null_mut(),
                items_mask: 0,
                next_item: 1,
                counts_items: true,
                waiters: ptr::null_mut(),
                waiters_len: 0,
                stats: Stats::default(),
                overrides: SharedOverrides::default(),
                link: Link::default(),
                journal: JournalHealth::default(),
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

    /// Permits stored now (expired ones may linger until the next locked step takes them off).
    pub fn permits(&self) -> u64 {
        self.permits
    }

    /// The key expression the zone was created with.
    pub fn key_spec(&self) -> &[u8] {
        // SAFETY: `create` copied `key_spec_len` bytes there, and they never change.
        unsafe { core::slice::from_raw_parts(self.key_spec, self.key_spec_len) }
    }

    /// The hash of a buyer's key (or of an item): the same in every table of the zone.
    fn hash(&self, key: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.sip_key[0], self.sip_key[1]);
        h.write(key);
        h.finish()
    }

    /// The zone's secret for per-key draws (see [`keyed_draw`]): another key than the
    /// table's, so that draws say nothing about buckets.
    pub fn draw_secret(&self) -> [u64; 2] {
        [!self.sip_key[0], self.sip_key[1].rotate_left(17)]
    }

    /// [`keyed_draw`] with the zone's own secret.
    pub fn keyed_draw(&self, key: PermitKey<'_>, round: u64) -> f64 {
        keyed_draw(self.draw_secret(), key, round)
    }

    fn bucket(&mut self, hash: u64) -> *mut *mut Permit {
        let index = (hash & self.mask) as usize;
        // SAFETY: `index <= mask`, and `create` laid out `mask + 1` buckets right after the
        // header this `&mut self` points to.
        unsafe { (self as *mut Self).add(1).cast::<*mut Permit>().add(index) }
    }

    /// The permits in the chain of the buyer whose key's hash is `hash`, with their buyer's
    /// key and item.
    fn chain(&mut self, hash: u64) -> impl Iterator<Item = (NonNull<Permit>, PermitKey<'_>)> {
        // SAFETY: the bucket slot is valid (see `bucket`); every chain is null-terminated and
        // every link points to a permit written in full by `store`, its key and item after
        // its header; the caller holds the lock for as long as this borrow of the table.
        let mut p = unsafe { *self.bucket(hash) };
        core::iter::from_fn(move || {
            let permit = NonNull::new(p)?;
            // SAFETY: as above.
            p = unsafe { permit.as_ref() }.next;
            Some(permit)
        })
        // SAFETY: as above.
        .filter(move |permit| unsafe { permit.as_ref() }.hash == hash as u32)
        // SAFETY: as above.
        .map(|permit| (permit, unsafe { permit_key(permit.as_ptr()) }))
    }

    fn find(&mut self, hash: u64, key: PermitKey<'_>) -> Option<NonNull<Permit>> {
        self.chain(hash).find(|(_, k)| *k == key).map(|(permit, _)| permit)
    }

    /// How many items the buyer with `key` (whose hash is `hash`) holds permits for: his
    /// permits share his chain.
    fn items_held(&mut self, hash: u64, key: &[u8]) -> u64 {
        self.chain(hash).filter(|(_, k)| k.key == key).count() as u64
    }

    /// The bucket of the item whose hash is `hash`; the table of items exists.
    fn item_bucket(&self, hash: u64) -> *mut *mut Item {
        // SAFETY: `items` has `items_mask + 1` buckets (see `item_or_new`).
        unsafe { self.items.add((hash & self.items_mask) as usize) }
    }

    /// Every item, in no order.
    fn all_items(&self) -> impl Iterator<Item = NonNull<Item>> + '_ {
        let buckets = if self.items.is_null() { 0 } else { self.items_mask as usize + 1 };
        (0..buckets).flat_map(move |i| {
            // SAFETY: `i` is a bucket of the table of items; chains are null-terminated, their
            // links live items; the caller holds the lock.
            let mut p = unsafe { *self.items.add(i) };
            core::iter::from_fn(move || {
                let item = NonNull::new(p)?;
                // SAFETY: as above.
                p = unsafe { item.as_ref() }.next;
                Some(item)
            })
        })
    }

    /// The item named `name`, if the zone has it.
    fn item(&self, name: &[u8]) -> Option<NonNull<Item>> {
        if self.items.is_null() {
            return None;
        }
        let hash = self.hash(name);
        // SAFETY: the chain's links are live items (see `all_items`); the lock is held.
        let mut p = unsafe { *self.item_bucket(hash) };
        while let Some(item) = NonNull::new(p) {
            // SAFETY: as above.
            if unsafe { item.as_ref().hash == hash as u32 && item_name(item) == name } {
                return Some(item);
            }
            // SAFETY: as above.
            p = unsafe { item.as_ref() }.next;
        }
        None
    }

    /// The item named `name`, made if the zone has none (with its table, for the first);
    /// `None` when the zone has no room for it.
    fn item_or_new(&mut self, arena: &impl Arena, name: &[u8]) -> Option<NonNull<Item>> {
        if let Some(item) = self.item(name) {
            return Some(item);
        }
        if self.items.is_null() {
            // A sixteenth of the permits' buckets: a drop has tens of items, or thousands.
            let buckets = ((self.mask as usize + 1) / 16).max(16);
            let table = arena.alloc(buckets * size_of::<*mut Item>())?.cast::<*mut Item>();
            // SAFETY: room for `buckets` pointers, all null for an empty table.
            unsafe { ptr::write_bytes(table.as_ptr(), 0, buckets) };
            (self.items, self.items_mask) = (table.as_ptr(), buckets as u64 - 1);
        }
        let len = u16::try_from(name.len()).ok()?;
        let hash = self.hash(name);
        let item = arena.alloc(size_of::<Item>() + name.len())?.cast::<Item>();
        let bucket = self.item_bucket(hash);
        // SAFETY: the arena gave us room for the header and the name after it; the bucket is
        // valid and linking at the head keeps its chain null-terminated.
        unsafe {
            item.as_ptr().write(Item {
                next: *bucket,
                permits: 0,
                registered: 0,
                max_permits: NO_STOCK,
                stock: NO_STOCK,
                number: self.next_item,
                hash: hash as u32,
                len,
            });
            ptr::copy_nonoverlapping(name.as_ptr(), item.as_ptr().add(1).cast(), name.len());
            *bucket = item.as_ptr();
        }
        self.next_item += 1;
        Some(item)
    }

    /// Frees `item` if nothing needs it: no permit, registration or stock override.
    fn drop_unused(&mut self, arena: &impl Arena, item: NonNull<Item>) {
        // SAFETY: `item` is a live item of this table; the lock is held.
        let i = unsafe { item.as_ref() };
        if i.permits > 0 || i.registered > 0 || i.max_permits != NO_STOCK {
            return;
        }
        let size = size_of::<Item>() + i.len as usize;
        // SAFETY: as above; the chain's links are live items, and `item` is on it.
        unsafe {
            let mut slot = self.item_bucket(u64::from(i.hash));
            while !(*slot).is_null() && *slot != item.as_ptr() {
                slot = &mut (**slot).next;
            }
            if *slot == item.as_ptr() {
                *slot = i.next;
            }
            arena.free(item.cast(), size);
        }
    }

    /// The count `item` is capped on, and its cap: the item's own count and the stock the
    /// admin API set for it, else the `configured` cap; in a zone that sells one item, the
    /// zone's count and the configured cap.
    /// With `remember`, the item (if the zone has it) keeps `configured` as its stock, in the
    /// same look: one hash of the item is a sold-out request's whole cost for it.
    fn count_and_cap(&mut self, item: &[u8], configured: Cap, remember: bool) -> (u64, Cap) {
        if item.is_empty() {
            return (self.permits, configured);
        }
        match self.item(item) {
            Some(found) => {
                // SAFETY: a live item of this table; the lock is held.
                let found = unsafe { &mut *found.as_ptr() };
                if remember {
                    found.stock = configured.unwrap_or(NO_STOCK);
                }
                (found.permits, stock(found.max_permits).or(configured))
            }
            None => (0, configured),
        }
    }

    /// Items that sell, as the admin API and the metrics show them.
    pub fn items(&self) -> Vec<ItemInfo> {
        let mut items: Vec<ItemInfo> = self.all_items().map(item_info).collect();
        items.sort_unstable_by_key(|item| item.number);
        items
    }

    /// Stores a new permit, numbered next (from `numbers` when given, the counter a state
    /// file shares with every process that writes it); `None` when the zone has no room.
    fn insert(
        &mut self,
        arena: &impl Arena,
        hash: u64,
        key: PermitKey<'_>,
        now_ms: i64,
        expires_ms: Option<i64>,
        numbers: Option<&AtomicU64>,
    ) -> Option<u64> {
        // The shared counter always ends above the number taken, so that no process (another
        // generation of nginx) takes it again; a number not used is a gap, never a repeat.
        let next = self.next_seq;
        let seq = match numbers {
            Some(numbers) => numbers
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.max(next) + 1))
                .map_or(next, |n| n.max(next)),
            None => next,
        };
        let info = PermitInfo {
            key: key.key.to_vec(),
            item: key.item.to_vec(),
            seq,
            granted_ms: now_ms,
            expires_ms,
        };
        self.store(arena, hash, &info)?;
        self.next_seq = self.next_seq.max(seq + 1);
        Stats::count(&self.stats.granted);
        Some(seq)
    }

    /// Stores `p` as it is (number, times, key and item; in the zone's own table, counted for
    /// its item); `None` when the zone has no room for it.
    fn store(&mut self, arena: &impl Arena, hash: u64, p: &PermitInfo) -> Option<()> {
        let key_len = u16::try_from(p.key.len()).ok()?;
        let item_len = u16::try_from(p.item.len()).ok()?;
        let item = match self.counts_items && !p.item.is_empty() {
            true => Some(self.item_or_new(arena, &p.item)?),
            false => None,
        };
        let Some(permit) = arena.alloc(permit_size(p.key.len() + p.item.len())) else {
            if let Some(item) = item {
                self.drop_unused(arena, item);
            }
            return None;
        };
        let permit = permit.cast::<Permit>().as_ptr();
        let bucket = self.bucket(hash);
        // SAFETY: the arena gave us `permit_size(key.len() + item.len())` pointer-aligned
        // bytes: the header, the key and the item after it. The bucket slot is valid (see
        // `bucket`); linking at the head keeps every chain null-terminated. `item` is a live
        // item of this table.
        unsafe {
            if let Some(item) = item {
                (*item.as_ptr()).permits += 1;
            }
            permit.write(Permit {
                next: *bucket,
                list_prev: ptr::null_mut(),
                list_next: ptr::null_mut(),
                seq: p.seq,
                granted_ms: p.granted_ms,
                expires_ms: p.expires_ms.unwrap_or(0),
                hash: hash as u32,
                key_len,
                item_len,
            });
            let bytes = permit.add(1).cast::<u8>();
            ptr::copy_nonoverlapping(p.key.as_ptr(), bytes, p.key.len());
            ptr::copy_nonoverlapping(p.item.as_ptr(), bytes.add(p.key.len()), p.item.len());
            *bucket = permit;
            self.link(permit);
        }
        self.permits += 1;
        Some(())
    }

    /// Puts back permits read from a state file, with their numbers, and the counters; returns
    /// how many did not fit.
    pub fn restore(
        &mut self,
        arena: &impl Arena,
        permits: &[PermitInfo],
        next_seq: u64,
        counters: &[(String, u64)],
    ) -> usize {
        let mut lost = 0;
        for p in permits {
            let hash = self.hash(&p.key);
            if self.find(hash, p.permit_key()).is_none() && self.store(arena, hash, p).is_none() {
                lost += 1;
            }
            self.next_seq = self.next_seq.max(p.seq + 1);
        }
        self.next_seq = self.next_seq.max(next_seq);
        for (name, value) in counters {
            if let Some(counter) = self.stats.named(name) {
                counter.store(*value, Ordering::Relaxed);
            }
        }
        lost
    }

    /// The next permit's number.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Puts a new permit on its list: the timed one in order of expiry (walking back from the
    /// tail, which is where a permit with the common time-to-live belongs), else at the end.
    ///
    /// # Safety
    /// `permit` is a fully written permit on no list; the lock is held.
    unsafe fn link(&mut self, permit: *mut Permit) {
        // SAFETY: see the function's contract; list links point to live permits or are null.
        unsafe {
            let expires = (*permit).expires_ms;
            let list = if expires == 0 { &mut self.untimed } else { &mut self.timed };
            let mut after = list.tail;
            if expires != 0 {
                while let Some(p) = after.as_ref() {
                    if p.expires_ms <= expires {
                        break;
                    }
                    after = p.list_prev;
                }
            }
            let before = if after.is_null() { list.head } else { (*after).list_next };
            (*permit).list_prev = after;
            (*permit).list_next = before;
            match after.as_mut() {
                Some(a) => a.list_next = permit,
                None => list.head = permit,
            }
            match before.as_mut() {
                Some(b) => b.list_prev = permit,
                None => list.tail = permit,
            }
        }
    }

    /// Takes a permit off its list (`timed` or `untimed`).
    ///
    /// # Safety
    /// `p` is a permit of this table, on its list; the lock is held.
    unsafe fn unlink(&mut self, p: *mut Permit) {
        // SAFETY: see the function's contract; every link is valid or null.
        unsafe {
            let list = if (*p).expires_ms == 0 { &mut self.untimed } else { &mut self.timed };
            match (*p).list_prev.as_mut() {
                Some(prev) => prev.list_next = (*p).list_next,
                None => list.head = (*p).list_next,
            }
            match (*p).list_next.as_mut() {
                Some(next) => next.list_prev = (*p).list_prev,
                None => list.tail = (*p).list_prev,
            }
        }
    }

    /// Gives a permit a new expiry (a waiter who asked again), in its place on the list.
    ///
    /// # Safety
    /// `permit` is a permit of this table; the lock is held.
    unsafe fn renew(&mut self, permit: NonNull<Permit>, expires_ms: i64) {
        let p = permit.as_ptr();
        // SAFETY: see the function's contract.
        unsafe {
            self.unlink(p);
            (*p).expires_ms = expires_ms;
            self.link(p);
        }
    }

    /// Takes a permit out of its chain and list and frees it.
    ///
    /// # Safety
    /// `permit` is a permit of this table; the lock is held.
    unsafe fn remove(&mut self, arena: &impl Arena, permit: NonNull<Permit>) {
        let p = permit.as_ptr();
        // SAFETY: see the function's contract; every link is valid or null.
        unsafe {
            let mut slot = self.bucket(u64::from((*p).hash));
            while !(*slot).is_null() && *slot != p {
                slot = &mut (**slot).next;
            }
            if *slot == p {
                *slot = (*p).next;
            }
            self.unlink(p);
            let item = permit_key(p).item;
            if self.counts_items && !item.is_empty() {
                if let Some(found) = self.item(item) {
                    (*found.as_ptr()).permits -= 1;
                    self.drop_unused(arena, found);
                }
            }
            let size = permit_size((*p).key_len as usize + (*p).item_len as usize);
            arena.free(permit.cast(), size);
        }
        self.permits -= 1;
        // Room again: the next time the zone fills up is worth a log line too.
        self.full_reported = 0;
    }

    /// Takes expired permits off the front of the timed list; returns how many.
    fn expire(&mut self, arena: &impl Arena, now_ms: i64) -> u64 {
        let mut expired = 0;
        while let Some(head) = NonNull::new(self.timed.head) {
            // SAFETY: the head of a list is a live permit; the lock is held.
            if unsafe { head.as_ref() }.expires_ms > now_ms {
                break;
            }
            // SAFETY: `head` is a permit of this table.
            unsafe { self.remove(arena, head) };
            expired += 1;
        }
        if expired > 0 {
            self.stats.expired.fetch_add(expired, Ordering::Relaxed);
        }
        expired
    }

    /// True the first time the zone is found full since it last had room: worth one log line.
    fn report_full(&mut self) -> bool {
        let first = self.full_reported == 0;
        self.full_reported = 1;
        first
    }

    /// Keys waiting for the pre-queue's draw.
    pub fn prequeued(&self) -> u64 {
        // SAFETY: the pre-queue is null or a live table of this zone; the lock is held.
        unsafe { self.prequeue.as_ref() }.map_or(0, |queue| queue.permits)
    }

    /// Registers `key` for the pre-queue's draw, once per key; false when the zone has no room.
    /// Registers `key` for the pre-queue's draw, once per key and item; its item remembers
    /// `cap`, its configured stock.
    fn register(
        &mut self,
        arena: &impl Arena,
        key: PermitKey<'_>,
        cap: Cap,
        now_ms: i64,
    ) -> Registration {
        // An item without stock registers nobody: unknown items (a `map`'s `default 0`)
        // would otherwise fill the zone before the start.
        if !key.item.is_empty() && self.count_and_cap(key.item, cap, false).1 == Some(0) {
            return Registration::NoStock;
        }
        if self.prequeue.is_null() {
            // A quarter of the permits' buckets: registrations last minutes, not the sale.
            let buckets = ((self.mask as usize + 1) / 4).max(16);
            match PermitTable::create(arena, buckets, self.sip_key, b"") {
                // SAFETY: just made, in this zone's arena; the lock is held.
                Some(queue) => unsafe {
                    (*queue.as_ptr()).counts_items = false;
                    self.prequeue = queue.as_ptr();
                },
                None => return Registration::ZoneFull,
            }
        }
        // SAFETY: the pre-queue was created in this zone's arena and only changes under the
        // lock, which the caller holds.
        let queue = unsafe { &mut *self.prequeue };
        let hash = queue.hash(key.key);
        if queue.find(hash, key).is_some() {
            return Registration::Registered;
        }
        let item = match key.item.is_empty() {
            true => None,
            false => match self.item_or_new(arena, key.item) {
                Some(item) => Some(item),
                None => return Registration::ZoneFull,
            },
        };
        // SAFETY: as above.
        let queue = unsafe { &mut *self.prequeue };
        // A registration is a permit of the pre-queue's table: its number is the arrival order.
        let registered = queue.insert(arena, hash, key, now_ms, None, None).is_some();
        if let Some(item) = item {
            // SAFETY: a live item of this table; the lock is held.
            let i = unsafe { &mut *item.as_ptr() };
            i.registered += u64::from(registered);
            i.stock = cap.unwrap_or(NO_STOCK);
            self.drop_unused(arena, item);
        }
        match registered {
            true => Registration::Registered,
            false => Registration::ZoneFull,
        }
    }

    /// The pre-queue's draw: walks the registered keys that hold no permit in a uniformly
    /// random order (see [`shuffled`]) and gives a permit to each [`prequeue_wins`] lets in:
    /// per item, up to its stock (as the item remembers it from the registrations, or as the
    /// admin API set it), and never past a buyer's limit. Frees the pre-queue. Returns the new
    /// permits, and whether the zone ran out of room for them.
    fn settle_prequeue(
        &mut self,
        arena: &impl Arena,
        sale: &Sale,
        now_ms: i64,
        expires_ms: Option<i64>,
        numbers: Option<&AtomicU64>,
    ) -> (Vec<PermitInfo>, bool) {
        let Some(mut queue) = NonNull::new(self.prequeue) else {
            return (Vec::new(), false);
        };
        self.prequeue = ptr::null_mut();
        // SAFETY: the pre-queue is a live table of this zone, now reachable from here alone;
        // the lock is held.
        let queue = unsafe { queue.as_mut() };
        let mut registered = Vec::new();
        for entry in queue.permits_after(ptr::null()) {
            // SAFETY: as above; the entry is live until `destroy` below.
            let key = unsafe { permit_key(entry.as_ptr()) };
            registered.push(PermitInfo {
                key: key.key.to_vec(),
                item: key.item.to_vec(),
                ..PermitInfo::default()
            });
        }
        registered.retain(|p| self.find(self.hash(&p.key), p.permit_key()).is_none());
        // SAFETY: nothing points into the pre-queue any more.
        unsafe { queue.destroy(arena) };
        // Generators of their own, seeded from the system: the draw happens once per sale.
        let mut rng = StdRng::try_from_os_rng()
            .unwrap_or_else(|_| StdRng::seed_from_u64(self.sip_key[0] ^ now_ms as u64));
        let mut draws = StdRng::seed_from_u64(rng.random());
        let (full, granted) = match sale.queue {
            Some(queue) => (
                self.prequeue_to_line(arena, &registered, sale, queue, now_ms, &mut rng),
                Vec::new(),
            ),
            None => {
                let mut granted = Vec::new();
                let mut full = false;
                for i in shuffled(registered.len(), &mut rng) {
                    let mut p = registered[i].clone();
                    let configured = match p.item.is_empty() {
                        true => sale.cap,
                        false => self.item(&p.item).map(item_info).and_then(|i| i.stock),
                    };
                    // Permits held already (an operator's grants) count against the cap.
                    let (count, cap) = self.count_and_cap(&p.item, configured, false);
                    let hash = self.hash(&p.key);
                    let held = self.items_held(hash, &p.key);
                    let room = cap.map(|cap| cap.saturating_sub(count));
                    if !prequeue_wins(room, held, sale, || draws.random()) {
                        continue;
                    }
                    match self.insert(arena, hash, p.permit_key(), now_ms, expires_ms, numbers) {
                        Some(seq) => {
                            (p.seq, p.granted_ms, p.expires_ms) = (seq, now_ms, expires_ms);
                            granted.push(p);
                        }
                        None => {
                            full = true;
                            break;
                        }
                    }
                }
                (full, granted)
            }
        };
        // The registrations are spent: items kept for them alone go.
        let items: Vec<NonNull<Item>> = self.all_items().collect();
        for item in items {
            // SAFETY: a live item of this table; the lock is held.
            unsafe { (*item.as_ptr()).registered = 0 };
            self.drop_unused(arena, item);
        }
        (granted, full)
    }

    /// With a line, the pre-queue's registered buyers take its front, those the draw lets
    /// through, in a uniformly random order, each once whatever the items he registered for;
    /// the cap rules when they are called in. True when the zone ran out of room for them.
    fn prequeue_to_line(
        &mut self,
        arena: &impl Arena,
        registered: &[PermitInfo],
        sale: &Sale,
        queue: Queue,
        now_ms: i64,
        rng: &mut StdRng,
    ) -> bool {
        let order: Vec<usize> = shuffled(registered.len(), rng).collect();
        let hashes: Vec<u64> = order.iter().map(|&i| self.hash(&registered[i].key)).collect();
        let Some(mut line) = self.line(arena) else {
            return true;
        };
        for (&i, hash) in order.iter().zip(hashes) {
            let buyer = PermitKey::single(&registered[i].key);
            if line.waiters.find(hash, buyer).is_some() || sale.block_ratio.blocks(rng.random()) {
                continue;
            }
            if line.enter(arena, hash, buyer, queue, now_ms).is_none() {
                return true;
            }
        }
        false
    }

    /// The line's parts, made for the first waiter; `None` when the zone has no room for them.
    fn line(&mut self, arena: &impl Arena) -> Option<Line<'_>> {
        if self.line.is_null() {
            // Half the permits' buckets: a line holds what the zone can hold, but its waiters
            // come and go.
            let buckets = (self.mask as usize + 1).div_ceil(2).max(16);
            // A slot per 128 bytes of zone, as many as the permits' buckets: a waiter with a
            // key of up to 72 bytes takes a 128-byte chunk, so the line can hold every waiter
            // such keys fill the zone with (those of shorter keys, up to that many).
            let slots = self.mask as usize + 1;
            let tree = arena.alloc(slots.checked_mul(size_of::<u32>())?)?;
            let Some(line) = PermitTable::create(arena, buckets, self.sip_key, b"") else {
                // SAFETY: just allocated with this size, and not used.
                unsafe { arena.free(tree, slots * size_of::<u32>()) };
                return None;
            };
            // SAFETY: just made, in this zone's arena; the lock is held.
            unsafe { (*line.as_ptr()).counts_items = false };
            // SAFETY: `tree` has room for `slots` counts, all zero for an empty line.
            unsafe { ptr::write_bytes(tree.as_ptr().cast::<u32>(), 0, slots) };
            (self.line, self.ranks, self.ranks_len) = (line.as_ptr(), tree.as_ptr().cast(), slots);
        }
        // SAFETY: the waiters' table and the tree were made above in this zone's arena, live
        // as long as the zone, and are reached from this table alone, under the lock the
        // caller holds; neither is part of `self`, whose counts the line borrows besides.
        let (waiters, tree) = unsafe {
            (&mut *self.line, core::slice::from_raw_parts_mut(self.ranks, self.ranks_len))
        };
        Some(Line { waiters, ranks: Ranks::new(tree), state: &mut self.line_state })
    }

    /// Whether the buyer with `key` (whose hash is `hash`) waits in the line: one line per
    /// sale, whatever the item.
    fn in_line(&mut self, hash: u64, key: &[u8]) -> bool {
        // SAFETY: the line is null or a live table of this zone; the lock is held.
        match unsafe { self.line.as_mut() } {
            Some(waiters) => waiters.find(hash, PermitKey::single(key)).is_some(),
            None => false,
        }
    }

    /// A buyer who may buy, in a sale with a line (see [`PermitStore::queue`]); with the
    /// admission's `newly_full`.
    #[allow(clippy::too_many_arguments)]
    fn queue_step(
        &mut self,
        arena: &impl Arena,
        key: PermitKey<'_>,
        sale: &Sale,
        queue: Queue,
        now_ms: i64,
        expires_ms: Option<i64>,
        numbers: Option<&AtomicU64>,
    ) -> (Queued, bool) {
        let hash = self.hash(key.key);
        if let Some(decided) = self.barrier(hash, key, sale) {
            return (Queued::Decided(decided), false);
        }
        let buyer = PermitKey::single(key.key);
        let Some(mut line) = self.line(arena) else {
            return (Queued::Full, self.report_full());
        };
        line.leave_silent(arena, now_ms);
        // The calls earned before this step go to those who were in line then.
        line.state.call(queue.rate, now_ms);
        let Some((ticket, joined_ms)) = line.enter(arena, hash, buyer, queue, now_ms) else {
            return (Queued::Full, self.report_full());
        };
        line.state.call(queue.rate, now_ms);
        match line.state.place(&line.ranks, ticket, queue.rate) {
            Place::Waiting(waiting) => (Queued::Waiting(waiting), false),
            Place::Called => {
                // Called in: he leaves the line, admitted or told the stock is gone.
                line.leave_called(arena, hash, buyer, ticket, joined_ms, now_ms);
                // The permit, the cap and the limit were checked above, in this same step.
                let (admission, newly_full) =
                    self.admit_new(arena, hash, key, sale, now_ms, expires_ms, numbers);
                (Queued::Decided(admission), newly_full)
            }
        }
    }

    /// Stores a permit for `key` if it has none and the count is under the cap; with whether
    /// this is the first time the zone is found full.
    fn admission(
        &mut self,
        arena: &impl Arena,
        key: PermitKey<'_>,
        sale: &Sale,
        now_ms: i64,
        expires_ms: Option<i64>,
        numbers: Option<&AtomicU64>,
    ) -> (Admission, bool) {
        let hash = self.hash(key.key);
        match self.barrier(hash, key, sale) {
            Some(decided) => (decided, false),
            None => self.admit_new(arena, hash, key, sale, now_ms, expires_ms, numbers),
        }
    }

    /// What a key (whose buyer's hash is `hash`) gets before any admission: its permit,
    /// SOLD_OUT at its item's cap, LIMIT_REACHED at the buyer's limit; `None` when it may be
    /// admitted. The item remembers the sale's cap as its configured stock.
    fn barrier(&mut self, hash: u64, key: PermitKey<'_>, sale: &Sale) -> Option<Admission> {
        if let Some(permit) = self.find(hash, key) {
            return Some(Admission::Permitted(held(permit)));
        }
        let (count, cap) = self.count_and_cap(key.item, sale.cap, true);
        if cap.is_some_and(|cap| count >= cap) {
            return Some(Admission::SoldOut);
        }
        let limit = sale.max_per_buyer?;
        (self.items_held(hash, key.key) >= limit).then_some(Admission::LimitReached)
    }

    /// Stores a new permit for a key [`Self::barrier`] let through in this locked step; with
    /// whether this is the first time the zone is found full.
    #[allow(clippy::too_many_arguments)]
    fn admit_new(
        &mut self,
        arena: &impl Arena,
        hash: u64,
        key: PermitKey<'_>,
        sale: &Sale,
        now_ms: i64,
        expires_ms: Option<i64>,
        numbers: Option<&AtomicU64>,
    ) -> (Admission, bool) {
        match self.insert(arena, hash, key, now_ms, expires_ms, numbers) {
            Some(seq) => {
                // A new item remembers its configured stock too.
                self.count_and_cap(key.item, sale.cap, true);
                (Admission::Admitted(Held { seq, expires_ms }), false)
            }
            None => (Admission::ZoneFull, self.report_full()),
        }
    }

    /// The line as the metrics and the API show it, once silent waiters have left.
    fn line_figures(&mut self, arena: &impl Arena, now_ms: i64) -> LineFigures {
        if self.line.is_null() {
            return LineFigures::default();
        }
        let Some(mut line) = self.line(arena) else {
            return LineFigures::default();
        };
        line.leave_silent(arena, now_ms);
        let state = &*line.state;
        LineFigures {
            waiting: state.waiting,
            admitted: state.admitted,
            left: state.left,
            admitted_last_minute: state.admitted_last_minute(now_ms),
            serving: state.serving(&line.ranks),
            waited: state.waited,
            waited_ms: state.waited_ms,
        }
    }

    /// The host's cache of waiters in Redis, made for the first (a slot per four of the
    /// permits' buckets, at least 64: a miss only costs a round trip); `None` when the zone has
    /// no room for it.
    fn waiter_slots(&mut self, arena: Option<&impl Arena>) -> Option<&mut [WaiterSlot]> {
        if self.waiters.is_null() {
            let arena = arena?;
            let len = ((self.mask as usize + 1) / 4).max(64);
            let bytes = len.checked_mul(size_of::<WaiterSlot>())?;
            let slots = arena.alloc(bytes)?.cast::<WaiterSlot>();
            // SAFETY: just allocated with room for `len` slots, pointer-aligned; all empty.
            unsafe { ptr::write_bytes(slots.as_ptr(), 0, len) };
            (self.waiters, self.waiters_len) = (slots.as_ptr(), len);
        }
        // SAFETY: made above in this zone's arena, live as long as the zone, reached from this
        // table alone, under the lock the caller holds.
        Some(unsafe { core::slice::from_raw_parts_mut(self.waiters, self.waiters_len) })
    }

    /// The two slots `key` may sit in, and its tag.
    fn waiter_ways(
        &mut self,
        key: &[u8],
        arena: Option<&impl Arena>,
    ) -> Option<(&mut [WaiterSlot], u64)> {
        let tag = self.hash(key) | 1;
        let slots = self.waiter_slots(arena)?;
        let first = (tag as usize >> 1) % (slots.len() / 2) * 2;
        Some((&mut slots[first..first + 2], tag))
    }

    /// What this host heard of `key` in Redis's line or pre-queue.
    fn heard(&mut self, key: &[u8]) -> Option<Heard> {
        let (ways, tag) = self.waiter_ways(key, None::<&NoArena>)?;
        ways.iter().find(|slot| slot.tag == tag).map(|slot| slot.heard)
    }

    /// Keeps what this host heard of `key`: `heard` makes it from what it heard before. The
    /// older of the two ways gives way to a new key. `None` when the zone has no room.
    fn hear(
        &mut self,
        arena: &impl Arena,
        key: &[u8],
        heard: impl FnOnce(Option<Heard>) -> Heard,
    ) -> Option<Heard> {
        let (ways, tag) = self.waiter_ways(key, Some(arena))?;
        let found = ways.iter().position(|slot| slot.tag == tag);
        let before = found.map(|i| ways[i].heard);
        let i = found.unwrap_or_else(|| match ways.iter().position(|slot| slot.tag == 0) {
            Some(empty) => empty,
            None => usize::from(ways[1].heard.asked_ms < ways[0].heard.asked_ms),
        });
        ways[i] = WaiterSlot { tag, heard: heard(before) };
        Some(ways[i].heard)
    }

    /// Forgets what this host heard of `key` in Redis's line or pre-queue.
    fn unhear(&mut self, key: &[u8]) {
        if let Some((ways, tag)) = self.waiter_ways(key, None::<&NoArena>) {
            for slot in ways.iter_mut().filter(|slot| slot.tag == tag) {
                *slot = WaiterSlot::default();
            }
        }
    }

    /// Frees every permit of the table, its key expression and the table itself.
    ///
    /// # Safety
    /// The table was created by [`PermitTable::create`] in `arena`, is not used afterwards, and
    /// the lock is held.
    unsafe fn destroy(&mut self, arena: &impl Arena) {
        while let Some(permit) = NonNull::new(self.next_in_order(ptr::null())) {
            // SAFETY: `permit` is on one of this table's lists.
            unsafe { self.remove(arena, permit) };
        }
        let bytes = size_of::<Self>() + (self.mask as usize + 1) * size_of::<*mut Permit>();
        // SAFETY: `create` allocated exactly these two blocks with these sizes.
        unsafe {
            if let Some(spec) = NonNull::new(self.key_spec.cast_mut()) {
                arena.free(spec, self.key_spec_len.max(1));
            }
            arena.free(NonNull::from(self).cast(), bytes);
        }
    }

    /// The permit after `p` in list order: timed permits (soonest expiry first), then the
    /// others (oldest first); the first permit when `p` is null.
    fn next_in_order(&self, p: *const Permit) -> *mut Permit {
        // SAFETY: `p` is null or a live permit of this table; the lock is held.
        match unsafe { p.as_ref() } {
            None if self.timed.head.is_null() => self.untimed.head,
            None => self.timed.head,
            Some(permit) if permit.list_next.is_null() && permit.expires_ms != 0 => {
                self.untimed.head
            }
            Some(permit) => permit.list_next,
        }
    }

    /// Permits in list order, starting after `after` (from the first when null).
    fn permits_after(&self, after: *const Permit) -> impl Iterator<Item = NonNull<Permit>> + '_ {
        let mut p = self.next_in_order(after);
        core::iter::from_fn(move || {
            let current = NonNull::new(p)?;
            p = self.next_in_order(current.as_ptr());
            Some(current)
        })
    }
}

/// The waiting line of a zone, as one locked step sees it: its waiters (a table of their own:
/// a waiter's `seq` is his ticket, `granted_ms` when he joined, `expires_ms` when he leaves
/// unless he asks again), the tree of their tickets, and its counts.
struct Line<'a> {
    waiters: &'a mut PermitTable,
    ranks: Ranks<'a>,
    state: &'a mut LineState,
}

impl Line<'_> {
    /// Puts `key` (whose hash, the same in every table of the zone, is `hash`) in the line, or
    /// renews its place there: it stays until `idle` after now. Returns its ticket and when it
    /// joined; `None` when the line or the zone has no room.
    fn enter(
        &mut self,
        arena: &impl Arena,
        hash: u64,
        key: PermitKey<'_>,
        queue: Queue,
        now_ms: i64,
    ) -> Option<(u64, i64)> {
        let until = now_ms.saturating_add(queue.idle_ms).max(1);
        if let Some(waiter) = self.waiters.find(hash, key) {
            // SAFETY: `waiter` was just found in the waiters' table, under the lock.
            unsafe {
                self.waiters.renew(waiter, until);
                return Some((waiter.as_ref().seq, waiter.as_ref().granted_ms));
            }
        }
        // The waiter's memory first: a ticket is only taken for a waiter who has one.
        let info = PermitInfo {
            key: key.key.to_vec(),
            item: key.item.to_vec(),
            seq: 0,
            granted_ms: now_ms,
            expires_ms: Some(until),
        };
        self.waiters.store(arena, hash, &info)?;
        let waiter = self.waiters.find(hash, key)?;
        match self.state.join(&mut self.ranks) {
            Ok(ticket) => {
                // SAFETY: as above.
                unsafe { (*waiter.as_ptr()).seq = ticket };
                Some((ticket, now_ms))
            }
            Err(LineFull::Full) => {
                // SAFETY: as above; stored just now, and nothing else refers to it.
                unsafe { self.waiters.remove(arena, waiter) };
                None
            }
        }
    }

    /// Waiters silent past their time leave, the longest silent first: at most
    /// [`LEAVE_PER_STEP`] a step, so that a crowd leaving at once costs no request a long
    /// hold of the lock.
    fn leave_silent(&mut self, arena: &impl Arena, now_ms: i64) {
        for _ in 0..LEAVE_PER_STEP {
            let Some(head) = NonNull::new(self.waiters.timed.head) else {
                break;
            };
            // SAFETY: the head of a list is a live waiter; the lock is held.
            let (expires_ms, ticket) = unsafe { (head.as_ref().expires_ms, head.as_ref().seq) };
            if expires_ms > now_ms {
                break;
            }
            // SAFETY: as above.
            unsafe { self.waiters.remove(arena, head) };
            self.state.leave(&mut self.ranks, ticket, false);
        }
    }

    /// The called waiter with `ticket`, who joined at `joined_ms`, leaves the line to come in.
    fn leave_called(
        &mut self,
        arena: &impl Arena,
        hash: u64,
        key: PermitKey<'_>,
        ticket: u64,
        joined_ms: i64,
        now_ms: i64,
    ) {
        if let Some(waiter) = self.waiters.find(hash, key) {
            // SAFETY: just found in the waiters' table, under the lock.
            unsafe { self.waiters.remove(arena, waiter) };
        }
        self.state.leave(&mut self.ranks, ticket, true);
        self.state.count_admission(joined_ms, now_ms);
    }
}

/// A draw that depends only on the key, the round and a secret: the same answer in every
/// worker (and, with a secret shared through Redis, on every host) for the whole round, so
/// asking again does not draw again, and nothing is stored for the losers. Uniform in [0, 1).
///
/// With an item, the draw is the buyer's for that item: each item is a draw of its own.
pub fn keyed_draw(secret: [u64; 2], key: PermitKey<'_>, round: u64) -> f64 {
    let mut h = SipHasher13::new_with_keys(secret[0], secret[1]);
    h.write_u64(round);
    h.write(key.key);
    if !key.item.is_empty() {
        // The key's length first, so that no other key and item hash alike.
        h.write_usize(key.key.len());
        h.write(key.item);
    }
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The buyer's key and the item whose bytes follow a permit's header.
///
/// # Safety
/// `p` points to a permit written by `PermitTable::store`, and the zone's lock is held.
unsafe fn permit_key<'a>(p: *const Permit) -> PermitKey<'a> {
    // SAFETY: `store` copied `key_len` bytes of key and `item_len` of item right after the
    // header.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            p.add(1).cast::<u8>(),
            (*p).key_len as usize + (*p).item_len as usize,
        )
    };
    // SAFETY: as above.
    let (key, item) = bytes.split_at(unsafe { (*p).key_len } as usize);
    PermitKey { key, item }
}

/// The name that follows an item's header.
///
/// # Safety
/// `item` is a live item of a table whose lock is held.
unsafe fn item_name<'a>(item: NonNull<Item>) -> &'a [u8] {
    // SAFETY: `item_or_new` copied `len` bytes right after the header.
    unsafe {
        core::slice::from_raw_parts(item.as_ptr().add(1).cast::<u8>(), item.as_ref().len as usize)
    }
}

fn item_info(item: NonNull<Item>) -> ItemInfo {
    // SAFETY: callers hold the lock and pass a live item.
    let (i, name) = unsafe { (item.as_ref(), item_name(item)) };
    ItemInfo {
        item: name.to_vec(),
        number: i.number,
        permits: i.permits,
        registered: i.registered,
        max_permits: stock(i.max_permits),
        stock: stock(i.stock),
    }
}

fn held(permit: NonNull<Permit>) -> Held {
    // SAFETY: callers hold the lock and pass a live permit.
    let p = unsafe { permit.as_ref() };
    Held { seq: p.seq, expires_ms: (p.expires_ms != 0).then_some(p.expires_ms) }
}

fn info(permit: NonNull<Permit>) -> PermitInfo {
    // SAFETY: callers hold the lock and pass a live permit.
    let (p, key) = unsafe { (permit.as_ref(), permit_key(permit.as_ptr())) };
    PermitInfo {
        key: key.key.to_vec(),
        item: key.item.to_vec(),
        seq: p.seq,
        granted_ms: p.granted_ms,
        expires_ms: (p.expires_ms != 0).then_some(p.expires_ms),
    }
}

/// A table and the region it lives in: each call takes the lock once.
pub struct ZoneStore<'a, S: Shared> {
    shared: S,
    table: NonNull<PermitTable>,
    now_ms: i64,
    ttl_ms: Option<i64>,
    /// Where new permits' numbers come from, when not from the table (see `insert`).
    numbers: Option<&'a AtomicU64>,
    newly_full: bool,
    line_newly_full: bool,
    settled: Vec<PermitInfo>,
}

/// A place in the listing order of a zone's permits (soonest expiry first, then those without
/// one; each in the order of their numbers): the permit a page ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub expires_ms: Option<i64>,
    pub seq: u64,
    pub key: Vec<u8>,
}

impl Cursor {
    /// The cursor that stands at `p`.
    pub fn of(p: &PermitInfo) -> Cursor {
        Cursor { expires_ms: p.expires_ms, seq: p.seq, key: p.key.clone() }
    }

    /// The place of `p` in the listing order, as it compares.
    fn at(p: &PermitInfo) -> (i64, u64) {
        (p.expires_ms.unwrap_or(i64::MAX), p.seq)
    }

    fn place(&self) -> (i64, u64) {
        (self.expires_ms.unwrap_or(i64::MAX), self.seq)
    }
}

/// What granting a list of keys did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    pub granted: Vec<PermitInfo>,
    pub already: u64,
    pub zone_full: u64,
}

impl<'a, S: Shared> ZoneStore<'a, S> {
    /// # Safety
    /// `table` was created by [`PermitTable::create`] inside `shared`, and stays mapped for `'a`.
    pub unsafe fn new(shared: S, table: NonNull<PermitTable>, now_ms: i64) -> Self {
        ZoneStore {
            shared,
            table,
            now_ms,
            ttl_ms: None,
            numbers: None,
            newly_full: false,
            line_newly_full: false,
            settled: Vec::new(),
        }
    }

    /// New permits take their numbers from `numbers`, a counter shared beyond this zone (a
    /// state file's: see `journal.rs`).
    pub fn with_numbers(mut self, numbers: Option<&'a AtomicU64>) -> Self {
        self.numbers = numbers;
        self
    }

    /// Permits admitted through this store expire `ttl_ms` after admission.
    pub fn with_ttl(mut self, ttl_ms: Option<i64>) -> Self {
        self.ttl_ms = ttl_ms;
        self
    }

    /// True once, for the request that first found the zone without room for a permit.
    pub fn newly_full(&self) -> bool {
        self.newly_full
    }

    /// True once, for the request that first found the waiting line without room for him (its
    /// tickets, or the zone's memory).
    pub fn line_newly_full(&self) -> bool {
        self.line_newly_full
    }

    /// The permits the pre-queue's draw granted in this store's steps (for the state file).
    pub fn take_settled(&mut self) -> Vec<PermitInfo> {
        core::mem::take(&mut self.settled)
    }

    /// The table's statistics and overrides, which need no lock.
    pub fn table(&self) -> &'a PermitTable {
        // SAFETY: see `new`; only the atomics and immutable fields are read without the lock.
        unsafe { self.table.as_ref() }
    }

    /// Permits stored now, read under the lock after taking expired ones off.
    pub fn permits(&mut self) -> u64 {
        self.with_table(|table, _| table.permits())
    }

    /// Permits stored now, keys waiting for the pre-queue's draw, and the line, in one
    /// locked step.
    pub fn counts(&mut self) -> (u64, u64, LineFigures) {
        let now_ms = self.now_ms;
        self.with_table(|table, arena| {
            (table.permits(), table.prequeued(), table.line_figures(arena, now_ms))
        })
    }

    /// Runs `f` on the table with the lock held, after taking expired permits off.
    fn with_table<T>(&mut self, f: impl FnOnce(&mut PermitTable, &S::Locked<'_>) -> T) -> T {
        let locked = self.shared.lock();
        // SAFETY: see `new`; the lock serialises every access to the table across workers.
        let table = unsafe { self.table.as_mut() };
        table.expire(&locked, self.now_ms);
        f(table, &locked)
    }

    /// As [`Self::with_table`], for a gate's step: in a sale with a pre-queue, its draw comes
    /// first, in the same locked step.
    fn with_sale<T>(
        &mut self,
        sale: &Sale,
        f: impl FnOnce(&mut PermitTable, &S::Locked<'_>) -> T,
    ) -> T {
        let (now_ms, expires_ms) = (self.now_ms, self.ttl_ms.map(|ttl| expiry(self.now_ms, ttl)));
        let numbers = self.numbers;
        let mut settled = None;
        let result = self.with_table(|table, arena| {
            if sale.prequeue_ms.is_some() && !table.prequeue.is_null() {
                let (granted, full) =
                    table.settle_prequeue(arena, sale, now_ms, expires_ms, numbers);
                settled = Some((granted, full && table.report_full()));
            }
            f(table, arena)
        });
        if let Some((granted, newly_full)) = settled {
            self.settled.extend(granted);
            self.newly_full |= newly_full;
        }
        result
    }

    /// One permit, if `key` holds one.
    pub fn get(&mut self, key: PermitKey<'_>) -> Option<PermitInfo> {
        self.with_table(|table, _| table.find(table.hash(key.key), key).map(info))
    }

    /// Up to `limit` items, in the order the zone first saw them, after the item numbered
    /// `after`.
    pub fn items(&mut self, after: u64, limit: usize) -> Vec<ItemInfo> {
        self.with_table(|table, _| {
            table.items().into_iter().filter(|i| i.number > after).take(limit).collect()
        })
    }

    /// How many items the zone has (with a permit, a registration or a stock set through the
    /// API), and how many of them are at their cap: the metrics' figures, one walk under the
    /// lock.
    pub fn item_figures(&mut self, zone_cap: Cap) -> (u64, u64) {
        self.with_table(|table, _| {
            table.all_items().map(item_info).fold((0, 0), |(items, sold_out), item| {
                let at_cap = item.cap(zone_cap).is_some_and(|cap| item.permits >= cap);
                (items + 1, sold_out + u64::from(at_cap))
            })
        })
    }

    /// One item, if the zone has it.
    pub fn item(&mut self, name: &[u8]) -> Option<ItemInfo> {
        self.with_table(|table, _| table.item(name).map(item_info))
    }

    /// Sets an item's stock (`None`: back to the configuration's), at once for every worker;
    /// returns the item as it is now, or `None` when the zone has no room for it.
    pub fn set_item_stock(&mut self, name: &[u8], max_permits: Option<u64>) -> Option<ItemInfo> {
        self.with_table(|table, arena| {
            let item = match max_permits {
                Some(_) => table.item_or_new(arena, name)?,
                None => match table.item(name) {
                    Some(item) => item,
                    None => return Some(ItemInfo { item: name.to_vec(), ..ItemInfo::default() }),
                },
            };
            // SAFETY: a live item of this table; the lock is held.
            unsafe { (*item.as_ptr()).max_permits = max_permits.unwrap_or(NO_STOCK) };
            let shown = item_info(item);
            table.drop_unused(arena, item);
            Some(shown)
        })
    }

    /// Up to `limit` permits, in list order, starting after the place `after` (the last permit
    /// of the page before). That permit may be gone (revoked, expired, granted anew): the page
    /// then starts at the first permit after its place, so that no permit is skipped.
    pub fn list(&mut self, after: Option<&Cursor>, limit: usize) -> Vec<PermitInfo> {
        self.with_table(|table, _| {
            let start = match after {
                None => ptr::null(),
                Some(cursor) => {
                    // The buyer's permit with the cursor's number, whatever its item.
                    let same = |(p, k): &(NonNull<Permit>, PermitKey<'_>)| {
                        k.key == cursor.key.as_slice() && held(*p).seq == cursor.seq
                    };
                    let found = table.chain(table.hash(&cursor.key)).find(same).map(|(p, _)| p);
                    match found {
                        Some(permit) => permit.as_ptr().cast_const(),
                        // Gone: walk to its place (an operator's listing, not a request's path).
                        None => table
                            .permits_after(ptr::null())
                            .take_while(|p| Cursor::at(&info(*p)) <= cursor.place())
                            .last()
                            .map_or(ptr::null(), |p| p.as_ptr().cast_const()),
                    }
                }
            };
            table.permits_after(start).take(limit).map(info).collect()
        })
    }

    /// Grants permits to `keys` whatever the cap (an operator's decision); `ttl_ms` per key.
    pub fn grant(&mut self, keys: &[Grant]) -> Grants {
        let (now_ms, numbers) = (self.now_ms, self.numbers);
        self.with_table(|table, arena| {
            let mut grants = Grants::default();
            for (key, item, ttl_ms) in keys {
                let hash = table.hash(key);
                let permit_key = PermitKey { key, item };
                if table.find(hash, permit_key).is_some() {
                    grants.already += 1;
                } else if let Some(seq) = table.insert(
                    arena,
                    hash,
                    permit_key,
                    now_ms,
                    ttl_ms.map(|t| expiry(now_ms, t)),
                    numbers,
                ) {
                    grants.granted.push(PermitInfo {
                        key: key.clone(),
                        item: item.clone(),
                        seq,
                        granted_ms: now_ms,
                        expires_ms: ttl_ms.map(|t| expiry(now_ms, t)),
                    });
                } else {
                    grants.zone_full += 1;
                }
            }
            grants
        })
    }

    /// Undoes the admission of `key`'s permit `seq`, which never reached the buyer (the
    /// state file could not record it): not counted as granted, nor as revoked.
    pub fn undo(&mut self, key: PermitKey<'_>, seq: u64) {
        if self.take_numbered(key, seq) {
            let _ = self.table().stats.granted.fetch_update(
                Ordering::AcqRel,
                Ordering::Acquire,
                |granted| granted.checked_sub(1),
            );
        }
    }

    /// Revokes the permit of `key` if it is still the one numbered `seq` (not a permit granted
    /// anew meanwhile); true if it was.
    pub fn revoke_numbered(&mut self, key: PermitKey<'_>, seq: u64) -> bool {
        let revoked = self.take_numbered(key, seq);
        if revoked {
            Stats::count(&self.table().stats.revoked);
        }
        revoked
    }

    /// Takes the permit of `key` out of the table if it is numbered `seq`.
    fn take_numbered(&mut self, key: PermitKey<'_>, seq: u64) -> bool {
        self.with_table(|table, arena| {
            let Some(permit) = table.find(table.hash(key.key), key) else {
                return false;
            };
            // SAFETY: `permit` was just found in this table, under the lock.
            if unsafe { permit.as_ref() }.seq != seq {
                return false;
            }
            // SAFETY: as above.
            unsafe { table.remove(arena, permit) };
            true
        })
    }

    /// The number the next permit gets, as this zone knows it.
    pub fn next_number(&mut self) -> u64 {
        let numbers = self.numbers.map_or(0, |n| n.load(Ordering::Acquire));
        self.with_table(|table, _| table.next_seq()).max(numbers)
    }

    /// Takes the permit of `key` out of the table; returns its number.
    fn take(&mut self, key: PermitKey<'_>) -> Option<u64> {
        self.with_table(|table, arena| {
            let permit = table.find(table.hash(key.key), key)?;
            // SAFETY: `permit` was just found in this table, under the lock.
            let seq = unsafe { permit.as_ref() }.seq;
            // SAFETY: as above.
            unsafe { table.remove(arena, permit) };
            Some(seq)
        })
    }

    /// The zone for its state file: the next number and every permit.
    pub fn snapshot(&mut self) -> (u64, Vec<PermitInfo>) {
        self.with_table(|table, _| {
            (table.next_seq(), table.permits_after(ptr::null()).map(info).collect())
        })
    }

    /// For a zone kept in Redis: what this host knows of `key`'s permit, and whether it
    /// learned it less than `cache_ms` ago (a cached permit's `granted_ms` is when it last
    /// heard of it).
    pub fn cached(&mut self, key: PermitKey<'_>, cache_ms: i64) -> Cached {
        let now_ms = self.now_ms;
        self.with_table(|table, _| match table.find(table.hash(key.key), key) {
            // SAFETY: `permit` was just found in this table, under the lock.
            Some(permit) if now_ms - unsafe { permit.as_ref() }.granted_ms < cache_ms => {
                Cached::Fresh(held(permit))
            }
            Some(_) => Cached::Stale,
            None => Cached::Absent,
        })
    }

    /// For a zone kept in Redis: keeps the permit Redis gave `key` (`new` when it was just
    /// admitted), as heard of now; false when the zone has no room for it.
    pub fn remember(&mut self, key: PermitKey<'_>, permit: Held, new: bool) -> bool {
        let info = PermitInfo {
            key: key.key.to_vec(),
            item: key.item.to_vec(),
            seq: permit.seq,
            granted_ms: self.now_ms,
            expires_ms: permit.expires_ms,
        };
        let stored = self.remember_all(core::slice::from_ref(&info));
        if stored && new {
            Stats::count(&self.table().stats.granted);
        }
        stored
    }

    /// For a zone kept in Redis: keeps a copy of every permit Redis has, as heard of now, in
    /// one locked step; false when the zone has no room for them all.
    pub fn remember_all(&mut self, permits: &[PermitInfo]) -> bool {
        let now_ms = self.now_ms;
        self.with_table(|table, arena| {
            permits.iter().all(|p| {
                let hash = table.hash(&p.key);
                if let Some(old) = table.find(hash, p.permit_key()) {
                    // SAFETY: `old` was just found in this table, under the lock.
                    unsafe { table.remove(arena, old) };
                }
                table.store(arena, hash, &PermitInfo { granted_ms: now_ms, ..p.clone() }).is_some()
            })
        })
    }

    /// For a zone kept in Redis: drops what this host knew of `key`'s permit, which Redis no
    /// longer has.
    pub fn forget(&mut self, key: PermitKey<'_>) {
        self.take(key);
    }

    /// For a zone kept in Redis: what this host heard of `key` in Redis's line or pre-queue.
    pub fn heard(&mut self, key: &[u8]) -> Option<Heard> {
        self.with_table(|table, _| table.heard(key))
    }

    /// For a zone kept in Redis: Redis placed `key` in its line, now; returns what the buyer
    /// is shown (never a place above the one he was last shown for the same ticket).
    pub fn hear_place(&mut self, key: &[u8], ticket: u64, position: u64) -> Heard {
        let now_ms = self.now_ms;
        let heard = |before| Heard::new(before, ticket, position, now_ms);
        self.with_table(|table, arena| table.hear(arena, key, heard)).unwrap_or_else(|| heard(None))
    }

    /// For a zone kept in Redis: Redis registered `key` for the pre-queue.
    pub fn hear_registered(&mut self, key: &[u8]) {
        let now_ms = self.now_ms;
        self.with_table(|table, arena| table.hear(arena, key, |_| Heard::registered(now_ms)));
    }

    /// For a zone kept in Redis: a waiter's refresh, answered from what this host heard if
    /// the rule allows (see [`Heard`]); the place shown is remembered.
    pub fn estimate(&mut self, key: &[u8], queue: &crate::sale::Queue) -> Estimate {
        let now_ms = self.now_ms;
        self.with_table(|table, arena| {
            let Some(heard) = table.heard(key) else {
                return Estimate::Ask;
            };
            let estimate = heard.estimate(queue, now_ms);
            if let Estimate::Queued(waiting) = estimate {
                table.hear(arena, key, |_| Heard { shown: waiting.position, ..heard });
            }
            estimate
        })
    }

    /// For a zone kept in Redis: drops what this host heard of `key` in Redis's line (he was
    /// admitted, or told SOLD_OUT) or pre-queue.
    pub fn unhear(&mut self, key: &[u8]) {
        self.with_table(|table, _| table.unhear(key));
    }

    /// Revokes every permit; returns how many there were.
    pub fn clear(&mut self) -> u64 {
        self.with_table(|table, arena| {
            let mut revoked = 0;
            while let Some(permit) = NonNull::new(table.next_in_order(ptr::null())) {
                // SAFETY: `permit` is on one of this table's lists.
                unsafe { table.remove(arena, permit) };
                revoked += 1;
            }
            table.stats.revoked.fetch_add(revoked, Ordering::Relaxed);
            revoked
        })
    }
}

/// What a host knows of a key's permit in a zone kept in Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cached {
    /// Heard of within the cache time: trusted without asking.
    Fresh(Held),
    /// Heard of longer ago: Redis may have revoked it since.
    Stale,
    Absent,
}

/// The draw's view of a zone kept in Redis: this host's cache of permits and of SOLD_OUT.
/// Redis alone knows the count, so the cap is left to it.
/// A buyer this host heard is in Redis's line is in line: he draws no more.
pub struct RemoteView<'s, 'a, S: Shared> {
    pub store: &'s mut ZoneStore<'a, S>,
    pub cache_ms: i64,
    /// Set by a registration for the pre-queue that only Redis can make (the host has not
    /// heard of it): the gate asks Redis before it answers PREQUEUED.
    pub registering: bool,
}

impl<'s, 'a, S: Shared> RemoteView<'s, 'a, S> {
    pub fn new(store: &'s mut ZoneStore<'a, S>, cache_ms: i64) -> Self {
        RemoteView { store, cache_ms, registering: false }
    }
}

impl<S: Shared> PermitLookup for RemoteView<'_, '_, S> {
    fn lookup(&mut self, key: PermitKey<'_>, sale: &Sale) -> Lookup {
        let now_ms = self.store.now_ms;
        match self.store.cached(key, self.cache_ms) {
            Cached::Fresh(held) => Lookup::Permitted(held),
            Cached::Stale => Lookup::Recheck,
            // The SOLD_OUT heard is the zone's: an item's is not kept (see `Link::sold_out`).
            Cached::Absent
                if key.item.is_empty() && self.store.table().link.trusts_sold_out(now_ms) =>
            {
                Lookup::SoldOut
            }
            Cached::Absent
                if sale.queue.is_some()
                    && self.store.heard(key.key).is_some_and(|heard| heard.in_line()) =>
            {
                Lookup::InLine
            }
            Cached::Absent => Lookup::Open,
        }
    }

    fn register(&mut self, key: PermitKey<'_>, sale: &Sale) -> Registration {
        // As in a zone kept here: an item without stock registers nobody (the configured
        // stock only: one set through the API is Redis's).
        if !key.item.is_empty() && sale.cap == Some(0) {
            return Registration::NoStock;
        }
        // A registration is heard of by its field: the buyer's for one item is not another's.
        if self.store.heard(&key.field()).is_none_or(|heard| heard.in_line()) {
            self.registering = true;
        }
        Registration::Registered
    }

    fn lookup_always(&self) -> bool {
        true
    }
}

impl<S: Shared> PermitLookup for ZoneStore<'_, S> {
    fn lookup(&mut self, key: PermitKey<'_>, sale: &Sale) -> Lookup {
        self.with_sale(sale, |table, _| {
            let hash = table.hash(key.key);
            match table.barrier(hash, key, sale) {
                Some(Admission::Permitted(held)) => Lookup::Permitted(held),
                Some(Admission::LimitReached) => Lookup::LimitReached,
                Some(_) => Lookup::SoldOut,
                None if sale.queue.is_some() && table.in_line(hash, key.key) => Lookup::InLine,
                None => Lookup::Open,
            }
        })
    }

    fn register(&mut self, key: PermitKey<'_>, sale: &Sale) -> Registration {
        let now_ms = self.now_ms;
        let (registered, newly_full) =
            self.with_table(|table, arena| match table.register(arena, key, sale.cap, now_ms) {
                Registration::ZoneFull => (Registration::ZoneFull, table.report_full()),
                other => (other, false),
            });
        self.newly_full |= newly_full;
        registered
    }
}

impl<S: Shared> PermitStore for ZoneStore<'_, S> {
    fn admit(&mut self, key: PermitKey<'_>, sale: &Sale) -> Admission {
        let (now_ms, expires_ms) = (self.now_ms, self.ttl_ms.map(|ttl| expiry(self.now_ms, ttl)));
        let numbers = self.numbers;
        let (admission, newly_full) = self.with_sale(sale, |table, arena| {
            table.admission(arena, key, sale, now_ms, expires_ms, numbers)
        });
        self.newly_full |= newly_full;
        admission
    }

    fn queue(&mut self, key: PermitKey<'_>, sale: &Sale) -> Queued {
        let Some(queue) = sale.queue else {
            return Queued::Decided(self.admit(key, sale));
        };
        let (now_ms, expires_ms) = (self.now_ms, self.ttl_ms.map(|ttl| expiry(self.now_ms, ttl)));
        let numbers = self.numbers;
        let (queued, newly_full) = self.with_sale(sale, |table, arena| {
            table.queue_step(arena, key, sale, queue, now_ms, expires_ms, numbers)
        });
        if queued == Queued::Full {
            self.line_newly_full |= newly_full;
        } else {
            self.newly_full |= newly_full;
        }
        queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(key: &[u8]) -> PermitKey<'_> {
        PermitKey::single(key)
    }
    use crate::sale::OverridesPatch;
    use std::alloc::{alloc, dealloc, Layout};
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
        fn used(&self) -> usize {
            self.used.lock().unwrap().get()
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
            let layout = Layout::from_size_align(size, 8).ok()?;
            // SAFETY: `layout` has a non-zero size.
            NonNull::new(unsafe { alloc(layout) })
        }

        unsafe fn free(&self, p: NonNull<u8>, size: usize) {
            self.0.set(self.0.get() - size);
            // SAFETY: `alloc` made `p` with this layout.
            unsafe { dealloc(p.as_ptr(), Layout::from_size_align_unchecked(size, 8)) }
        }
    }

    impl Shared for Heap {
        type Locked<'a> = HeapLocked<'a>;
        fn lock(&self) -> HeapLocked<'_> {
            HeapLocked(self.used.lock().unwrap(), self.budget)
        }
    }

    // The tests leak their tables; a few megabytes per test process.
    fn table(heap: &Heap, buckets: usize) -> NonNull<PermitTable> {
        PermitTable::create(&heap.lock(), buckets, [1, 2], b"$arg_user").unwrap()
    }

    fn store(heap: &Heap, t: NonNull<PermitTable>, now_ms: i64) -> ZoneStore<'_, &Heap> {
        // SAFETY: `t` was created in `heap` and the heap outlives the store.
        unsafe { ZoneStore::new(heap, t, now_ms) }
    }

    /// A sale with this cap and nothing else: what the store's steps read.
    fn capped(cap: Cap) -> Sale {
        Sale { cap, ..Sale::default() }
    }

    /// A permit without expiry, as steps report it.
    fn seq(seq: u64) -> Held {
        Held { seq, expires_ms: None }
    }

    fn keys(list: &[PermitInfo]) -> Vec<&[u8]> {
        list.iter().map(|p| &p.key[..]).collect()
    }

    #[test]
    fn admit_then_permitted_then_cap() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 16);
        let mut s = store(&heap, t, 0);
        assert_eq!(s.lookup(one(b"alice"), &capped(Some(2))), Lookup::Open);
        assert_eq!(s.admit(one(b"alice"), &capped(Some(2))), Admission::Admitted(seq(1)));
        assert_eq!(s.lookup(one(b"alice"), &capped(Some(2))), Lookup::Permitted(seq(1)));
        assert_eq!(s.admit(one(b"alice"), &capped(Some(2))), Admission::Permitted(seq(1)));
        assert_eq!(s.admit(one(b"bob"), &capped(Some(2))), Admission::Admitted(seq(2)));
        assert_eq!(s.lookup(one(b"carol"), &capped(Some(2))), Lookup::SoldOut);
        assert_eq!(s.admit(one(b"carol"), &capped(Some(2))), Admission::SoldOut);
        // A higher cap elsewhere still sees the two permits.
        assert_eq!(s.admit(one(b"carol"), &capped(Some(3))), Admission::Admitted(seq(3)));
        assert_eq!(s.permits(), 3);
    }

    #[test]
    fn keys_are_compared_whole() {
        let heap = Heap::new(1 << 20);
        // One bucket: every key collides, so only the full comparison tells them apart.
        let t = table(&heap, 1);
        let mut s = store(&heap, t, 0);
        assert_eq!(s.admit(one(b"abc"), &capped(None)), Admission::Admitted(seq(1)));
        for other in [&b"ab"[..], b"abcd", b"abd", b"\xffbc"] {
            assert_eq!(s.lookup(one(other), &capped(None)), Lookup::Open);
        }
        assert_eq!(s.admit(one(b"ab"), &capped(None)), Admission::Admitted(seq(2)));
        assert_eq!(s.lookup(one(b"abc"), &capped(None)), Lookup::Permitted(seq(1)));
        assert_eq!(s.lookup(one(b"ab"), &capped(None)), Lookup::Permitted(seq(2)));
    }

    #[test]
    fn permits_are_numbered_in_order_of_admission_and_never_reused() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 64);
        let mut s = store(&heap, t, 42);
        for i in 0..100u32 {
            assert_eq!(
                s.admit(one(&i.to_be_bytes()), &capped(None)),
                Admission::Admitted(seq(u64::from(i) + 1))
            );
        }
        let p = s.get(one(&7u32.to_be_bytes())).unwrap();
        assert_eq!((p.seq, p.granted_ms, p.expires_ms), (8, 42, None));
        assert!(s.revoke_numbered(one(&7u32.to_be_bytes()), 8));
        assert_eq!(s.admit(one(&7u32.to_be_bytes()), &capped(None)), Admission::Admitted(seq(101)));
    }

    #[test]
    fn a_full_zone_refuses_reports_once_and_again_after_room_is_made() {
        let heap = Heap::new(4096);
        let t = table(&heap, 16);
        let mut s = store(&heap, t, 0);
        let mut admitted = 0;
        while let Admission::Admitted(_) =
            s.admit(one(format!("buyer-{admitted}").as_bytes()), &capped(None))
        {
            admitted += 1;
        }
        assert!(admitted > 10, "only {admitted} permits fit");
        assert!(s.newly_full());
        // "buyer-x" needs as much room as "buyer-0": the room its revocation gives back.
        let mut later = store(&heap, t, 0);
        assert_eq!(later.admit(one(b"buyer-x"), &capped(None)), Admission::ZoneFull);
        assert!(!later.newly_full(), "the full zone is reported once");
        assert_eq!(later.admit(one(b"buyer-0"), &capped(None)), Admission::Permitted(seq(1)));
        assert_eq!(later.permits(), admitted);
        assert!(later.revoke_numbered(one(b"buyer-0"), 1));
        assert_eq!(
            later.admit(one(b"buyer-x"), &capped(None)),
            Admission::Admitted(seq(admitted + 1))
        );
    }

    #[test]
    fn expired_permits_stop_counting_and_free_their_memory() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 16);
        let empty = heap.used();
        let mut s = store(&heap, t, 1_000).with_ttl(Some(500));
        let a = Held { seq: 1, expires_ms: Some(1_500) };
        assert_eq!(s.admit(one(b"a"), &capped(Some(2))), Admission::Admitted(a));
        assert_eq!(s.lookup(one(b"a"), &capped(Some(2))), Lookup::Permitted(a));
        let mut s = store(&heap, t, 1_200).with_ttl(Some(500));
        let b = Held { seq: 2, expires_ms: Some(1_700) };
        assert_eq!(s.admit(one(b"b"), &capped(Some(2))), Admission::Admitted(b));
        assert_eq!(s.admit(one(b"c"), &capped(Some(2))), Admission::SoldOut);
        assert_eq!(s.get(one(b"a")).unwrap().expires_ms, Some(1_500));
        // At 1,500 a's permit is gone: its slot goes back to the draw, and a must win again.
        let mut s = store(&heap, t, 1_500).with_ttl(Some(500));
        assert_eq!(s.lookup(one(b"a"), &capped(Some(2))), Lookup::Open);
        let c = Held { seq: 3, expires_ms: Some(2_000) };
        assert_eq!(s.admit(one(b"c"), &capped(Some(2))), Admission::Admitted(c));
        assert_eq!(s.table().stats.expired.load(Ordering::Relaxed), 1);
        let mut s = store(&heap, t, 10_000);
        assert_eq!(s.permits(), 0);
        assert_eq!(heap.used(), empty);
        assert_eq!(s.table().stats.expired.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_failing_compaction_is_tried_again_only_once_the_journal_doubled() {
        let health = JournalHealth::default();
        let mut tries = 0;
        // 10 MB of 1 KB records whose compactions all fail.
        for _ in 0..10_000 {
            if health.appended(1_000, 0) {
                tries += 1;
                health.compacted(None);
            }
        }
        assert!(health.compaction_failed());
        assert!(tries <= 8, "{tries} tries");
        // One that works starts the count afresh from what it left.
        health.compacted(Some(5_000));
        assert!(!health.compaction_failed());
        assert!(!health.appended(COMPACT_MIN_BYTES - 1, 0));
        assert!(health.appended(1, 0));
        // A worker killed while it compacted: another takes over once it is stale.
        assert!(!health.appended(1, 1_000));
        assert!(health.appended(1, COMPACT_STALE_MS + 2));
    }

    #[test]
    fn expiry_order_holds_for_mixed_lifetimes() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 16);
        let mut s = store(&heap, t, 0);
        let grants = s.grant(&[
            (b"late".to_vec(), vec![], Some(300)),
            (b"never".to_vec(), vec![], None),
            (b"soon".to_vec(), vec![], Some(100)),
            (b"middle".to_vec(), vec![], Some(200)),
            (b"soon".to_vec(), vec![], Some(999)),
        ]);
        assert_eq!((grants.granted.len(), grants.already, grants.zone_full), (4, 1, 0));
        assert_eq!(grants.granted[2].key, b"soon");
        assert_eq!(grants.granted[2].expires_ms, Some(100));
        let all = s.list(None, 10);
        assert_eq!(keys(&all), [&b"soon"[..], b"middle", b"late", b"never"]);
        let mut s = store(&heap, t, 200);
        assert_eq!(keys(&s.list(None, 10)), [&b"late"[..], b"never"]);
    }

    #[test]
    fn listing_pages_through_every_permit_once() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 16);
        let mut s = store(&heap, t, 0);
        for i in 0..25 {
            s.admit(one(format!("k{i:02}").as_bytes()), &capped(None));
        }
        s.grant(&[(b"t1".to_vec(), vec![], Some(50)), (b"t0".to_vec(), vec![], Some(10))]);
        let mut seen = Vec::new();
        let mut after: Option<Cursor> = None;
        loop {
            let page = s.list(after.as_ref(), 10);
            if page.is_empty() {
                break;
            }
            after = page.last().map(Cursor::of);
            seen.extend(page.into_iter().map(|p| p.key));
        }
        assert_eq!(seen.len(), 27);
        assert_eq!(&seen[..3], [b"t0".to_vec(), b"t1".to_vec(), b"k00".to_vec()]);
    }

    #[test]
    fn a_cursor_whose_permit_is_gone_still_leads_on() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 16);
        let mut s = store(&heap, t, 0);
        for k in ["k1", "k2", "k3", "k4"] {
            s.admit(one(k.as_bytes()), &capped(None));
        }
        let first = s.list(None, 1);
        let cursor = Cursor::of(&first[0]);
        // Revoked, then granted anew (a later number, so a later place): the page goes on at
        // k2, and k1 comes last.
        assert!(s.revoke_numbered(one(b"k1"), 1));
        assert_eq!(keys(&s.list(Some(&cursor), 10)), [&b"k2"[..], b"k3", b"k4"]);
        s.admit(one(b"k1"), &capped(None));
        assert_eq!(keys(&s.list(Some(&cursor), 10)), [&b"k2"[..], b"k3", b"k4", b"k1"]);
        // A place before everything, and one after everything.
        let nowhere = Cursor { expires_ms: Some(-1), seq: 0, key: b"gone".to_vec() };
        assert_eq!(s.list(Some(&nowhere), 10).len(), 4);
        let past = Cursor { expires_ms: None, seq: u64::MAX, key: b"gone".to_vec() };
        assert!(s.list(Some(&past), 10).is_empty());
        // Timed permits come first; a cursor among them whose permit expired goes on after it.
        s.grant(&[(b"t1".to_vec(), vec![], Some(100)), (b"t2".to_vec(), vec![], Some(200))]);
        let t1 = Cursor::of(&s.list(None, 1)[0]);
        let mut s = store(&heap, t, 150);
        assert_eq!(keys(&s.list(Some(&t1), 2)), [&b"t2"[..], b"k2"]);
    }

    #[test]
    fn revoke_and_clear_give_the_slots_back() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 4);
        let empty = heap.used();
        let mut s = store(&heap, t, 0);
        for k in [&b"a"[..], b"b", b"c"] {
            s.admit(one(k), &capped(Some(3)));
        }
        assert_eq!(s.admit(one(b"d"), &capped(Some(3))), Admission::SoldOut);
        assert!(s.revoke_numbered(one(b"b"), 2));
        assert!(!s.revoke_numbered(one(b"b"), 2));
        assert_eq!(s.get(one(b"b")), None);
        assert_eq!(s.admit(one(b"d"), &capped(Some(3))), Admission::Admitted(seq(4)));
        assert_eq!((s.clear(), s.next_number()), (3, 5));
        assert_eq!(s.permits(), 0);
        assert_eq!(heap.used(), empty);
        assert_eq!(s.table().stats.revoked.load(Ordering::Relaxed), 4);
        assert_eq!(s.table().stats.granted.load(Ordering::Relaxed), 4);
        assert_eq!(s.admit(one(b"a"), &capped(Some(3))), Admission::Admitted(seq(5)));
    }

    #[test]
    fn a_snapshot_restores_permits_numbers_and_counters() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 16);
        let mut s = store(&heap, t, 0).with_ttl(Some(1_000));
        s.admit(one(b"a"), &capped(None));
        s.admit(one(b"b"), &capped(None));
        assert!(s.revoke_numbered(one(b"a"), 1));
        let (next_seq, permits) = s.snapshot();
        let counters = s.table().stats.named_values();
        let fresh = table(&heap, 16);
        // SAFETY: the fresh table is alive and only this test uses it.
        let lost =
            unsafe { &mut *fresh.as_ptr() }.restore(&heap.lock(), &permits, next_seq, &counters);
        assert_eq!(lost, 0);
        let mut s = store(&heap, fresh, 0);
        assert_eq!(s.get(one(b"b")).map(|p| (p.seq, p.expires_ms)), Some((2, Some(1_000))));
        assert_eq!(s.get(one(b"a")), None);
        assert_eq!(s.table().stats.revoked.load(Ordering::Relaxed), 1);
        assert_eq!(s.admit(one(b"c"), &capped(None)), Admission::Admitted(seq(3)));
    }

    #[test]
    fn keyed_draws_are_stable_within_a_round_and_uniform() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 16);
        let s = store(&heap, t, 0);
        let table = s.table();
        assert_eq!(table.keyed_draw(one(b"alice"), 7), table.keyed_draw(one(b"alice"), 7));
        assert_ne!(table.keyed_draw(one(b"alice"), 7), table.keyed_draw(one(b"alice"), 8));
        let below = (0..100_000u32)
            .filter(|i| table.keyed_draw(one(format!("buyer{i}").as_bytes()), 1) < 0.1)
            .count();
        assert!((9_500..=10_500).contains(&below), "{below} of 100000 below 0.1");
        let other = PermitTable::create(&heap.lock(), 16, [3, 4], b"$k").unwrap();
        // SAFETY: the table is alive and only this test uses it.
        let other = unsafe { other.as_ref() };
        assert_ne!(
            table.keyed_draw(one(b"alice"), 1),
            other.keyed_draw(one(b"alice"), 1),
            "per zone"
        );
    }

    #[test]
    fn overrides_apply_over_the_configuration_until_cleared() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 16);
        let s = store(&heap, t, 0);
        let overrides = &s.table().overrides;
        let configured = Sale::default();
        assert_eq!(overrides.load(), Overrides::default());
        assert_eq!(overrides.load().apply(configured), configured);
        let set = OverridesPatch {
            block_ratio: Some(Some(0.25)),
            max_permits: Some(Some(7)),
            start_ms: Some(Some(100)),
            end_ms: None,
            queue_rate: None,
        };
        overrides.store(&overrides.load().patched(&set));
        let sale = overrides.load().apply(configured);
        assert_eq!(
            (sale.block_ratio.value(), sale.cap, sale.window.start_ms),
            (0.25, Some(7), Some(100))
        );
        let now = Overrides {
            block_ratio: Some(0.25),
            max_permits: Some(7),
            start_ms: Some(100),
            end_ms: None,
            queue_rate: None,
        };
        assert_eq!(overrides.load(), now);
        let change = OverridesPatch {
            max_permits: Some(None),
            end_ms: Some(Some(200)),
            ..OverridesPatch::default()
        };
        overrides.store(&overrides.load().patched(&change));
        assert_eq!(
            overrides.load(),
            Overrides { max_permits: None, end_ms: Some(200), ..now },
            "the fields the patch leaves stay"
        );
        assert_eq!(overrides.load().apply(configured).cap, None);
        overrides.store(&Overrides { max_permits: Some(0), ..Overrides::default() });
        assert_eq!(
            overrides.load(),
            Overrides { max_permits: Some(0), ..Overrides::default() },
            "a store replaces every field"
        );
        overrides.store(&Overrides { block_ratio: Some(2.0), ..Overrides::default() });
        assert_eq!(overrides.load().block_ratio, Some(2.0), "kept as given");
        assert_eq!(overrides.load().apply(configured), configured, "but no ratio: ignored");
    }

    #[test]
    fn cap_is_exact_under_concurrency() {
        let heap = Heap::new(16 << 20);
        let t = table(&heap, 1024);
        struct SendTable(NonNull<PermitTable>);
        // SAFETY: every access to the table goes through the heap's mutex.
        unsafe impl Sync for SendTable {}
        let shared_table = SendTable(t);
        let seqs: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|thread| {
                    let (heap, t) = (&heap, &shared_table);
                    scope.spawn(move || {
                        let mut s = store(heap, t.0, 0);
                        (0..2_000u32)
                            .filter_map(|i| {
                                match s.admit(
                                    one(format!("{thread}-{i}").as_bytes()),
                                    &capped(Some(100)),
                                ) {
                                    Admission::Admitted(held) => Some(held.seq),
                                    _ => None,
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=100).collect::<Vec<_>>());
        assert_eq!(store(&heap, t, 0).permits(), 100);
    }

    #[test]
    fn sizing() {
        assert_eq!(bucket_count(10 << 20), 65_536);
        assert_eq!(bucket_count(32 * 1024), 256);
        assert_eq!(bucket_count(0), 16);
        // A typical 40-byte key fits one 128-byte slab chunk with its header.
        assert_eq!(size_of::<Permit>(), 56);
        assert!(permit_size(40) <= 128);
        assert!(permit_size(200) <= 256);
    }

    #[test]
    fn foreign_layouts_are_detected() {
        let heap = Heap::new(1 << 20);
        let mut t = table(&heap, 16);
        // SAFETY: the table is alive and only this test uses it.
        let t = unsafe { t.as_mut() };
        assert!(t.is_compatible());
        assert_eq!(t.key_spec(), b"$arg_user");
        t.magic = 6;
        assert!(!t.is_compatible());
    }

    fn prequeued(cap: Cap) -> Sale {
        Sale { cap, prequeue_ms: Some(60_000), ..Sale::default() }
    }

    fn lined(per_second: u64, idle_ms: i64) -> Sale {
        let rate = crate::line::Rate::from_milli(per_second * 1000).unwrap();
        Sale { queue: Some(Queue { rate, idle_ms, refresh_ms: 20_000 }), ..Sale::default() }
    }

    fn place(queued: Queued) -> Option<u64> {
        match queued {
            Queued::Waiting(w) => Some(w.position),
            _ => None,
        }
    }

    #[test]
    fn the_line_keeps_places_and_lets_silent_waiters_go() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 64);
        let sale = lined(2, 10_000);
        let mut s = store(&heap, t, 1_000);
        let first: Vec<Queued> =
            (0..6).map(|i| s.queue(one(format!("w{i}").as_bytes()), &sale)).collect();
        assert!(matches!(first[0], Queued::Decided(Admission::Admitted(_))));
        assert!(matches!(first[1], Queued::Decided(Admission::Admitted(_))));
        assert_eq!(
            first[2..].iter().map(|q| place(*q)).collect::<Vec<_>>(),
            [Some(0), Some(1), Some(2), Some(3)]
        );
        assert_eq!(s.lookup(one(b"w5"), &sale), Lookup::InLine);
        assert_eq!(s.lookup(one(b"w0"), &sale), Lookup::Permitted(seq(1)));
        assert_eq!(place(s.queue(one(b"w5"), &sale)), Some(3), "asking again keeps the place");
        // w2 and w3 go silent; 11 s later they have left, and w4 and w5, who kept asking
        // (at 6 s), are called in, w4 first.
        let mut s = store(&heap, t, 6_000);
        assert_eq!(place(s.queue(one(b"w5"), &sale)), None, "called in by now");
        let mut s = store(&heap, t, 6_500);
        assert!(matches!(s.queue(one(b"w4"), &sale), Queued::Decided(Admission::Admitted(_))));
        let mut s = store(&heap, t, 17_000);
        let figures = s.counts().2;
        assert_eq!((figures.waiting, figures.left), (0, 2), "the silent two left");
        assert_eq!(figures.admitted, 4);
        assert_eq!(figures.admitted_last_minute, 4);
    }

    #[test]
    fn the_prequeue_takes_the_front_of_the_line_in_a_random_order() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 64);
        let mut s = store(&heap, t, 0);
        for i in 0..20 {
            s.register(one(format!("early-{i}").as_bytes()), &Sale::default());
        }
        let sale = Sale {
            prequeue_ms: Some(60_000),
            window: crate::sale::Window { start_ms: Some(1_000), end_ms: None },
            ..lined(1, 60_000)
        };
        let mut s = store(&heap, t, 1_000);
        // A late buyer joins behind all twenty.
        assert_eq!(place(s.queue(one(b"late"), &sale)), Some(19), "one of the twenty is called");
        let mut positions: Vec<u64> = (0..20)
            .filter_map(|i| place(s.queue(one(format!("early-{i}").as_bytes()), &sale)))
            .collect();
        assert_eq!(positions.len(), 19);
        positions.sort_unstable();
        assert_eq!(positions, (0..19).collect::<Vec<_>>());
        assert_eq!(s.table().prequeued(), 0);
    }

    #[test]
    fn the_prequeue_is_drawn_in_the_first_step_of_the_sale_and_freed() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 64);
        let empty = heap.used();
        let mut s = store(&heap, t, 0);
        for i in 0..50 {
            for _ in 0..3 {
                assert_eq!(
                    s.register(one(format!("early-{i}").as_bytes()), &Sale::default()),
                    Registration::Registered
                );
            }
        }
        assert_eq!(s.table().prequeued(), 50, "one registration per key");
        s.grant(&[(b"early-7".to_vec(), vec![], None)]);
        // A step without the pre-queue (the API, another location) leaves it waiting.
        assert_eq!(s.admit(one(b"other"), &capped(None)), Admission::Admitted(seq(2)));
        assert_eq!(s.table().prequeued(), 50);

        let mut s = store(&heap, t, 1_000).with_ttl(Some(60_000));
        assert_eq!(s.lookup(one(b"late"), &prequeued(Some(12))), Lookup::SoldOut);
        let settled = s.take_settled();
        assert_eq!(settled.len(), 10, "the cap's worth, less the permits already held");
        assert!(settled.iter().all(|p| p.key.starts_with(b"early-") && p.key != b"early-7"));
        assert!(settled.iter().all(|p| p.expires_ms == Some(61_000) && p.granted_ms == 1_000));
        let mut numbers: Vec<u64> = settled.iter().map(|p| p.seq).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (3..=12).collect::<Vec<_>>());
        assert_eq!(s.table().prequeued(), 0);
        assert_eq!(s.permits(), 12);
        assert!(s.take_settled().is_empty(), "drawn once");

        s.clear();
        assert_eq!(heap.used(), empty, "the pre-queue's memory is given back");
    }

    #[test]
    fn the_prequeue_draw_stops_at_a_full_zone() {
        let heap = Heap::new(8192);
        let t = table(&heap, 16);
        let mut s = store(&heap, t, 0);
        let mut registered = 0;
        while s.register(one(format!("buyer-{registered}").as_bytes()), &Sale::default())
            == Registration::Registered
        {
            registered += 1;
        }
        assert!(s.newly_full());
        assert!(registered > 20, "only {registered} registrations fit");
        let mut s = store(&heap, t, 1);
        let lookup = s.lookup(one(b"late"), &prequeued(None));
        let settled = s.take_settled().len();
        assert!(settled > 20 && settled <= registered, "{settled} of {registered} drawn");
        assert_eq!(s.permits(), settled as u64);
        if settled < registered {
            assert_eq!(lookup, Lookup::Open);
        }
    }

    #[test]
    fn a_redis_zone_trusts_what_it_heard_for_the_cache_time() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 64);
        let sale = capped(Some(1));
        let mut s = store(&heap, t, 1_000);
        assert_eq!(RemoteView::new(&mut s, 500).lookup(one(b"amy"), &sale), Lookup::Open);
        assert!(s.remember(one(b"amy"), seq(41), true));
        // Redis decides the cap: one permit here says nothing about it.
        assert_eq!(RemoteView::new(&mut s, 500).lookup(one(b"bob"), &sale), Lookup::Open);
        let mut s = store(&heap, t, 1_499);
        let mut view = RemoteView::new(&mut s, 500);
        assert_eq!(view.lookup(one(b"amy"), &sale), Lookup::Permitted(seq(41)));
        let mut s = store(&heap, t, 1_500);
        assert_eq!(s.cached(one(b"amy"), 500), Cached::Stale);
        assert_eq!(RemoteView::new(&mut s, 500).lookup(one(b"amy"), &sale), Lookup::Recheck);
        // Heard of again: fresh again, under the number Redis gave, counted as granted once.
        assert!(s.remember(one(b"amy"), seq(41), false));
        assert_eq!(s.cached(one(b"amy"), 500), Cached::Fresh(seq(41)));
        assert_eq!(s.permits(), 1);
        assert_eq!(s.table().stats.granted.load(Ordering::Relaxed), 1);
        s.forget(one(b"amy"));
        assert_eq!(s.cached(one(b"amy"), 500), Cached::Absent);
        assert_eq!(s.permits(), 0);
        s.table().link.sold_out(1_500, 500);
        assert_eq!(RemoteView::new(&mut s, 500).lookup(one(b"cy"), &sale), Lookup::SoldOut);
        let mut s = store(&heap, t, 2_000);
        assert_eq!(RemoteView::new(&mut s, 500).lookup(one(b"cy"), &sale), Lookup::Open);
    }

    #[test]
    fn a_redis_zone_remembers_its_waiters_places() {
        use crate::line::{Queue, Rate};
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 256);
        let queue =
            Queue { rate: Rate::from_milli(10_000).unwrap(), idle_ms: 10_000, refresh_ms: 2_000 };
        let sale = Sale { queue: Some(queue), ..Sale::default() };
        let mut s = store(&heap, t, 1_000);
        assert_eq!(s.estimate(b"amy", &queue), Estimate::Ask, "never heard of");
        assert_eq!(RemoteView::new(&mut s, 500).lookup(one(b"amy"), &sale), Lookup::Open);
        let heard = s.hear_place(b"amy", 3, 100);
        assert_eq!((heard.ticket, heard.shown), (3, 100));
        assert_eq!(RemoteView::new(&mut s, 500).lookup(one(b"amy"), &sale), Lookup::InLine);
        let mut s = store(&heap, t, 3_000);
        assert_eq!(
            s.estimate(b"amy", &queue),
            Estimate::Queued(crate::line::Waiting { position: 80, wait_seconds: 9 })
        );
        assert_eq!(s.heard(b"amy").unwrap().shown, 80, "what he was shown is kept");
        // Redis says 90 (the pace is slower than the host thinks): he is still shown 80.
        assert_eq!(s.hear_place(b"amy", 3, 90).shown, 80);
        s.unhear(b"amy");
        assert_eq!(s.heard(b"amy"), None);
        // Many waiters in a small cache: some are forgotten (a round trip each), none mixed up.
        let mut s = store(&heap, t, 4_000);
        for i in 0..1_000u64 {
            s.hear_place(format!("w{i}").as_bytes(), i + 1, i);
        }
        let known: Vec<u64> = (0..1_000u64)
            .filter_map(|i| s.heard(format!("w{i}").as_bytes()).map(|h| (h.ticket, i)))
            .map(|(ticket, i)| {
                assert_eq!(ticket, i + 1);
                i
            })
            .collect();
        assert!(known.len() >= 40 && known.len() <= 64, "{} known", known.len());
        // A registration for the pre-queue is not a place in line.
        s.hear_registered(b"bob");
        let mut view = RemoteView::new(&mut s, 500);
        assert_eq!(view.lookup(one(b"bob"), &sale), Lookup::Open);
        assert_eq!(view.register(one(b"bob"), &Sale::default()), Registration::Registered);
        assert!(!view.registering, "heard of: no round trip");
        assert_eq!(view.register(one(b"cy"), &Sale::default()), Registration::Registered);
        assert!(view.registering, "Redis registers cy");
    }

    #[test]
    fn a_copy_of_the_permits_replaces_what_was_known_in_one_step() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 64);
        let mut s = store(&heap, t, 1_000);
        assert!(s.remember(one(b"amy"), seq(1), true));
        let copy: Vec<PermitInfo> = (1..=3)
            .map(|n| PermitInfo {
                item: Vec::new(),
                key: format!("k{n}").into_bytes(),
                seq: n + 1,
                granted_ms: 0,
                expires_ms: None,
            })
            .chain([PermitInfo {
                item: Vec::new(),
                key: b"amy".to_vec(),
                seq: 1,
                granted_ms: 0,
                expires_ms: Some(9_000),
            }])
            .collect();
        let mut s = store(&heap, t, 2_000);
        assert!(s.remember_all(&copy));
        assert_eq!(s.permits(), 4);
        assert_eq!(
            s.cached(one(b"k2"), 500),
            Cached::Fresh(seq(3)),
            "heard of now, not when granted"
        );
        assert_eq!(
            s.cached(one(b"amy"), 500),
            Cached::Fresh(Held { seq: 1, expires_ms: Some(9_000) })
        );
        assert_eq!(s.table().stats.granted.load(Ordering::Relaxed), 1, "copies are not grants");
    }

    #[test]
    fn a_remembered_permit_keeps_its_expiry() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 64);
        let mut s = store(&heap, t, 1_000);
        assert!(s.remember(one(b"amy"), Held { seq: 3, expires_ms: Some(1_200) }, true));
        assert_eq!(
            s.cached(one(b"amy"), 10_000),
            Cached::Fresh(Held { seq: 3, expires_ms: Some(1_200) })
        );
        let mut s = store(&heap, t, 1_200);
        assert_eq!(s.cached(one(b"amy"), 10_000), Cached::Absent, "gone at its expiry");
    }

    fn of<'a>(key: &'a [u8], item: &'a [u8]) -> PermitKey<'a> {
        PermitKey { key, item }
    }

    #[test]
    fn each_item_has_its_cap_and_a_sold_out_item_leaves_the_others_alone() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 64);
        let mut s = store(&heap, t, 0);
        let two = Sale { itemized: true, ..capped(Some(2)) };
        assert_eq!(s.admit(of(b"amy", b"red"), &two), Admission::Admitted(seq(1)));
        assert_eq!(s.admit(of(b"bob", b"red"), &two), Admission::Admitted(seq(2)));
        assert_eq!(s.admit(of(b"cy", b"red"), &two), Admission::SoldOut);
        assert_eq!(s.lookup(of(b"cy", b"red"), &two), Lookup::SoldOut);
        assert_eq!(s.admit(of(b"cy", b"blue"), &two), Admission::Admitted(seq(3)));
        // Lucky once, lucky always, per item: amy holds red, not blue.
        assert_eq!(s.admit(of(b"amy", b"red"), &two), Admission::Permitted(seq(1)));
        assert_eq!(s.lookup(of(b"amy", b"blue"), &two), Lookup::Open);
        // A key and an item that read alike as bytes are another permit.
        assert_eq!(s.lookup(of(b"amyr", b"ed"), &two), Lookup::Open);
        let red = s.item(b"red").unwrap();
        assert_eq!((red.permits, red.stock, red.left(None)), (2, Some(2), Some(0)));
        assert_eq!(s.permits(), 3);
        // A revocation frees the item's slot; an item without permits leaves the table.
        assert!(s.revoke_numbered(of(b"cy", b"blue"), 3));
        assert_eq!(s.item(b"blue"), None);
        assert!(s.revoke_numbered(of(b"bob", b"red"), 2));
        assert_eq!(s.admit(of(b"cy", b"red"), &two), Admission::Admitted(seq(4)));
        let listed: Vec<Vec<u8>> = s.items(0, 10).into_iter().map(|i| i.item).collect();
        assert_eq!(listed, [b"red".to_vec()]);
    }

    #[test]
    fn a_buyer_holds_no_more_items_than_his_limit() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 16);
        let mut s = store(&heap, t, 0);
        let one_each = Sale { itemized: true, max_per_buyer: Some(2), ..capped(Some(10)) };
        assert_eq!(s.admit(of(b"amy", b"38"), &one_each), Admission::Admitted(seq(1)));
        assert_eq!(s.admit(of(b"amy", b"39"), &one_each), Admission::Admitted(seq(2)));
        assert_eq!(s.admit(of(b"amy", b"40"), &one_each), Admission::LimitReached);
        assert_eq!(s.lookup(of(b"amy", b"40"), &one_each), Lookup::LimitReached);
        // What he holds still passes; others are not limited by him.
        assert_eq!(s.admit(of(b"amy", b"39"), &one_each), Admission::Permitted(seq(2)));
        assert_eq!(s.admit(of(b"bob", b"40"), &one_each), Admission::Admitted(seq(3)));
        // A permit that goes gives his room back.
        assert!(s.revoke_numbered(of(b"amy", b"38"), 1));
        assert_eq!(s.admit(of(b"amy", b"40"), &one_each), Admission::Admitted(seq(4)));
    }

    #[test]
    fn an_items_stock_set_through_the_api_wins_until_set_back() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 16);
        let mut s = store(&heap, t, 0);
        let three = Sale { itemized: true, ..capped(Some(3)) };
        assert_eq!(s.set_item_stock(b"red", Some(1)).unwrap().max_permits, Some(1));
        assert_eq!(s.admit(of(b"amy", b"red"), &three), Admission::Admitted(seq(1)));
        assert_eq!(s.admit(of(b"bob", b"red"), &three), Admission::SoldOut);
        let raised = s.set_item_stock(b"red", Some(2)).unwrap();
        assert_eq!((raised.cap(None), raised.left(None)), (Some(2), Some(1)));
        assert_eq!(s.admit(of(b"bob", b"red"), &three), Admission::Admitted(seq(2)));
        s.set_item_stock(b"red", None);
        assert_eq!(s.item(b"red").unwrap().cap(None), Some(3), "the configuration's again");
        // An override of an item nobody holds keeps it listed; set back, it goes.
        s.set_item_stock(b"blue", Some(0));
        assert_eq!(s.admit(of(b"amy", b"blue"), &three), Admission::SoldOut);
        assert_eq!(s.items(0, 10).len(), 2);
        s.set_item_stock(b"blue", None);
        assert_eq!(s.item(b"blue"), None);
    }

    #[test]
    fn the_prequeue_draws_each_items_stock_among_its_registered_buyers() {
        let heap = Heap::new(1 << 20);
        let t = table(&heap, 64);
        let before = Sale {
            window: crate::sale::Window { start_ms: Some(10_000), end_ms: None },
            prequeue_ms: Some(5_000),
            itemized: true,
            max_per_buyer: Some(1),
            ..Sale::default()
        };
        let mut s = store(&heap, t, 6_000);
        for i in 0..40 {
            let key = format!("b{i}");
            let stock = |cap| Sale { cap: Some(cap), ..before };
            assert_eq!(s.register(of(key.as_bytes(), b"red"), &stock(3)), Registration::Registered);
            if i % 2 == 0 {
                s.register(of(key.as_bytes(), b"blue"), &stock(5));
            }
        }
        assert_eq!(s.item(b"red").unwrap().registered, 40);
        let mut s = store(&heap, t, 10_000);
        // The first step after the start draws; its own request's cap is another item's.
        let open = Sale { cap: Some(100), ..before };
        assert_eq!(s.lookup(of(b"late", b"green"), &open), Lookup::Open);
        let winners = s.take_settled();
        let count = |item: &[u8]| winners.iter().filter(|p| p.item == item).count();
        assert_eq!((count(b"red"), count(b"blue")), (3, 5));
        let mut buyers: Vec<&[u8]> = winners.iter().map(|p| &p.key[..]).collect();
        buyers.sort_unstable();
        buyers.dedup();
        assert_eq!(buyers.len(), 8, "nobody won two items");
        assert_eq!(s.item(b"red").unwrap().registered, 0);
    }

    #[test]
    fn items_cost_the_memory_the_readme_says() {
        // A permit keeps its 56 bytes and grows by its item's; an item is 56 bytes and its name.
        assert_eq!(size_of::<Permit>(), 56);
        assert_eq!(permit_size(40 + 2), permit_size(40) + 2);
        assert_eq!(size_of::<Item>(), 56);
    }

    #[test]
    fn a_buyers_draw_per_key_is_his_own_for_each_item() {
        let secret = [3, 4];
        let draw = |item: &[u8]| keyed_draw(secret, PermitKey { key: b"amy", item }, 9);
        assert_eq!(draw(b"42"), draw(b"42"), "asking again draws the same");
        assert_eq!(draw(b""), keyed_draw(secret, one(b"amy"), 9), "a zone of one item as before");
        // Across 1,000 items a buyer wins about as often as the ratio says: draws of their own.
        let won = (0..1000).filter(|i| draw(format!("sku-{i}").as_bytes()) >= 0.9).count();
        assert!((60..=140).contains(&won), "{won} of 1000");
        assert_ne!(
            keyed_draw(secret, PermitKey { key: b"am", item: b"y42" }, 9),
            draw(b"42"),
            "a key and an item that read alike are another draw"
        );
    }
}
