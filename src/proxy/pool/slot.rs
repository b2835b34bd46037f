//! One server's connection permits, shared by every generation of its
//! pool: at most `pool_size` connections are checked out or warm at once.
//!
//! A released connection goes straight to the first waiter (FIFO), with
//! its permit; with no waiter it stays *warm* here, still checked out of
//! bb8, so that the next checkout takes it under one uncontended lock
//! instead of bb8's get (its mutex, a timer and a validity check) and
//! put. A connection warm for [`WARM_MS`] goes back to bb8, which then
//! applies `idle_timeout`, `server_lifetime`, `min_pool_size` and the
//! health check as before. bb8 still opens, checks and closes every
//! connection: a permit without a warm connection asks bb8 for one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::{PooledServer, ServerManager};
use crate::proxy::stats::coarse_ms;

/// A connection as bb8 lends it.
pub(super) type Conn = bb8::PooledConnection<'static, ServerManager>;

/// How long a released connection stays warm before it goes back to bb8
/// (up to twice this: the sweep runs this often).
pub(super) const WARM_MS: u64 = 1000;

/// Waiters whose checkout gave up are pruned when the queue reaches this
/// length (then twice the live length).
const PRUNE_AT: usize = 64;

pub(super) struct Slot {
    state: Mutex<SlotState>,
    /// Wakes the sweep early: a waiter came whose deadline is before the
    /// sweep's next wakeup.
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct SlotState {
    /// Permits in all: `pool_size`.
    size: usize,
    /// Permits no one holds (their connections, if any, are idle in bb8).
    free: usize,
    /// Permits to drop as they come back, after a shrink below the number
    /// held.
    debt: usize,
    /// Released connections, oldest first; each holds a permit.
    warm: VecDeque<Warm>,
    /// Checkouts waiting for a permit, first come first served.
    waiters: VecDeque<Waiter>,
    prune_at: usize,
    /// A task returns old warm connections to bb8 and ends the waits
    /// that reached their deadline (one timer for the slot, none per
    /// wait).
    sweeping: bool,
    /// When it wakes next (coarse ms).
    sweep_at_ms: u64,
}

struct Warm {
    conn: Conn,
    since_ms: u64,
}

struct Waiter {
    tx: oneshot::Sender<PooledServer>,
    /// The pool generation that waits: only its own connections are
    /// handed to it (another generation gets the permit alone).
    gen: usize,
    /// Past this (coarse ms) the sweep drops it: the wait timed out.
    deadline_ms: u64,
}

/// What a checkout gets at once.
pub(super) enum Take {
    /// A permit, with a warm connection when one was usable (else bb8 is
    /// to be asked, under the permit).
    Now(PooledServer),
    /// In the queue: the grant comes here. A closed channel means the
    /// wait timed out or the pool generation retired.
    Wait(oneshot::Receiver<PooledServer>),
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock();
        f.debug_struct("Slot")
            .field("size", &st.size)
            .field("free", &st.free)
            .field("debt", &st.debt)
            .field("warm", &st.warm.len())
            .field("waiters", &st.waiters.len())
            .finish()
    }
}

