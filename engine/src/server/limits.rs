//! The limits of a running server: how many connections, requests, writes and handshakes it
//! takes at once, how long a request may take to arrive and a write to be acknowledged, and
//! the per-certificate token bucket. Every limit is a named constant with its reason.
//!
//! Owns the numbers, the bucket and the budgets the counts are taken from, all without locks;
//! the stream task (`stream`) applies them and never waits on one.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Connections served at once; more are refused at the handshake.
pub const CONNECTIONS_MAX: usize = 20_000;
/// Requests being executed at once, over all connections; more are answered `BUSY`. Writes
/// have a budget of their own ([`WRITES_IN_FLIGHT_MAX`]), so a stuck disk cannot use these up.
pub const IN_FLIGHT_MAX: usize = 4096;
/// Writes being executed at once (each holds a thread of tokio's blocking pool while it waits
/// for its fsync); more are answered `BUSY`. Half of the pool's 512 threads, so that card
/// lookups and exports, which also run there, keep threads even with every write stuck.
pub const WRITES_IN_FLIGHT_MAX: usize = 256;
/// How long a write may wait for its fsync before the client is answered `OUTCOME_UNKNOWN`:
/// a healthy fsync takes milliseconds, and the deadline must stay well inside the drain grace
/// so that a stop is not held up by a stuck disk.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Revocation-push bodies received at once (each up to `wire::PUSH_LEN_MAX`); more are
/// answered `BUSY` before any byte of them is buffered.
pub const PUSH_BODIES_MAX: usize = 2;
/// Default handshakes accepted per second: each costs the server a TLS handshake with an RSA
/// or ECDSA signature and a client-certificate chain check (~1 ms of a core), so an
/// unthrottled reconnect storm of 13,000 terminals would take the node's CPU from lookups;
/// 5,000 per second lets them all in within about three seconds.
pub const HANDSHAKES_PER_SECOND: u32 = 5_000;

/// How long a request may take to arrive, header and body: a lookup is one datagram, a card
/// registration a few kilobytes; 10 s covers a terminal on a bad mobile link.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a revocation push (up to `wire::PUSH_LEN_MAX`) may take to arrive: 256 MiB
/// through a [`STREAM_RECEIVE_WINDOW`](super::STREAM_RECEIVE_WINDOW) per round trip of 100 ms takes about 100 s.
pub const PUSH_READ_TIMEOUT: Duration = Duration::from_secs(300);
/// Default requests per second per client certificate: far above a counter terminal's needs,
/// low enough that one misbehaving terminal cannot take a node.
pub const RATE_PER_IDENTITY: u32 = 5_000;

/// Limits of a running server (the `[limits]` section of the config).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are refused at the handshake.
    pub connections_max: usize,
    /// Reads executed at once over all connections; more are answered `BUSY`.
    pub in_flight_max: usize,
    /// Writes executed at once; more are answered `BUSY`.
    pub writes_in_flight_max: usize,
    /// How long a write may wait for its fsync before `OUTCOME_UNKNOWN` is answered.
    pub write_timeout: Duration,
    /// Requests per second one client certificate may make, over all its connections, with a
    /// burst of one second's worth; more are answered `RATE_LIMITED`. 0: no limit.
    pub rate_per_identity: u32,
    /// New connections (handshakes) accepted per second, with a burst of one second's worth;
    /// more are refused with QUIC's CONNECTION_REFUSED.
    pub handshakes_per_second: u32,
    /// How long a request (header and body) may take to arrive.
    pub read_timeout: Duration,
    /// How long a revocation push may take to arrive.
    pub push_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_max: CONNECTIONS_MAX,
            in_flight_max: IN_FLIGHT_MAX,
            writes_in_flight_max: WRITES_IN_FLIGHT_MAX,
            write_timeout: WRITE_TIMEOUT,
            rate_per_identity: RATE_PER_IDENTITY,
            handshakes_per_second: HANDSHAKES_PER_SECOND,
            read_timeout: READ_TIMEOUT,
            push_read_timeout: PUSH_READ_TIMEOUT,
        }
    }
}

/// A token bucket shared by every connection of one client certificate (and the node's
/// handshake bucket), kept as one atomic: the time at which the bucket would next be full
/// again, in nanoseconds after its creation (GCRA, the generic cell rate algorithm). It admits
/// what a bucket of `rate` tokens refilled at `rate` per second does, with a token's refill
/// time rounded down to the nanosecond (a burst at most a part in a thousand over its rate for
/// rates up to 10⁶). Every request takes it, so it takes no lock.
pub(super) struct Bucket {
    /// When the bucket was made: the zero of `full_at`.
    made: std::time::Instant,
    /// Nanoseconds after `made` at which every token taken so far will have been refilled.
    full_at: AtomicU64,
}

/// The burst a bucket allows: one second's worth of its rate.
const BUCKET_BURST_NANOS: u64 = 1_000_000_000;

impl Default for Bucket {
    fn default() -> Self {
        Self {
            made: std::time::Instant::now(),
            full_at: AtomicU64::new(0),
        }
    }
}

