//! The compute threads: how many, and the pool every parallel region of the engine runs on.
//!
//! [`pool`] runs `f` over `0..n` items split into chunks that the calling thread and the
//! workers claim from one atomic cursor. It is built to share the machine:
//! - A region ends when every item is done, not when every worker has checked in: a worker the
//!   operating system has not scheduled (its core is busy with another process, or the app's
//!   own webview) holds nothing up; the threads that run take its share. (A pool whose barrier
//!   waits for every worker stalls a whole scheduler time slice whenever one is preempted,
//!   which is how decoding collapses ~3x when one core is busy.)
//! - Idle workers spin only briefly (decode's regions come microseconds apart), then yield the
//!   core to whatever else wants it, then sleep until the next region; a waiting caller yields
//!   too. Nothing spins for long with a core that another thread needs.
//!
//! [`init`] sizes the pool once, before it first runs; [`default_threads`] is the count when
//! the user chose none.

use std::any::Any;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

static CONFIGURED: AtomicUsize = AtomicUsize::new(0);

/// The machine's available cores.
pub fn available() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The thread count when the user chose none: every available core. The pool gives a core
/// back as soon as it has no work, and a busy core only costs the share of work it would have
/// done, so using all of them is the fastest choice on a quiet machine and degrades gently on
/// a busy one (see doc/benchmarks.md for the measurements).
pub fn default_threads() -> usize {
    available()
}

/// Sets the number of compute threads (0 = [`default_threads`]). Only the first call has an
/// effect, and only before the pool first runs; later calls return the count in force.
pub fn init(threads: usize) -> usize {
    let n = if threads == 0 {
        default_threads()
    } else {
        threads
    };
    match CONFIGURED.compare_exchange(0, n, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => {
            // The Candle backend's own CPU ops run on Candle's pool (rayon), which reads these
            // once when it starts; set them here so the user's count holds on every backend.
            std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            n
        }
        Err(current) => current,
    }
}

/// The thread count in force (the default if [`init`] was never called).
pub fn current() -> usize {
    match CONFIGURED.load(Ordering::SeqCst) {
        0 => default_threads(),
        n => n,
    }
}

/// The process's compute pool, started on first use with [`current`] threads (the caller
/// being one of them).
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        // Fixes the count: a later `init` reports it instead of pretending to change it.
        let n = init(0);
        Pool::new(n - 1)
    })
}

/// How many times an idle worker looks for a new region, pausing in between (some tens of
/// microseconds: the gap between two regions of a decode step), before it starts yielding its
/// core; and how long it yields (the gap between two tokens fits) before it sleeps.
const SPIN_POLLS: u32 = 2000;
const YIELD: Duration = Duration::from_millis(2);

/// What the caller publishes for one region. Every field is atomic: a worker may read them
/// while the next region is being set up, and then finds out (its claim fails) that they are
/// not for the region it saw.
struct Shared {
    /// The latest region's number; workers wait for it to change.
    region: AtomicU64,
    /// `(region << 32) | next unclaimed item`: a claim names the region it is for.
    cursor: AtomicU64,
    n_items: AtomicUsize,
    chunk: AtomicUsize,
    /// `f` as a type-erased function and its data.
    call: AtomicUsize,
    data: AtomicUsize,
    /// Items finished; the region ends when it reaches `n_items`.
    done: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    stop: AtomicBool,
    /// Per worker: it is asleep (or about to be) and needs an unpark.
    asleep: Box<[AtomicBool]>,
    threads: OnceLock<Box<[Thread]>>,
}

/// A pool of compute threads (see the module docs).
pub struct Pool {
    shared: &'static Shared,
    workers: usize,
    /// One region at a time; the region counter lives under it.
    regions: Mutex<u64>,
}

