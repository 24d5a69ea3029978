//! What the store can do right now: [`Health`] (read-only after a failure, a log fsync in
//! progress and its age, the compactor's state, a corrupt read), the store's metric names and
//! gauges (how much of the snapshots is mapped in huge pages among them), and the throttled
//! log of corrupt reads. Never changes what the store holds.

#[allow(clippy::wildcard_imports)]
use super::*;

/// How long one log write and fsync may run before readiness reports it stuck. A healthy
/// fsync takes milliseconds; 5 s is far past any disk's hiccup and well inside the 45 s a
/// systemd unit gives a stop.
pub const FSYNC_STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(5);
/// Corrupt reads are logged at most once per this many seconds (each is counted): a client
/// repeating a lookup of a damaged record must not flood the journal.
const CORRUPT_LOG_EVERY_SECS: u64 = 10;

/// What the compactor of a store is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompactorState {
    /// No compactor was started (tools, tests).
    NotStarted,
    /// Running; its last compaction, if any, succeeded.
    Running,
    /// Its last compaction failed; it retries after a backoff.
    Failing {
        /// The failure.
        reason: String,
        /// Failures in a row.
        attempts: u32,
        /// Seconds until the next attempt.
        retry_in_secs: u64,
    },
    /// It stopped (shutdown).
    Stopped,
}

/// What a store can do right now: the source of readiness and of the store gauges.
#[derive(Clone, Debug)]
pub struct Health {
    /// Why writes are refused, when they are.
    pub read_only: Option<String>,
    /// The log write and fsync in progress, if any: how long it has run and on which file.
    pub log_io: Option<(std::time::Duration, String)>,
    /// The compactor.
    pub compactor: CompactorState,
    /// The first corrupt record read since the store opened.
    pub corrupt: Option<String>,
    /// Keys in the active delta.
    pub delta_keys: usize,
}

impl Health {
    /// The reasons the store cannot do its whole job, one line each; empty when it can.
    pub fn problems(&self) -> Vec<String> {
        self.problems_with(FSYNC_STUCK_AFTER)
    }

    /// As [`Health::problems`], calling a log fsync stuck once it has run `stuck_after`.
    pub fn problems_with(&self, stuck_after: std::time::Duration) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(r) = &self.read_only {
            v.push(format!("store read-only: {r}"));
        }
        if let Some((age, file)) = &self.log_io
            && *age >= stuck_after
        {
            v.push(format!("fsync stuck for {} s on {file}", age.as_secs()));
        }
        if let CompactorState::Failing {
            reason,
            attempts,
            retry_in_secs,
        } = &self.compactor
        {
            v.push(format!(
                "compactor stopped: {reason} ({attempts} failures in a row; retrying in {retry_in_secs} s)"
            ));
        }
        if let Some(c) = &self.corrupt {
            v.push(format!("store corrupt: {c}"));
        }
        v
    }

    /// Sets the store gauges (`mykey_store_writable`, `mykey_compactor_running`,
    /// `mykey_wal_fsync_age_seconds`, `mykey_store_delta_keys`) from this reading.
    pub fn publish(&self) {
        metrics::gauge!(WRITABLE).set(if self.read_only.is_none() { 1.0 } else { 0.0 });
        let running = matches!(self.compactor, CompactorState::Running);
        metrics::gauge!(COMPACTOR_RUNNING).set(if running { 1.0 } else { 0.0 });
        let age = self.log_io.as_ref().map_or(0.0, |(a, _)| a.as_secs_f64());
        metrics::gauge!(WAL_FSYNC_AGE_SECONDS).set(age);
        metrics::gauge!(DELTA_KEYS).set(self.delta_keys as f64);
    }
}

/// Metric: how long each group-commit log write and fsync took (one observation per fsync,
/// however many writers it served). The store measures it itself because only it knows where
/// the fsync is; with no recorder installed (tools, tests) the calls cost next to nothing.
pub const WAL_FSYNC_SECONDS: &str = "mykey_wal_fsync_duration_seconds";
/// Metric: 1 while the store accepts writes, 0 once a log write or fsync failed (writes are
/// refused until it is reopened; lookups go on).
pub const WRITABLE: &str = "mykey_store_writable";
/// Metric: age of the log write and fsync in progress, 0 when none: a stuck fsync shows here
/// long before it returns (the fsync histogram only hears of it when it does).
pub const WAL_FSYNC_AGE_SECONDS: &str = "mykey_wal_fsync_age_seconds";
/// Metric: 1 while the compactor runs and its last compaction succeeded; 0 while it retries
/// after a failure, and when it has stopped.
pub const COMPACTOR_RUNNING: &str = "mykey_compactor_running";
/// Metric: bytes cut from the log's tail by the last open (a torn tail).
pub const RECOVERY_CUT_BYTES: &str = "mykey_store_recovery_cut_bytes";
/// Metric: reads that found a corrupt snapshot record or bucket (each was refused).
pub const CORRUPT_READS_TOTAL: &str = "mykey_store_corrupt_reads_total";
/// Metric: keys in the active delta (what the next compaction folds; replayed on restart).
pub const DELTA_KEYS: &str = "mykey_store_delta_keys";
/// Metric: compactions by outcome (`ok`, `error`).
pub const COMPACTIONS_TOTAL: &str = "mykey_store_compactions_total";
/// Metric: how long each compaction took.
pub const COMPACTION_SECONDS: &str = "mykey_store_compaction_duration_seconds";
/// Metric: bytes of the node's file mappings, its snapshots, mapped in 2 MiB pages right now
/// (`FilePmdMapped` of `/proc/self/smaps_rollup`, read at each scrape). Near 0 on a warm store
/// means each lookup pays a page walk on top of its memory read: files written by a build
/// before huge-page writes, or a kernel or file system that maps their page cache in small
/// pages (RUNBOOK, "Bulk load").
pub const HUGE_PAGE_BYTES: &str = "mykey_store_huge_page_bytes";
/// Where the kernel sums this process's mappings.
const SMAPS_ROLLUP: &str = "/proc/self/smaps_rollup";