impl Bucket {
    /// Takes one token at `rate` per second (a burst of one second's worth, a new bucket
    /// full) for a request that came at `now`; false when the identity is over its rate. A
    /// rate of 0 means no limit.
    pub(super) fn take(&self, rate: u32, now: std::time::Instant) -> bool {
        if rate == 0 {
            return true;
        }
        // One token's refill time, at least a nanosecond (a rate above 10⁹ is no limit).
        let cost = (BUCKET_BURST_NANOS / u64::from(rate)).max(1);
        let at =
            u64::try_from(now.saturating_duration_since(self.made).as_nanos()).unwrap_or(u64::MAX);
        let mut full_at = self.full_at.load(Ordering::Relaxed);
        loop {
            let next = full_at.max(at).saturating_add(cost);
            if next - at > BUCKET_BURST_NANOS {
                return false;
            }
            match self.full_at.compare_exchange_weak(
                full_at,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => full_at = seen,
            }
        }
    }
}

/// A budget of work at once (requests, writes, push bodies, connections): taken without
/// waiting, so what is over it is refused, never queued. tokio's `Semaphore` would lock its
/// waiters' list at every release, for waiters a budget never has.
#[derive(Debug)]
pub(super) struct Budget {
    taken: AtomicUsize,
    max: usize,
}

/// One unit of a [`Budget`], given back when dropped. `B` is a reference to the budget, or an
/// `Arc` of it for a unit that outlives the request (work on the blocking pool).
#[derive(Debug)]
pub(super) struct Spent<B: Deref<Target = Budget>>(B);

impl Budget {
    pub(super) fn new(max: usize) -> Self {
        Self {
            taken: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes one unit of `budget`; `None` when all of it is taken.
    pub(super) fn try_take<B: Deref<Target = Budget>>(budget: B) -> Option<Spent<B>> {
        let mut taken = budget.taken.load(Ordering::Relaxed);
        loop {
            if taken >= budget.max {
                return None;
            }
            match budget.taken.compare_exchange_weak(
                taken,
                taken + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Spent(budget)),
                Err(seen) => taken = seen,
            }
        }
    }
}

impl<B: Deref<Target = Budget>> Drop for Spent<B> {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_budget_gives_out_at_most_its_max_and_takes_back_what_is_dropped() {
        let budget = Arc::new(Budget::new(2));
        let a = Budget::try_take(&*budget).expect("first");
        let b = Budget::try_take(budget.clone()).expect("second, owned");
        assert!(Budget::try_take(&*budget).is_none());
        drop(a);
        let c = Budget::try_take(&*budget).expect("the first one's unit again");
        assert!(Budget::try_take(budget.clone()).is_none());
        // An owned unit outlives the borrow it was not taken from.
        let moved = std::thread::spawn(move || drop(b));
        moved.join().expect("thread");
        assert!(Budget::try_take(&*budget).is_some());
        drop(c);
        assert_eq!(budget.taken.load(Ordering::Relaxed), 0);
    }

    /// Runs `work` on 8 threads at once and waits for them all; a panic in one fails the test.
    fn on_8_threads(work: impl Fn() + Sync) {
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(&work);
            }
        });
    }

    #[test]
    fn a_budget_taken_from_many_threads_at_once_never_goes_over() {
        let budget = Budget::new(5);
        let held = AtomicUsize::new(0);
        on_8_threads(|| {
            for _ in 0..20_000 {
                if let Some(unit) = Budget::try_take(&budget) {
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    assert!(now <= 5, "{now} units out of 5");
                    held.fetch_sub(1, Ordering::SeqCst);
                    drop(unit);
                }
            }
        });
        assert_eq!(budget.taken.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_bucket_admits_one_seconds_worth_at_once_then_its_rate() {
        let bucket = Bucket::default();
        let t0 = bucket.made + Duration::from_secs(5);
        let admitted = (0..250).filter(|_| bucket.take(100, t0)).count();
        assert_eq!(admitted, 100, "a full bucket holds one second's worth");
        assert!(!bucket.take(100, t0 + Duration::from_millis(9)));
        // 10 ms refill one token at 100 a second.
        assert!(bucket.take(100, t0 + Duration::from_millis(10)));
        assert!(!bucket.take(100, t0 + Duration::from_millis(10)));
        // Half a second later, half the bucket is back.
        let later = t0 + Duration::from_millis(510);
        assert_eq!((0..100).filter(|_| bucket.take(100, later)).count(), 50);
        // A rate of 0 is no limit.
        assert!((0..1000).all(|_| bucket.take(0, later)));
        // An idle bucket fills up to one second's worth, no more.
        let idle = later + Duration::from_secs(60);
        assert_eq!((0..250).filter(|_| bucket.take(100, idle)).count(), 100);
    }

    #[test]
    fn a_bucket_taken_from_many_threads_at_once_admits_exactly_its_burst() {
        let bucket = Bucket::default();
        let at = Instant::now() + Duration::from_secs(1);
        let admitted = AtomicUsize::new(0);
        on_8_threads(|| {
            for _ in 0..1_000 {
                if bucket.take(3_000, at) {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 3_000);
    }
}