thread_local! {
    static IN_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Calls the `F` at `data` on `items`.
///
/// # Safety
/// `data` points at a live `F`.
unsafe fn trampoline<F: Fn(Range<usize>) + Sync>(data: usize, items: Range<usize>) {
    // SAFETY: the caller guarantees it.
    let f = unsafe { &*(data as *const F) };
    f(items)
}

impl Shared {
    /// Claims and runs chunks of `region` until none are left (or a newer region began, which
    /// means this one's items are all claimed). Returns whether it ran any.
    fn work(&self, region: u64) -> bool {
        let mut ran = false;
        loop {
            let c = self.cursor.load(Ordering::Acquire);
            if c >> 32 != region & 0xffff_ffff {
                return ran;
            }
            let start = (c & 0xffff_ffff) as usize;
            let (n, chunk) = (
                self.n_items.load(Ordering::Relaxed),
                self.chunk.load(Ordering::Relaxed),
            );
            if start >= n {
                return ran;
            }
            let end = n.min(start + chunk);
            let next = (c & !0xffff_ffff) | end as u64;
            if self
                .cursor
                .compare_exchange_weak(c, next, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // The claim succeeded, so the region is live (its caller waits for these items):
            // `call` and `data` are its own, and `data` points at its live closure.
            let (call, data) = (
                self.call.load(Ordering::Relaxed),
                self.data.load(Ordering::Relaxed),
            );
            // SAFETY: `call` was made from `trampoline::<F>` for the `F` at `data`.
            let call: unsafe fn(usize, Range<usize>) = unsafe { std::mem::transmute(call) };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: as above; the closure outlives the region.
                unsafe { call(data, start..end) }
            }));
            if let Err(payload) = result {
                let mut first = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert(payload);
            }
            ran = true;
            self.done.fetch_add(end - start, Ordering::Release);
        }
    }

    /// A worker's life: wait for a region, help with it, repeat.
    fn worker(&self, id: usize) {
        IN_POOL.with(|f| f.set(true));
        let mut seen = self.region.load(Ordering::Acquire);
        loop {
            let region = self.wait_for_region(id, seen);
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            seen = region;
            self.work(region);
        }
    }

    /// Waits for a region other than `seen`: spins, then yields the core, then sleeps.
    fn wait_for_region(&self, id: usize, seen: u64) -> u64 {
        let mut polls = 0u32;
        let mut yielding_since = None;
        loop {
            let r = self.region.load(Ordering::Acquire);
            if r != seen || self.stop.load(Ordering::Relaxed) {
                return r;
            }
            if polls < SPIN_POLLS {
                polls += 1;
                std::hint::spin_loop();
                continue;
            }
            let since = *yielding_since.get_or_insert_with(Instant::now);
            if since.elapsed() < YIELD {
                std::thread::yield_now();
                continue;
            }
            // Announce the sleep, then look once more: the caller publishes the region before
            // it reads `asleep` (both SeqCst), so one of the two sees the other.
            self.asleep[id].store(true, Ordering::SeqCst);
            if self.region.load(Ordering::SeqCst) == seen && !self.stop.load(Ordering::SeqCst) {
                std::thread::park();
            }
            self.asleep[id].store(false, Ordering::SeqCst);
        }
    }
}

