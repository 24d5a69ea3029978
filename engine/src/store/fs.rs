//! The storage I/O seam: every byte the store reads or writes goes through [`Fs`].
//!
//! Owns the two implementations: [`RealFs`] (one directory on disk, snapshot files mapped with
//! memmap2) and [`SimFs`] (in memory, for crash tests), and [`TracedFs`], which wraps either to
//! count fsyncs and to fail (ENOSPC, EIO) or stall (a hung fsync) the operations its
//! [`Faults`] name. `RealFs` also writes snapshots in pieces the page cache keeps as huge
//! pages, and re-reads a snapshot it finds cached in small ones. `SimFs` models what a power
//! cut does to a file system, as SQLite's crash-test VFS does: data written but not fsync'd,
//! and directory entries created or renamed but not fsync'd, may be lost; a crash keeps a
//! random prefix of each file's unsynced appends. This module must never interpret file
//! contents; it moves bytes.
//!
//! All names are plain file names inside the store directory; the seam never follows paths.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Read-only bytes of a whole file: a memory map on disk, a copy in the simulator.
pub enum Mapped {
    /// A read-only memory map.
    Map(memmap2::Mmap),
    /// Owned bytes (simulator, or an empty file, which cannot be mapped).
    Owned(Vec<u8>),
}

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mapped::Map(m) => m,
            Mapped::Owned(v) => v,
        }
    }
}

/// The huge page the store writes and maps snapshot files for: x86-64's and arm64's (4 KiB
/// base pages) PMD size.
pub const HUGE_PAGE_LEN: usize = 2 << 20;

/// Share of the cached huge-page regions checked in a mapping that must map in huge pages:
/// below it, [`reseat_small_pages`] drops the file's cache so that it is read again in huge
/// pages.
#[cfg(target_os = "linux")]
const RESEAT_BELOW_PCT: u64 = 85;

/// The suffix of snapshot files, the only ones [`reseat_small_pages`] looks at (a log is read
/// once, in order, at recovery).
#[cfg(target_os = "linux")]
const SNAPSHOT_SUFFIX: &str = ".snap";

/// The base page the kernel caches files in (x86-64, arm64 with 4 KiB pages).
#[cfg(target_os = "linux")]
const PAGE_LEN: usize = 4096;

/// How many cached 2 MiB regions of a snapshot file [`reseat_small_pages`] checks, spread
/// over the file: a copy is cached in small folios throughout.
#[cfg(target_os = "linux")]
const RESEAT_SAMPLE: usize = 4;

/// `PAGEMAP_SCAN` (Linux 6.7 and later, `linux/fs.h`): `_IOWR('f', 16, struct pm_scan_arg)`.
#[cfg(target_os = "linux")]
const PAGEMAP_SCAN: u64 = 0xC060_6610;

/// `PAGEMAP_SCAN`'s category of a page mapped by a huge page table entry (THP or hugetlb).
#[cfg(target_os = "linux")]
const PAGE_IS_HUGE: u64 = 1 << 6;

