//! Bulk work shared out among the cores: [`map`] runs a function over a few big items (runs
//! of CRL entries, the delta's shards) on scoped threads, this one included, and gives the
//! results back in item order. Only for work of many thousands of entries, where a
//! thread's start (tens of microseconds) is lost in it; never on a request's path, and never
//! holding anything a thread could wait for in turn.

use std::sync::Mutex;

/// Threads one bulk job uses, at most (and never more than the cores).
pub const THREADS_MAX: usize = 8;

/// Threads for a job of `n` entries: one below `min`, else one per core up to
/// [`THREADS_MAX`].
pub fn threads_for(n: usize, min: usize) -> usize {
    if n < min {
        return 1;
    }
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(THREADS_MAX)
}

/// `f` over every item, on up to `threads` threads (this one among them), results in item
/// order. Items are taken one at a time by whichever thread is free, so uneven items even out.
/// A thread that cannot be started leaves its share to the others; `f` must not panic (a
/// panic in a helper thread is raised here once the others are done).
pub fn map<T: Send, R: Send>(items: Vec<T>, threads: usize, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let n = items.len();
    if threads <= 1 || n <= 1 {
        return items.into_iter().map(f).collect();
    }
    let queue = Mutex::new(items.into_iter().enumerate().rev().collect::<Vec<_>>());
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..n).map(|_| None).collect());
    let work = || {
        loop {
            let next = queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let Some((i, item)) = next else { return };
            let r = f(item);
            results
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)[i] = Some(r);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads.min(n) {
            // Without the thread, the others (this one at least) take its share.
            if let Err(e) = std::thread::Builder::new()
                .name("mykey-bulk".into())
                .spawn_scoped(scope, work)
            {
                tracing::warn!(error = %e, "could not start a thread for bulk work; going on with fewer");
                break;
            }
        }
        work();
    });
    results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Results come back in item order whatever the threads, and every item is done once.
    #[test]
    fn results_come_back_in_item_order() {
        for threads in [1, 2, 3, 8] {
            let items: Vec<u64> = (0..50).collect();
            let out = map(items, threads, |i| {
                // Uneven work, so later items can finish first.
                (0..(50 - i) * 1_000).fold(i, |a, b| a.wrapping_add(b & 1)) - (50 - i) * 500
            });
            assert_eq!(out, (0..50).collect::<Vec<_>>(), "{threads} threads");
        }
        assert_eq!(threads_for(10, 100), 1);
        assert!((1..=THREADS_MAX).contains(&threads_for(100, 100)));
    }
}