impl Pool {
    fn new(workers: usize) -> Pool {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            region: AtomicU64::new(0),
            cursor: AtomicU64::new(0),
            n_items: AtomicUsize::new(0),
            chunk: AtomicUsize::new(1),
            call: AtomicUsize::new(0),
            data: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            stop: AtomicBool::new(false),
            asleep: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            threads: OnceLock::new(),
        }));
        let threads: Vec<Thread> = (0..workers)
            .map(|id| {
                std::thread::Builder::new()
                    .name(format!("smollm3-compute-{id}"))
                    .spawn(move || shared.worker(id))
                    .expect("cannot start a compute thread")
                    .thread()
                    .clone()
            })
            .collect();
        let _ = shared.threads.set(threads.into_boxed_slice());
        Pool {
            shared,
            workers,
            regions: Mutex::new(0),
        }
    }

    /// Threads that run a region: the workers and the caller.
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f` on every item of `0..n_items`, in chunks of consecutive items, on the caller and
    /// the workers; returns when all are done. A panic in `f` is raised again here. Called from
    /// inside a region, it runs `f` on the calling thread.
    pub fn execute_chunked<F: Fn(Range<usize>) + Sync>(&self, n_items: usize, f: F) {
        if n_items == 0 {
            return;
        }
        if self.workers == 0 || n_items == 1 || IN_POOL.with(|c| c.get()) {
            return f(0..n_items);
        }
        // Items are counted in 32 bits in the cursor; no region comes near that.
        assert!(n_items < 1 << 31, "{n_items} items in one parallel region");
        let sh = self.shared;
        let mut regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        *regions += 1;
        let region = *regions;
        // About 8 claims per thread: few enough that the cursor is not contended, enough that
        // the threads that run absorb the share of one that does not.
        let chunk = n_items.div_ceil(self.threads() * 8).max(1);
        sh.n_items.store(n_items, Ordering::Relaxed);
        sh.chunk.store(chunk, Ordering::Relaxed);
        sh.call.store(
            trampoline::<F> as unsafe fn(usize, Range<usize>) as usize,
            Ordering::Relaxed,
        );
        sh.data.store(&f as *const F as usize, Ordering::Relaxed);
        sh.done.store(0, Ordering::Relaxed);
        // Publishes the fields above to whoever claims from this region.
        sh.cursor
            .store((region & 0xffff_ffff) << 32, Ordering::Release);
        sh.region.store(region, Ordering::SeqCst);
        if let Some(threads) = sh.threads.get() {
            for (t, asleep) in threads.iter().zip(sh.asleep.iter()) {
                if asleep.load(Ordering::SeqCst) {
                    t.unpark();
                }
            }
        }
        IN_POOL.with(|c| c.set(true));
        sh.work(region);
        IN_POOL.with(|c| c.set(false));
        // The rest is in the workers' hands: spin briefly, then let them have the core.
        let mut polls = 0u32;
        while sh.done.load(Ordering::Acquire) < n_items {
            polls = polls.wrapping_add(1);
            if polls < SPIN_POLLS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // Taken before the unwind, so the lock is not held (and poisoned) by it.
        let panicked = sh.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(regions);
        if let Some(payload) = panicked {
            std::panic::resume_unwind(payload);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Only a pool made by the tests is dropped (the process's lives as long as it does);
        // its leaked state stays valid for workers that have not yet seen the stop.
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.region.fetch_add(1 << 40, Ordering::SeqCst);
        if let Some(threads) = self.shared.threads.get() {
            threads.iter().for_each(Thread::unpark);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_exactly_once_in_every_region() {
        let pool = Pool::new(3);
        for n in [1, 2, 7, 64, 1000, 4097] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..20 {
                pool.execute_chunked(n, |items| {
                    for i in items {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 20),
                "n = {n}"
            );
        }
    }

    #[test]
    fn a_region_does_not_wait_for_a_worker_that_never_runs() {
        // Three workers that are never scheduled would hold a barrier forever; here the caller
        // does all the work and returns.
        let pool = Pool::new(3);
        let threads = pool.shared.threads.get().unwrap();
        // Stand-ins for preempted workers: the stop makes real ones exit instead of helping.
        pool.shared.stop.store(true, Ordering::SeqCst);
        pool.shared.region.fetch_add(1 << 40, Ordering::SeqCst);
        threads.iter().for_each(Thread::unpark);
        std::thread::sleep(Duration::from_millis(50));
        *pool.regions.lock().unwrap() += 1 << 40;
        let sum = AtomicUsize::new(0);
        pool.execute_chunked(1000, |items| {
            sum.fetch_add(items.sum::<usize>(), Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 999 * 1000 / 2);
    }

    #[test]
    fn a_panic_in_a_region_reaches_the_caller_and_the_pool_still_works() {
        let pool = Pool::new(2);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.execute_chunked(100, |items| {
                if items.contains(&57) {
                    panic!("item 57");
                }
            })
        }));
        assert!(caught.is_err());
        let count = AtomicUsize::new(0);
        pool.execute_chunked(100, |items| {
            count.fetch_add(items.len(), Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn nested_regions_run_inline() {
        let pool = Pool::new(2);
        let count = AtomicUsize::new(0);
        pool.execute_chunked(8, |outer| {
            for _ in outer {
                pool.execute_chunked(4, |inner| {
                    count.fetch_add(inner.len(), Ordering::Relaxed);
                });
            }
        });
        assert_eq!(count.load(Ordering::Relaxed), 32);
    }

    #[test]
    fn sleeping_workers_wake_for_the_next_region() {
        let pool = Pool::new(2);
        pool.execute_chunked(10, |_| {});
        // Long enough for the workers to go to sleep.
        std::thread::sleep(YIELD + Duration::from_millis(20));
        let seen = Mutex::new(std::collections::HashSet::new());
        for _ in 0..200 {
            pool.execute_chunked(64, |_| {
                seen.lock().unwrap().insert(std::thread::current().id());
                std::thread::sleep(Duration::from_micros(200));
            });
            if seen.lock().unwrap().len() == 3 {
                break;
            }
        }
        assert_eq!(seen.lock().unwrap().len(), 3, "every thread took part");
    }
}
