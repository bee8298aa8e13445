//! The compute thread count.
//!
//! Candle's CPU kernels run on a process-wide pool sized once, on first use, from
//! `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS`. [`init`] sets both before anything starts, so it
//! must run at program start, before a model is loaded.

use std::sync::atomic::{AtomicUsize, Ordering};

static CONFIGURED: AtomicUsize = AtomicUsize::new(0);

/// The machine's available cores (the default thread count).
pub fn available() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Sets the number of compute threads (0 = all available cores). Only the first call has an
/// effect; later calls return the count already in force.
pub fn init(threads: usize) -> usize {
    let n = if threads == 0 { available() } else { threads };
    match CONFIGURED.compare_exchange(0, n, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => {
            // The pools read these once when they start; nothing has started yet.
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
        0 => available(),
        n => n,
    }
}
