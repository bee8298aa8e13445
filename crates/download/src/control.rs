//! The handle a UI keeps to pause or cancel a running download from another thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cheap to clone; all clones steer the same download. The downloader checks it between chunks (every
/// 64 KiB) and while waiting to retry, so a request takes effect within a fraction of a second.
#[derive(Debug, Clone, Default)]
pub struct Control {
    inner: Arc<Flags>,
}

#[derive(Debug, Default)]
struct Flags {
    pause: AtomicBool,
    cancel: AtomicBool,
}

/// What a control handle asks of the download right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    Continue,
    Pause,
    Cancel,
}

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop soon and keep the partial file, so a later `download` of the same source resumes it
    /// (in this run of the app or after a restart).
    pub fn pause(&self) {
        self.inner.pause.store(true, Ordering::SeqCst);
    }

    /// Stop soon and delete the partial file and its resume record.
    pub fn cancel(&self) {
        self.inner.cancel.store(true, Ordering::SeqCst);
    }

    /// Clears a pause so this handle can drive the resumed download.
    pub fn resume(&self) {
        self.inner.pause.store(false, Ordering::SeqCst);
    }

    pub fn is_paused(&self) -> bool {
        self.inner.pause.load(Ordering::SeqCst)
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.load(Ordering::SeqCst)
    }

    /// Cancel wins over pause: a user who asked for both wants the file gone.
    pub(crate) fn request(&self) -> Request {
        if self.is_cancelled() {
            Request::Cancel
        } else if self.is_paused() {
            Request::Pause
        } else {
            Request::Continue
        }
    }

    /// Sleeps up to `d`, waking early when a pause or cancel arrives.
    pub(crate) fn sleep(&self, d: Duration) -> Request {
        let end = Instant::now() + d;
        loop {
            let r = self.request();
            let now = Instant::now();
            if r != Request::Continue || now >= end {
                return r;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(20)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_flags_and_cancel_wins() {
        let c = Control::new();
        let ui = c.clone();
        assert_eq!(c.request(), Request::Continue);
        ui.pause();
        assert_eq!(c.request(), Request::Pause);
        ui.cancel();
        assert_eq!(c.request(), Request::Cancel);
    }

    #[test]
    fn sleep_wakes_on_pause() {
        let c = Control::new();
        let ui = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            ui.pause();
        });
        let start = Instant::now();
        assert_eq!(c.sleep(Duration::from_secs(10)), Request::Pause);
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
        c.resume();
        assert_eq!(c.request(), Request::Continue);
    }
}