/// `struct page_region` of `linux/fs.h`: `[start, end)` and the categories asked for.
#[cfg(target_os = "linux")]
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg` of `linux/fs.h`.
#[cfg(target_os = "linux")]
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// How many bytes of `[start, start + len)` this process maps with huge page table entries,
/// asked of the kernel's page tables (`PAGEMAP_SCAN` on `/proc/self/pagemap`, which walks
/// them without formatting `/proc/self/smaps`, ~0.5 ms a read with a store open); `None` on
/// a kernel without it.
#[cfg(target_os = "linux")]
fn huge_page_bytes(start: usize, len: usize) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let mut regions = [PageRegion::default(); 16];
    let end = (start + len) as u64;
    let (mut at, mut huge) = (start as u64, 0);
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: 0,
            start: at,
            end,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: PAGE_IS_HUGE,
            category_anyof_mask: 0,
            return_mask: PAGE_IS_HUGE,
        };
        // SAFETY: `arg` is a `struct pm_scan_arg` of the kernel's layout and size, and `vec`
        // points at `vec_len` writable `struct page_region`s that outlive the call.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        let n = usize::try_from(n).ok()?.min(regions.len());
        huge += regions[..n]
            .iter()
            .map(|r| r.end.saturating_sub(r.start))
            .sum::<u64>();
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    Some(huge)
}

/// Whether the page cache holds the page at offset `at` of `map`'s file (mincore(2): a page
/// still being read does not count).
#[cfg(target_os = "linux")]
fn page_cached(map: &memmap2::Mmap, at: usize) -> bool {
    if at >= map.len() {
        return false;
    }
    let mut resident = 0u8;
    // SAFETY: the page asked about lies inside the live mapping `map` (checked above), and
    // mincore(2) writes one byte for it into `resident`.
    let ok = unsafe {
        libc::mincore(
            map.as_ptr().add(at / PAGE_LEN * PAGE_LEN) as *mut libc::c_void,
            PAGE_LEN,
            &mut resident,
        )
    };
    ok == 0 && resident & 1 != 0
}

/// What [`reseat_small_pages`] did with a mapping.
#[cfg(target_os = "linux")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reseat {
    /// Nothing to do: not cached, mapped in huge pages already, or the kernel cannot say.
    Left,
    /// The file's small-page cache was dropped, every checked region of it.
    Dropped,
    /// The cache is in small pages and (some of) it stayed after the drop: another process
    /// maps it, or the drop failed. Logged as a warning.
    Kept,
}

/// When the page cache holds `map`'s file (at `path`) in small folios, drops that cache, so
/// that lookups read the file again, each 2 MiB region in one huge page.
///
/// A file written by [`write_in_huge_pages`] is cached in huge folios, but one copied in by
/// another tool (`cp`, `rsync`), or read back in small pieces, is cached in small ones, and
/// the huge-page advice does not change a folio already cached: every probe then pays a TLB
/// miss and a page walk (a 10M-ID chain at 2.3× the flat array against ~1.8×,
/// `ops/CAPACITY.md`). The check touches one byte of up to [`RESEAT_SAMPLE`] cached 2 MiB
/// regions (a minor fault, no read: regions not cached are left alone, and fault in huge pages
/// when first read), asks the kernel how much of the mapping is mapped in huge pages, and
/// unmaps what it touched, so RSS after open stays as it was; a file it drops it first writes
/// back, since the drop skips dirty pages (a copy just made). Only hints and their checks:
/// any failure, or a kernel without `PAGEMAP_SCAN` (before 6.7), leaves the mapping as it is.
#[cfg(target_os = "linux")]
fn reseat_small_pages(map: &memmap2::Mmap, file: &File, path: &Path) -> Reseat {
    use std::os::fd::AsRawFd;
    let regions = map.len() / HUGE_PAGE_LEN;
    if regions < 2 {
        return Reseat::Left;
    }
    // Region 0 holds the header and is advised to small pages; a partial last region cannot
    // map huge. A region counts as cached when its first page is (one page asked each: asking
    // for the whole file walks its page cache page by page).
    let is_cached = |r: &usize| page_cached(map, r * HUGE_PAGE_LEN);
    let cached: Vec<usize> = (1..regions).filter(is_cached).collect();
    if cached.is_empty() {
        return Reseat::Left;
    }
    let n = cached.len().min(RESEAT_SAMPLE);
    let mut sum = 0u8;
    for i in 0..n {
        sum ^= std::hint::black_box(map[cached[i * cached.len() / n] * HUGE_PAGE_LEN]);
    }
    std::hint::black_box(sum);
    let huge = huge_page_bytes(
        map.as_ptr() as usize + HUGE_PAGE_LEN,
        (regions - 1) * HUGE_PAGE_LEN,
    );
    let want = (n * HUGE_PAGE_LEN) as u64;
    // SAFETY: MADV_DONTNEED on a read-only shared file mapping only drops this process's page
    // table entries; the next read maps the file's bytes again, unchanged.
    let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    let Some(huge) = huge else {
        return Reseat::Left;
    };
    if huge * 100 >= want * RESEAT_BELOW_PCT {
        return Reseat::Left;
    }
    // The drop skips dirty pages: a file just copied in is still being written back.
    if let Err(e) = file.sync_data() {
        tracing::warn!(op = "fdatasync", file = %path.display(), error = %e, "cannot write a snapshot's cache back before dropping it");
    }
    let (from, len) = (HUGE_PAGE_LEN, regions * HUGE_PAGE_LEN - HUGE_PAGE_LEN);
    // SAFETY: a plain system call on an open descriptor; it drops clean, unmapped cache only.
    let r = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            from as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    // Pages another process maps (a second reader of the store) stay cached, in small pages.
    let kept = cached.iter().filter(|r| is_cached(r)).count();
    if r == 0 && kept == 0 {
        tracing::info!(
            op = "map",
            file = %path.display(),
            checked_mib = want >> 20,
            huge_mib = huge >> 20,
            "the page cache held this snapshot in small pages (a copy?): dropped it, so that lookups read it again in huge pages"
        );
        Reseat::Dropped
    } else if r == 0 {
        tracing::warn!(
            op = "posix_fadvise",
            file = %path.display(),
            kept_regions = kept,
            cached_regions = cached.len(),
            "the page cache holds this snapshot in small pages and kept some of them after the drop (does another process map it?); those stay mapped in small pages"
        );
        Reseat::Kept
    } else {
        tracing::warn!(op = "posix_fadvise", file = %path.display(), error = %io::Error::from_raw_os_error(r), "cannot drop a snapshot's small-page cache; it stays mapped in small pages");
        Reseat::Kept
    }
}

/// The first write of [`write_in_huge_pages`]: the page that holds a snapshot's header, written
/// alone so that the page cache keeps it in a small folio and opening a store, which reads
/// every header, maps a few pages of each file instead of its first 2 MiB.
pub const HEAD_PIECE_LEN: usize = 4096;

/// Writes `parts`, one after the other, to the empty file `f`: the first [`HEAD_PIECE_LEN`]
/// bytes alone, then in writes that each end at a multiple of [`HUGE_PAGE_LEN`] of the file
/// (the last one at its end). Linux (ext4 from 6.16, XFS) caches the bytes of such a write in
/// folios as large as the write allows, up to 2 MiB, which a mapping with huge-page advice then
/// maps with one TLB entry each; writes that straddle those boundaries leave folios of 1 MiB or
/// less, mapped 4 KiB at a time, so that a random probe of a large snapshot pays a TLB miss and
/// a page walk on top of its memory read. Only the bytes of a piece that spans two parts are
/// copied.
pub fn write_in_huge_pages(f: &mut dyn WriteFile, parts: &[&[u8]]) -> io::Result<()> {
    let piece_end = |at: usize| {
        if at < HEAD_PIECE_LEN {
            HEAD_PIECE_LEN
        } else {
            (at / HUGE_PAGE_LEN + 1) * HUGE_PAGE_LEN
        }
    };
    let mut written = 0usize;
    let mut stage: Vec<u8> = Vec::new();
    for part in parts {
        let mut p = *part;
        while !p.is_empty() {
            let want = piece_end(written) - written - stage.len();
            if stage.is_empty() && p.len() >= want {
                // Whole pieces straight from the part: the header's page alone, after it as
                // many huge pages as the part holds.
                let n = if written < HEAD_PIECE_LEN {
                    want
                } else {
                    want + (p.len() - want) / HUGE_PAGE_LEN * HUGE_PAGE_LEN
                };
                f.write_all(&p[..n])?;
                written += n;
                p = &p[n..];
                continue;
            }
            let n = want.min(p.len());
            stage.extend_from_slice(&p[..n]);
            p = &p[n..];
            if n == want {
                f.write_all(&stage)?;
                written += stage.len();
                stage.clear();
            }
        }
    }
    if stage.is_empty() {
        Ok(())
    } else {
        f.write_all(&stage)
    }
}

/// A file open for appending.
pub trait WriteFile: Send {
    /// Appends all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (fsync).
    fn sync(&mut self) -> io::Result<()>;
}

/// The file operations the store needs, on one directory.
pub trait Fs: Send + Sync {
    /// The directory, for error messages.
    fn root(&self) -> &Path;
    /// Names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Whether a file exists.
    fn exists(&self, name: &str) -> bool;
    /// Maps a whole file read-only. The file must never change while mapped: the store only maps
    /// snapshot files, which are immutable once installed, and log files before any write.
    fn map(&self, name: &str) -> io::Result<Mapped>;
    /// Opens a file for reading as a stream, never a mapping: a backup reads a live store's
    /// files this way, its log while another process appends to it. The handle keeps the file
    /// readable even if it is removed meanwhile (POSIX unlink semantics).
    fn open_read(&self, name: &str) -> io::Result<Box<dyn io::Read + Send>> {
        self.map(name)
            .map(|m| Box::new(io::Cursor::new(m.to_vec())) as Box<dyn io::Read + Send>)
    }
    /// Creates (or truncates) a file for appending.
    fn create(&self, name: &str) -> io::Result<Box<dyn WriteFile>>;
    /// Opens an existing file for appending.
    fn append(&self, name: &str) -> io::Result<Box<dyn WriteFile>>;
    /// Renames a file, replacing the target.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Cuts a file to `len` bytes and makes that durable.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Takes this directory for one writer: the returned guard holds an exclusive lock until
    /// dropped. Fails with `WouldBlock` when another process (or store) holds it, after
    /// waiting a moment for a holder that is letting go (`RealFs`: half a second).
    fn lock(&self) -> io::Result<DirLock>;
}

/// An exclusive hold on a store directory, released when dropped (or when the process dies).
pub struct DirLock {
    _file: Option<File>,
}

/// Name of the lock file in a store directory.
pub const LOCK_NAME: &str = "LOCK";

/// How long taking a store directory's lock waits for a holder to let go before it reports
/// the store open elsewhere. A lock just released can stay held for a moment: a process that
/// starts a program holds a copy of every descriptor, the lock's among them, until that
/// program has started (a store closed and opened again while another thread spawned a
/// process was refused this way).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
/// How often the lock is tried again meanwhile.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// The store's directory on disk.
pub struct RealFs {
    dir: PathBuf,
}

impl RealFs {
    /// Uses `dir`, creating it if needed.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

struct RealFile(File);

impl WriteFile for RealFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        // fdatasync: the file's length changes with every append and is part of its data.
        self.0.sync_data()
    }
}

impl Fs for RealFs {
    fn root(&self) -> &Path {
        &self.dir
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    fn open_read(&self, name: &str) -> io::Result<Box<dyn io::Read + Send>> {
        Ok(Box::new(File::open(self.path(name))?))
    }

    fn map(&self, name: &str) -> io::Result<Mapped> {
        let file = File::open(self.path(name))?;
        if file.metadata()?.len() == 0 {
            return Ok(Mapped::Owned(Vec::new()));
        }
        // SAFETY: the mmap contract of the store: a mapped file is never modified or truncated
        // while mapped. Snapshot files are written under a temporary name, fsync'd, renamed and
        // never opened for writing again; log files are mapped only during recovery, before
        // the store appends to them. Another writer in the directory would break the contract,
        // which is why a store holds the directory's `LOCK` while open.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        // Lookups probe the mapping at random: ask for huge pages past the first
        // `HUGE_PAGE_LEN`, where the kernel and file system can map the page cache that way
        // (`write_in_huge_pages`), to spare a TLB miss per probe; and none for the first, so
        // that reading a header at open maps (and, on a cold cache, reads) a few small pages,
        // not 2 MiB of each file. The first is also advised random: a fault there would
        // otherwise read ahead the device's whole window (`read_ahead_kb`, 8 MiB on this
        // project's VMs) from the file's start, caching the next regions in small folios that
        // lookups then map 4 KiB at a time, and that `reseat_small_pages` would drop at every
        // open. Only hints: a kernel that declines them maps small pages.
        #[cfg(target_os = "linux")]
        if map.len() > HUGE_PAGE_LEN {
            use memmap2::Advice;
            let _ = map.advise_range(Advice::NoHugePage, 0, HUGE_PAGE_LEN);
            let _ = map.advise_range(Advice::Random, 0, HUGE_PAGE_LEN);
            let _ = map.advise_range(Advice::HugePage, HUGE_PAGE_LEN, map.len() - HUGE_PAGE_LEN);
            if name.ends_with(SNAPSHOT_SUFFIX) {
                let _ = reseat_small_pages(&map, &file, &self.path(name));
            }
        }
        Ok(Mapped::Map(map))
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn WriteFile>> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.path(name))?;
        Ok(Box::new(RealFile(f)))
    }

    fn append(&self, name: &str) -> io::Result<Box<dyn WriteFile>> {
        let f = OpenOptions::new().append(true).open(self.path(name))?;
        Ok(Box::new(RealFile(f)))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path(from), self.path(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path(name))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(self.path(name))?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn lock(&self) -> io::Result<DirLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path(LOCK_NAME))?;
        let start = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(DirLock { _file: Some(file) }),
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(LOCK_POLL);
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "the store is open in another process",
                    ));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
    }
}

/// One simulated file: what a crash would keep (`durable`) and what readers see (`data`).
#[derive(Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Default)]
struct SimState {
    inodes: Vec<Inode>,
    dir: HashMap<String, usize>,
    dir_durable: HashMap<String, usize>,
    /// Bumped by every crash; handles of an older generation fail, as a dead process's would.
    generation: u64,
    /// State of a small xorshift generator that picks how much of an unsynced tail survives.
    rng: u64,
    /// Mutating operations left before an armed crash strikes (`None`: not armed).
    crash_in: Option<u64>,
}

/// An in-memory file system that can lose unsynced data on [`SimFs::crash`].
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<SimState>>,
    root: PathBuf,
}

fn sim_err(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, what.to_owned())
}

impl SimFs {
    /// An empty simulated directory; `seed` drives what survives crashes.
    pub fn new(seed: u64) -> Self {
        let s = SimState {
            rng: seed | 1,
            ..SimState::default()
        };
        Self {
            state: Arc::new(Mutex::new(s)),
            root: PathBuf::from("sim"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding this lock can only come from a test's own assertion.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms a power cut that strikes during the `ops`-th mutating operation from now (write,
    /// sync, create, rename, remove, truncate, directory sync): that operation fails and the
    /// crash of [`SimFs::crash`] happens, so the caller sees an I/O error mid-way.
    pub fn arm_crash(&self, ops: u64) {
        self.lock().crash_in = Some(ops.max(1));
    }

    /// Whether an armed crash has struck (and disarms the flag).
    pub fn crashed_since_armed(&self) -> bool {
        let mut s = self.lock();
        matches!(s.crash_in.take(), Some(0))
    }

    /// Counts one mutating operation; `Err` when an armed crash strikes now.
    fn tick(s: &mut SimState) -> io::Result<()> {
        match s.crash_in {
            Some(1) => {
                s.crash_in = Some(0);
                Self::crash_locked(s);
                Err(io::Error::other("simulated power cut"))
            }
            Some(0) => Err(io::Error::other("simulated crash: handle is dead")),
            Some(n) => {
                s.crash_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A power cut: directory entries revert to the last directory sync, every file keeps its
    /// synced bytes plus a random prefix of what was appended after, and every open handle dies.
    pub fn crash(&self) {
        Self::crash_locked(&mut self.lock());
    }

    fn crash_locked(s: &mut SimState) {
        s.generation += 1;
        s.dir = s.dir_durable.clone();
        for i in 0..s.inodes.len() {
            let durable_len = s.inodes[i].durable.len();
            let extra = s.inodes[i].data.len().saturating_sub(durable_len);
            let keep = if extra == 0 {
                0
            } else {
                let r = next_rand(&mut s.rng);
                // Half the time nothing unsynced survives, otherwise a random prefix of it.
                if r & 1 == 0 {
                    0
                } else {
                    (r >> 1) as usize % (extra + 1)
                }
            };
            let inode = &mut s.inodes[i];
            let mut data = inode.durable.clone();
            if inode.data.starts_with(&inode.durable) {
                data.extend_from_slice(&inode.data[durable_len..durable_len + keep]);
            }
            inode.data = data.clone();
            inode.durable = data;
        }
    }

    /// Flips one bit of a file, in place (for corruption tests).
    pub fn flip_bit(&self, name: &str, offset: usize, bit: u8) -> io::Result<()> {
        let mut s = self.lock();
        let ino = *s.dir.get(name).ok_or_else(|| sim_err(name))?;
        let inode = &mut s.inodes[ino];
        let byte = inode
            .data
            .get_mut(offset)
            .ok_or_else(|| sim_err("offset past end"))?;
        *byte ^= 1 << (bit % 8);
        inode.durable = inode.data.clone();
        Ok(())
    }

    /// Current length of a file.
    pub fn len(&self, name: &str) -> Option<usize> {
        let s = self.lock();
        s.dir.get(name).map(|&i| s.inodes[i].data.len())
    }
}

fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

struct SimFile {
    fs: SimFs,
    inode: usize,
    generation: u64,
}

impl SimFile {
    fn with<R>(&self, f: impl FnOnce(&mut Inode) -> R) -> io::Result<R> {
        let mut s = self.fs.lock();
        if s.generation != self.generation {
            return Err(io::Error::other("simulated crash: handle is dead"));
        }
        SimFs::tick(&mut s)?;
        Ok(f(&mut s.inodes[self.inode]))
    }
}

impl WriteFile for SimFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.with(|i| i.data.extend_from_slice(buf))
    }
    fn sync(&mut self) -> io::Result<()> {
        self.with(|i| i.durable = i.data.clone())
    }
}

impl Fs for SimFs {
    fn root(&self) -> &Path {
        &self.root
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut v: Vec<String> = self.lock().dir.keys().cloned().collect();
        v.sort();
        Ok(v)
    }

    fn exists(&self, name: &str) -> bool {
        self.lock().dir.contains_key(name)
    }

    fn map(&self, name: &str) -> io::Result<Mapped> {
        let s = self.lock();
        let ino = *s.dir.get(name).ok_or_else(|| sim_err(name))?;
        Ok(Mapped::Owned(s.inodes[ino].data.clone()))
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn WriteFile>> {
        let mut s = self.lock();
        Self::tick(&mut s)?;
        s.inodes.push(Inode::default());
        let inode = s.inodes.len() - 1;
        s.dir.insert(name.to_owned(), inode);
        Ok(Box::new(SimFile {
            fs: self.clone(),
            inode,
            generation: s.generation,
        }))
    }

    fn append(&self, name: &str) -> io::Result<Box<dyn WriteFile>> {
        let s = self.lock();
        let inode = *s.dir.get(name).ok_or_else(|| sim_err(name))?;
        Ok(Box::new(SimFile {
            fs: self.clone(),
            inode,
            generation: s.generation,
        }))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = self.lock();
        Self::tick(&mut s)?;
        let ino = s.dir.remove(from).ok_or_else(|| sim_err(from))?;
        s.dir.insert(to.to_owned(), ino);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut s = self.lock();
        Self::tick(&mut s)?;
        s.dir.remove(name).map(|_| ()).ok_or_else(|| sim_err(name))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        Self::tick(&mut s)?;
        let ino = *s.dir.get(name).ok_or_else(|| sim_err(name))?;
        let inode = &mut s.inodes[ino];
        inode.data.truncate(len as usize);
        inode.durable = inode.data.clone();
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut s = self.lock();
        Self::tick(&mut s)?;
        s.dir_durable = s.dir.clone();
        Ok(())
    }

    /// The simulator has one process; it does not lock.
    fn lock(&self) -> io::Result<DirLock> {
        Ok(DirLock { _file: None })
    }
}

/// An operation a [`Faults`] can break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOp {
    /// Creating a file.
    Create,
    /// Appending to a file.
    Write,
    /// Fsyncing a file.
    Sync,
    /// Renaming a file (matched on the source name).
    Rename,
    /// Mapping a file (a read-only tool must never map a live log segment).
    Map,
}

/// Failures and stalls armed on a [`TracedFs`], changeable while the store runs: the seam
/// through which tests give the store a full disk (ENOSPC), a failing one (EIO) or a hung one
/// (an fsync that does not return until released).
#[derive(Default)]
pub struct Faults {
    armed: Mutex<Vec<(FaultOp, String, i32)>>,
    stalled: Mutex<bool>,
    unstalled: std::sync::Condvar,
    /// Syncs waiting in a stall now.
    stalled_now: AtomicU64,
}

impl Faults {
    /// From now on `op` on a file whose name ends with `suffix` fails with OS error `errno`.
    pub fn arm(&self, op: FaultOp, suffix: &str, errno: i32) {
        self.lock_armed().push((op, suffix.to_owned(), errno));
    }

    /// Disarms every failure.
    pub fn clear(&self) {
        self.lock_armed().clear();
    }

    /// From now on every file sync blocks until [`Faults::release_syncs`].
    pub fn stall_syncs(&self) {
        *self.stalled.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// Lets stalled syncs (and later ones) go on.
    pub fn release_syncs(&self) {
        *self.stalled.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.unstalled.notify_all();
    }

    /// How many syncs are blocked in a stall now.
    pub fn stalled_now(&self) -> u64 {
        self.stalled_now.load(Ordering::Acquire)
    }

    fn lock_armed(&self) -> MutexGuard<'_, Vec<(FaultOp, String, i32)>> {
        // Poisoned only by a test's own panic.
        self.armed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, op: FaultOp, name: &str) -> io::Result<()> {
        match self
            .lock_armed()
            .iter()
            .find(|(o, suffix, _)| *o == op && name.ends_with(suffix.as_str()))
        {
            Some((.., errno)) => Err(io::Error::from_raw_os_error(*errno)),
            None => Ok(()),
        }
    }

    fn wait_if_stalled(&self) {
        let mut stalled = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        if !*stalled {
            return;
        }
        self.stalled_now.fetch_add(1, Ordering::AcqRel);
        while *stalled {
            stalled = self
                .unstalled
                .wait(stalled)
                .unwrap_or_else(|e| e.into_inner());
        }
        self.stalled_now.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Forwards every operation to another [`Fs`], so that benchmarks and tests can watch or
/// break it: it counts file fsyncs, and fails or stalls the operations [`Faults`] names.
pub struct TracedFs {
    inner: Arc<dyn Fs>,
    /// File fsyncs so far.
    pub syncs: Arc<AtomicU64>,
    /// The failures and stalls armed.
    pub faults: Arc<Faults>,
}

impl TracedFs {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Fs>) -> Self {
        Self {
            inner,
            syncs: Arc::default(),
            faults: Arc::default(),
        }
    }

    fn traced(&self, name: &str, file: Box<dyn WriteFile>) -> Box<dyn WriteFile> {
        Box::new(TracedFile {
            inner: file,
            name: name.to_owned(),
            syncs: self.syncs.clone(),
            faults: self.faults.clone(),
        })
    }
}

struct TracedFile {
    inner: Box<dyn WriteFile>,
    name: String,
    syncs: Arc<AtomicU64>,
    faults: Arc<Faults>,
}

impl WriteFile for TracedFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.faults.check(FaultOp::Write, &self.name)?;
        self.inner.write_all(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.faults.wait_if_stalled();
        self.faults.check(FaultOp::Sync, &self.name)?;
        self.inner.sync()
    }
}

impl Fs for TracedFs {
    fn root(&self) -> &Path {
        self.inner.root()
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn exists(&self, name: &str) -> bool {
        self.inner.exists(name)
    }
    fn map(&self, name: &str) -> io::Result<Mapped> {
        self.faults.check(FaultOp::Map, name)?;
        self.inner.map(name)
    }
    fn open_read(&self, name: &str) -> io::Result<Box<dyn io::Read + Send>> {
        self.inner.open_read(name)
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn WriteFile>> {
        self.faults.check(FaultOp::Create, name)?;
        Ok(self.traced(name, self.inner.create(name)?))
    }
    fn append(&self, name: &str) -> io::Result<Box<dyn WriteFile>> {
        Ok(self.traced(name, self.inner.append(name)?))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.faults.check(FaultOp::Rename, from)?;
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.inner.truncate(name, len)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
    fn lock(&self) -> io::Result<DirLock> {
        self.inner.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty store directory of its own under the system temp dir, and its `RealFs`.
    #[cfg(target_os = "linux")]
    fn scratch(tag: &str) -> (PathBuf, RealFs) {
        let dir = std::env::temp_dir().join(format!("mykey-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let fs = RealFs::new(&dir).expect("temp dir");
        (dir, fs)
    }

    /// Keeps every write apart.
    struct Writes(Vec<Vec<u8>>);

    impl WriteFile for Writes {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            self.0.push(buf.to_vec());
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A snapshot whose page cache came from small writes (a `cp`) maps in small pages, whatever
    /// the advice; the store's map drops that cache, so that its regions fault in again as huge
    /// pages. Skipped where the kernel or file system never maps a file in huge pages.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_snapshot_cached_in_small_pages_is_read_again_in_huge_pages() {
        // The `FilePmdMapped` bytes of the mapping that starts at `addr`, from
        // `/proc/self/smaps`.
        fn smaps_huge_page_bytes(addr: usize) -> Option<u64> {
            let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
            let head = format!("\n{addr:x}-");
            // A mapping's line starts with its address range; its fields follow.
            let fields = &smaps[smaps.find(&head)? + 1..];
            let fields = &fields[fields.find('\n')? + 1..];
            let end = fields
                .split_inclusive('\n')
                .take_while(|l| l.split_once(' ').is_none_or(|(a, _)| !a.contains('-')))
                .map(str::len)
                .sum::<usize>();
            super::super::health::file_huge_page_bytes(&fields[..end])
        }
        const H: usize = HUGE_PAGE_LEN;
        const REGIONS: usize = 9;
        let (dir, fs) = scratch("reseat");
        let bytes: Vec<u8> = (0..REGIONS * H).map(|i| (i * 7 + i / 4096) as u8).collect();
        let write = |name: &str, huge: bool| {
            let mut f = fs.create(name).expect("create");
            if huge {
                write_in_huge_pages(&mut *f, &[&bytes]).expect("write");
            } else {
                for piece in bytes.chunks(64 << 10) {
                    f.write_all(piece).expect("write");
                }
            }
            f.sync().expect("fsync");
        };
        // Maps `name` as the store does, reads a byte of every region past the first, and
        // says how much of it maps in huge pages.
        let huge_bytes = |name: &str| -> u64 {
            let m = fs.map(name).expect("map");
            let Mapped::Map(map) = &m else {
                panic!("a real file is mapped")
            };
            let mut sum = 0u8;
            for r in 1..REGIONS {
                sum ^= std::hint::black_box(map[r * H]);
            }
            std::hint::black_box(sum);
            assert_eq!(&map[..], &bytes[..], "the bytes read are the bytes written");
            // The kernel's own account, read apart from the store's check.
            let smaps = smaps_huge_page_bytes(map.as_ptr() as usize + H).unwrap_or(0);
            if let Some(scanned) = huge_page_bytes(map.as_ptr() as usize + H, (REGIONS - 1) * H) {
                assert_eq!(scanned, smaps, "PAGEMAP_SCAN and smaps agree on {name}");
            }
            smaps
        };
        write("huge.snap", true);
        if huge_bytes("huge.snap") == 0 {
            eprintln!("skipped: this kernel or file system maps no file in huge pages");
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        write("copied.snap", false);
        let got = huge_bytes("copied.snap");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            got >= ((REGIONS - 2) * H) as u64,
            "a snapshot cached in small pages maps {} KiB in huge pages after the store's map, of {} KiB",
            got >> 10,
            ((REGIONS - 1) * H) >> 10
        );
    }

    /// How long [`reading_a_cold_snapshots_header_reads_nothing_past_its_first_region`]
    /// waits for background read-ahead to land before it counts what was cached.
    #[cfg(target_os = "linux")]
    const READ_AHEAD_SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

    /// Reading a header from a cold snapshot must not read ahead into the file's huge-page
    /// regions: that would cache them in small folios (this VM's disk reads ahead 8 MiB).
    #[cfg(target_os = "linux")]
    #[test]
    fn reading_a_cold_snapshots_header_reads_nothing_past_its_first_region() {
        use std::os::fd::AsRawFd;
        const H: usize = HUGE_PAGE_LEN;
        const REGIONS: usize = 6;
        let (dir, fs) = scratch("cold");
        let bytes: Vec<u8> = (0..REGIONS * H).map(|i| (i % 241) as u8).collect();
        let mut f = fs.create("cold.snap").expect("create");
        write_in_huge_pages(&mut *f, &[&bytes]).expect("write");
        f.sync().expect("fsync");
        drop(f);
        let file = File::open(fs.path("cold.snap")).expect("open");
        // SAFETY: a plain system call on an open descriptor; the pages are clean (fsync'd).
        let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0, "drop the test file's cache");
        let m = fs.map("cold.snap").expect("map");
        assert_eq!(m[0], bytes[0], "the header's first byte");
        let Mapped::Map(map) = &m else {
            panic!("a real file is mapped")
        };
        // Read-ahead past the faulting page completes in the background, and mincore counts a
        // page only once it has been read: give it time to land (no timing is asserted).
        std::thread::sleep(READ_AHEAD_SETTLE);
        let cached_past_first = (H..map.len())
            .step_by(PAGE_LEN)
            .filter(|&at| page_cached(map, at))
            .count();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            cached_past_first, 0,
            "reading the header cached {cached_past_first} pages past the first 2 MiB"
        );
    }

    /// A snapshot whose small-page cache another mapping holds cannot be dropped: the check
    /// must say so (a warning, `Reseat::Kept`), not report a drop that did not happen; with
    /// that mapping gone, the same check drops it.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_drop_that_another_mapping_keeps_is_reported_as_kept() {
        const H: usize = HUGE_PAGE_LEN;
        const REGIONS: usize = 6;
        let (dir, fs) = scratch("kept");
        let mut f = fs.create("copied.snap").expect("create");
        let bytes: Vec<u8> = (0..REGIONS * H).map(|i| (i % 251) as u8).collect();
        for piece in bytes.chunks(64 << 10) {
            f.write_all(piece).expect("write");
        }
        f.sync().expect("fsync");
        drop(f);
        let path = fs.path("copied.snap");
        let file = File::open(&path).expect("open");
        // SAFETY: the test's own file, never written while mapped.
        let other = unsafe { memmap2::Mmap::map(&file) }.expect("map");
        let mut sum = 0u8;
        for i in (0..other.len()).step_by(PAGE_LEN) {
            sum ^= std::hint::black_box(other[i]);
        }
        std::hint::black_box(sum);
        // SAFETY: as above.
        let map = unsafe { memmap2::Mmap::map(&file) }.expect("map");
        let _ = map.advise_range(memmap2::Advice::HugePage, H, map.len() - H);
        let held = reseat_small_pages(&map, &file, &path);
        drop(other);
        let alone = reseat_small_pages(&map, &file, &path);
        let _ = std::fs::remove_dir_all(&dir);
        if huge_page_bytes(map.as_ptr() as usize, map.len()).is_none() || held == Reseat::Left {
            eprintln!(
                "skipped: this kernel has no PAGEMAP_SCAN, or its file system caches small writes in huge pages"
            );
            return;
        }
        assert_eq!(held, Reseat::Kept, "a cache another mapping holds is kept");
        assert_eq!(
            alone,
            Reseat::Dropped,
            "with that mapping gone it is dropped"
        );
    }

    #[test]
    fn a_file_is_written_in_pieces_that_end_on_huge_page_boundaries() {
        const H: usize = HUGE_PAGE_LEN;
        let part = |len: usize, seed: u8| -> Vec<u8> {
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect()
        };
        let cases: Vec<Vec<Vec<u8>>> = vec![
            // A header, its padding, the buckets and a heap, as a snapshot is written.
            vec![
                part(64, 1),
                part(192, 2),
                part(5 * H + 100, 3),
                part(3 * H - 7, 4),
            ],
            // Parts that end exactly on a boundary, an empty one, and a last short piece.
            vec![
                part(H, 5),
                part(0, 6),
                part(H - 1, 7),
                part(1, 8),
                part(10, 9),
            ],
            // All of it shorter than the header's page, and just past it.
            vec![part(64, 10), part(1000, 11)],
            vec![part(64, 12), part(HEAD_PIECE_LEN, 13)],
            // One part holding the header's page and several huge pages.
            vec![part(HEAD_PIECE_LEN + 2 * H + 5, 14)],
        ];
        for parts in cases {
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let mut w = Writes(Vec::new());
            write_in_huge_pages(&mut w, &refs).expect("write");
            assert_eq!(w.0.concat(), parts.concat(), "the bytes, in order");
            let mut end = 0;
            for (i, piece) in w.0.iter().enumerate() {
                assert!(!piece.is_empty(), "no empty write");
                end += piece.len();
                if i == 0 && w.0.len() > 1 {
                    assert_eq!(end, HEAD_PIECE_LEN, "the header's page goes alone");
                } else if i + 1 < w.0.len() {
                    assert_eq!(end % H, 0, "write {i} ends at {end}, inside a huge page");
                }
            }
        }
    }
}