/// Sets [`HUGE_PAGE_BYTES`] from `/proc/self/smaps_rollup`: 0 when the kernel names no file
/// huge pages. Where the file cannot be read (not Linux, or no `/proc`) the gauge is left
/// unset, and the first failure is logged.
pub fn publish_huge_pages() {
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    match std::fs::read_to_string(SMAPS_ROLLUP) {
        Ok(text) => {
            let bytes = file_huge_page_bytes(&text).unwrap_or(0);
            metrics::gauge!(HUGE_PAGE_BYTES).set(bytes as f64);
        }
        Err(e) => {
            if !LOGGED.swap(true, Ordering::Relaxed) {
                tracing::warn!(op = "read", file = SMAPS_ROLLUP, error = %e, "cannot tell how much of the store is mapped in huge pages; mykey_store_huge_page_bytes is not exported");
            }
        }
    }
}

/// The `FilePmdMapped` bytes of an `smaps_rollup` text, or of one mapping's fields in
/// `smaps`; `None` when it has no such line.
pub(super) fn file_huge_page_bytes(smaps_rollup: &str) -> Option<u64> {
    let kib = smaps_rollup
        .lines()
        .find_map(|l| l.strip_prefix("FilePmdMapped:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    kib.checked_mul(1024)
}

impl Store {
    /// What the store can do right now (see [`Health::problems`]).
    pub fn health(&self) -> Health {
        let since = self.log_io_since.load(Ordering::Acquire);
        let log_io = (since != 0).then(|| {
            let began = std::time::Duration::from_nanos(since - 1);
            (
                self.epoch.elapsed().saturating_sub(began),
                wal::segment_name(self.log_first_seq.load(Ordering::Acquire)),
            )
        });
        Health {
            read_only: lock(&self.failure).clone(),
            log_io,
            compactor: lock(&self.compactor).clone(),
            corrupt: lock(&self.corrupt).clone(),
            delta_keys: self.delta_keys(),
        }
    }

    /// Records what the compactor is doing, for [`Store::health`].
    pub fn set_compactor(&self, state: CompactorState) {
        *lock(&self.compactor) = state;
    }

    /// A read found a corrupt record: remembered for readiness, counted, and logged at ERROR
    /// (at most once per `CORRUPT_LOG_EVERY_SECS`, naming the file and offset).
    #[cold]
    #[inline(never)]
    pub(super) fn read_failed(&self, e: &StoreError) {
        metrics::counter!(CORRUPT_READS_TOTAL).increment(1);
        lock(&self.corrupt).get_or_insert_with(|| e.to_string());
        let now = self.epoch.elapsed().as_secs() + 1;
        let last = self.corrupt_logged_at.load(Ordering::Relaxed);
        if (last == 0 || now >= last + CORRUPT_LOG_EVERY_SECS)
            && self
                .corrupt_logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::error!(op = "read", error = %e, "refused a corrupt snapshot read; run `mykeyd snapshot verify` and restore the shard from a backup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_huge_page_bytes_are_read_from_smaps_rollup() {
        let text = "00400000-7ffc0000 ---p 00000000 00:00 0 [rollup]\n\
                    Rss:             1234567 kB\n\
                    AnonHugePages:     2048 kB\n\
                    ShmemPmdMapped:       0 kB\n\
                    FilePmdMapped:   589824 kB\n\
                    Shared_Hugetlb:       0 kB\n";
        assert_eq!(file_huge_page_bytes(text), Some(589_824 * 1024));
        assert_eq!(
            file_huge_page_bytes("Rss: 10 kB\nAnonHugePages: 2048 kB\n"),
            None,
            "anonymous huge pages are not the store's"
        );
        assert_eq!(file_huge_page_bytes("FilePmdMapped: lots kB\n"), None);
    }
}
