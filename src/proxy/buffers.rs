//! A per-thread free list of IO buffers. Sessions take buffers when a
//! client becomes active and give them back when it goes idle, so an
//! idle client holds no buffer memory and a busy one allocates none.

use std::cell::RefCell;

use bytes::BytesMut;

/// Size of a pooled buffer.
pub const SIZE: usize = 16 * 1024;
/// Buffers kept per thread: enough for the sessions a worker switches
/// between, not a reserve for every client that ever connected.
const KEEP: usize = 32;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

pub fn take() -> BytesMut {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
}

/// Makes `buf` reusable where it is: cleared and rewound to the start of
/// its allocation. An oversized, shared or small buffer (a login's) is
/// freed instead, leaving an unallocated one. Never allocates.
pub fn rewind(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        return;
    }
    buf.clear();
    // Takes back the space consumed by `advance` when the allocation is
    // ours alone.
    if (buf.capacity() < SIZE && !buf.try_reclaim(SIZE)) || buf.capacity() > 4 * SIZE {
        *buf = BytesMut::new();
    }
}

/// Returns a buffer to the free list; oversized or shared buffers are
/// freed instead.
pub fn give(mut buf: BytesMut) {
    rewind(&mut buf);
    if buf.capacity() == 0 {
        return;
    }
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < KEEP {
            f.push(buf);
        }
    });
}

/// Gives `buf` back if it is empty, leaving an unallocated buffer.
pub fn release(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        give(std::mem::take(buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, BufMut};

    #[test]
    fn small_buffers_are_freed_not_grown() {
        let mut small = BytesMut::with_capacity(64);
        small.put_slice(b"startup");
        let before = FREE.with(|f| f.borrow().len());
        give(small);
        assert_eq!(FREE.with(|f| f.borrow().len()), before);
    }

    #[test]
    fn buffers_are_reused_with_full_capacity() {
        let mut b = take();
        b.put_slice(&[1u8; 100]);
        b.advance(100);
        let ptr = b.as_ptr();
        release(&mut b);
        assert_eq!(b.capacity(), 0);
        let again = take();
        assert!(again.capacity() >= SIZE);
        assert!(again.is_empty());
        // Same allocation, rewound to its start.
        assert!(again.as_ptr() <= ptr);
    }
}
