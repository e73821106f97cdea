//! nginx's slab pool as the permit table's [`Shared`] region.
//!
//! The lock is the pool's own `ngx_shmtx`, which nginx's master releases when a worker dies
//! holding it; a spinlock of our own would stay held forever.

use core::alloc::Layout;
use core::mem::align_of;
use core::ptr::NonNull;

use ngx::allocator::Allocator;
use ngx::core::slab::LockedSlabPool;
use ngx::core::SlabPool;

use crate::zone::{Arena, Shared};

impl Arena for LockedSlabPool {
    fn alloc(&self, size: usize) -> Option<NonNull<u8>> {
        let layout = Layout::from_size_align(size, align_of::<usize>()).ok()?;
        // The pool is locked: this is `ngx_slab_alloc_locked`.
        Allocator::allocate(self, layout).ok().map(NonNull::cast)
    }

    unsafe fn free(&self, p: NonNull<u8>, size: usize) {
        if let Ok(layout) = Layout::from_size_align(size, align_of::<usize>()) {
            // SAFETY: `p` came from `alloc(size)` on this locked pool: `ngx_slab_free_locked`.
            unsafe { Allocator::deallocate(self, p, layout) }
        }
    }
}

impl Shared for SlabPool {
    type Locked<'a> = LockedSlabPool;

    fn lock(&self) -> LockedSlabPool {
        SlabPool::lock(self)
    }
}