impl Slot {
    pub(super) fn new() -> Slot {
        Slot {
            state: Mutex::new(SlotState {
                prune_at: PRUNE_AT,
                ..SlotState::default()
            }),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// A permit for generation `gen`: with the newest warm connection
    /// (the oldest with `round_robin`), or alone, or a place in the queue
    /// for at most `timeout_ms`.
    pub(super) fn take(self: &Arc<Self>, gen: usize, round_robin: bool, timeout_ms: u64) -> Take {
        let mut st = self.state.lock();
        let warm = if round_robin {
            st.warm.pop_front()
        } else {
            st.warm.pop_back()
        };
        if let Some(w) = warm {
            drop(st);
            let mut grant = PooledServer::permit_only(self.clone());
            if w.conn.gen == gen && w.conn.usable(coarse_ms()) {
                grant.conn = Some(w.conn);
            }
            // Otherwise it goes back to bb8 (dropped here), which checks or
            // replaces it when the permit asks.
            return Take::Now(grant);
        }
        if st.free > 0 {
            st.free -= 1;
            drop(st);
            return Take::Now(PooledServer::permit_only(self.clone()));
        }
        if st.waiters.len() >= st.prune_at {
            st.waiters.retain(|w| !w.tx.is_closed());
            st.prune_at = (st.waiters.len() * 2).max(PRUNE_AT);
        }
        let (tx, rx) = oneshot::channel();
        let deadline_ms = coarse_ms().saturating_add(timeout_ms);
        st.waiters.push_back(Waiter {
            tx,
            gen,
            deadline_ms,
        });
        if !st.sweeping {
            self.start_sweep(&mut st);
        } else if deadline_ms < st.sweep_at_ms {
            self.wake.notify_one();
        }
        Take::Wait(rx)
    }

    /// A permit comes back, with its connection if it can serve again:
    /// to the first waiter, else warm here (or free, without one).
    pub(super) fn give_back(self: &Arc<Self>, conn: Option<Conn>) {
        let now = coarse_ms();
        // One that cannot serve again goes back to bb8 (which closes a
        // broken one) before its permit lets anyone ask bb8.
        let mut conn = conn.filter(|c| c.reusable(now));
        let mut spare = None;
        let mut st = self.state.lock();
        loop {
            if st.debt > 0 {
                st.debt -= 1;
                spare = conn.take();
                break;
            }
            let Some(waiter) = st.waiters.pop_front() else {
                match conn.take() {
                    Some(c) if st.sweeping || self.start_sweep(&mut st) => {
                        st.warm.push_back(Warm {
                            conn: c,
                            since_ms: now,
                        });
                    }
                    other => {
                        spare = other;
                        st.free += 1;
                    }
                }
                break;
            };
            let mut grant = PooledServer::permit_only(self.clone());
            match conn.take() {
                Some(c) if c.gen == waiter.gen => grant.conn = Some(c),
                other => spare = spare.or(other),
            }
            match waiter.tx.send(grant) {
                Ok(()) => break,
                // It gave up waiting: the next one.
                Err(mut grant) => {
                    conn = grant.conn.take();
                    grant.forget_permit();
                }
            }
        }
        drop(st);
        drop(spare);
    }

    fn start_sweep(self: &Arc<Self>, st: &mut SlotState) -> bool {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        st.sweeping = true;
        st.sweep_at_ms = 0;
        rt.spawn(sweep(self.clone()));
        true
    }

    /// Sets the number of permits. Shrinking takes free permits first,
    /// then warm connections'; permits held past that are dropped as they
    /// come back.
    pub(super) fn resize(self: &Arc<Self>, new: usize) {
        let mut st = self.state.lock();
        let mut spare = Vec::new();
        let mut grow = 0;
        if new > st.size {
            grow = new - st.size;
            let paid = st.debt.min(grow);
            st.debt -= paid;
            grow -= paid;
        } else {
            let mut cut = st.size - new;
            let f = st.free.min(cut);
            st.free -= f;
            cut -= f;
            while cut > 0 {
                let Some(w) = st.warm.pop_front() else { break };
                spare.push(w.conn);
                cut -= 1;
            }
            st.debt += cut;
        }
        st.size = new;
        drop(st);
        drop(spare);
        for _ in 0..grow {
            self.give_back(None);
        }
    }

    /// A generation retires: its warm connections go back to bb8 (which
    /// closes them) and its waiters are told (their channel closes).
    pub(super) fn retire(self: &Arc<Self>, gen: usize) {
        let mut st = self.state.lock();
        let mut gone = Vec::new();
        let mut i = 0;
        while i < st.warm.len() {
            if st.warm[i].conn.gen == gen {
                gone.push(st.warm.remove(i).expect("in range").conn);
            } else {
                i += 1;
            }
        }
        let waiters: VecDeque<Waiter> = {
            let (theirs, others) = std::mem::take(&mut st.waiters)
                .into_iter()
                .partition(|w| w.gen == gen);
            st.waiters = others;
            theirs
        };
        drop(st);
        drop(waiters);
        for conn in gone {
            drop(conn);
            self.give_back(None);
        }
    }

    /// Warm connections now (checked out of bb8, idle for a client).
    pub(super) fn warm(&self) -> u32 {
        self.state.lock().warm.len() as u32
    }
}

/// Returns connections warm for longer than [`WARM_MS`] to bb8 and ends
/// waits past their deadline, while any connection is warm or any
/// checkout waits.
async fn sweep(slot: Arc<Slot>) {
    loop {
        let now = coarse_ms();
        let mut old = Vec::new();
        let mut late = Vec::new();
        let next = {
            let mut st = slot.state.lock();
            while st
                .warm
                .front()
                .is_some_and(|w| now.saturating_sub(w.since_ms) >= WARM_MS)
            {
                old.push(st.warm.pop_front().expect("checked").conn);
            }
            let mut i = 0;
            while i < st.waiters.len() {
                let w = &st.waiters[i];
                if w.deadline_ms <= now || w.tx.is_closed() {
                    late.push(st.waiters.remove(i).expect("in range"));
                } else {
                    i += 1;
                }
            }
            let next_warm = st.warm.front().map(|w| w.since_ms + WARM_MS);
            let next_wait = st.waiters.iter().map(|w| w.deadline_ms).min();
            match next_warm.into_iter().chain(next_wait).min() {
                Some(at) => {
                    st.sweep_at_ms = at;
                    Some(at)
                }
                None => {
                    st.sweeping = false;
                    None
                }
            }
        };
        // Their checkouts see the channel close: timed out.
        drop(late);
        for conn in old {
            drop(conn);
            slot.give_back(None);
        }
        let Some(at) = next else { return };
        let wait = Duration::from_millis(at.saturating_sub(coarse_ms()).max(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = slot.wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! The permit accounting alone (grants without connections); handing
    //! over real connections is covered by the pooling tests against
    //! PostgreSQL.
    use super::*;

    fn slot(size: usize) -> Arc<Slot> {
        let slot = Arc::new(Slot::new());
        slot.resize(size);
        slot
    }

    fn now(t: Take) -> PooledServer {
        match t {
            Take::Now(g) => g,
            Take::Wait(_) => panic!("expected a permit at once"),
        }
    }

    fn wait(t: Take) -> oneshot::Receiver<PooledServer> {
        match t {
            Take::Wait(rx) => rx,
            Take::Now(_) => panic!("expected to wait"),
        }
    }

    #[tokio::test]
    async fn permits_go_to_waiters_first_come_first_served() {
        let s = slot(2);
        let a = now(s.take(1, false, 60_000));
        let b = now(s.take(1, false, 60_000));
        let mut w1 = wait(s.take(1, false, 60_000));
        let mut w2 = wait(s.take(1, false, 60_000));
        let w3 = wait(s.take(1, false, 60_000));
        // The third gives up: it is skipped, not served.
        drop(w3);
        drop(a);
        let g1 = w1.try_recv().expect("first waiter served first");
        assert!(w2.try_recv().is_err());
        drop(b);
        let g2 = w2.try_recv().expect("second waiter served next");
        let st = format!("{s:?}");
        assert!(st.contains("free: 0"), "{st}");
        drop((g1, g2));
        let st = format!("{s:?}");
        assert!(st.contains("free: 2"), "{st}");
        // Free permits again: no wait.
        let _c = now(s.take(1, false, 60_000));
    }

    #[tokio::test]
    async fn a_grant_to_a_waiter_that_left_goes_to_the_next() {
        let s = slot(1);
        let a = now(s.take(1, false, 60_000));
        let w1 = wait(s.take(1, false, 60_000));
        let mut w2 = wait(s.take(1, false, 60_000));
        drop(a);
        // w1 got it but never looks: dropping its receiver gives it back.
        drop(w1);
        assert!(w2.try_recv().is_ok(), "the permit moved on to w2");
    }

    #[tokio::test]
    async fn a_wait_ends_at_its_deadline() {
        let s = slot(1);
        let _a = now(s.take(1, false, 60_000));
        let started = std::time::Instant::now();
        let rx = wait(s.take(1, false, 100));
        let late = wait(s.take(1, false, 60_000));
        // Closed by the sweep, not granted.
        assert!(rx.await.is_err());
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(90), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        // The other waiter is still queued.
        let st = format!("{s:?}");
        assert!(st.contains("waiters: 1"), "{st}");
        drop(late);
    }

    #[tokio::test]
    async fn retiring_a_generation_closes_only_its_waits() {
        let s = slot(1);
        let a = now(s.take(1, false, 60_000));
        let old = wait(s.take(1, false, 60_000));
        let mut new = wait(s.take(2, false, 60_000));
        s.retire(1);
        assert!(old.await.is_err());
        drop(a);
        assert!(new.try_recv().is_ok());
    }

    #[tokio::test]
    async fn shrinking_below_the_permits_held_takes_them_back_as_they_return() {
        let s = slot(3);
        let a = now(s.take(1, false, 60_000));
        let b = now(s.take(1, false, 60_000));
        s.resize(1);
        // 2 held, 1 allowed: one coming back is dropped.
        let mut w = wait(s.take(1, false, 60_000));
        drop(a);
        assert!(w.try_recv().is_err(), "the debt is paid first");
        drop(b);
        let g = w.try_recv().expect("then the waiter is served");
        s.resize(2);
        let _c = now(s.take(1, false, 60_000));
        assert!(matches!(s.take(1, false, 60_000), Take::Wait(_)));
        drop(g);
    }
}
