//! Progress reports for the UI and the CLI, and the meter that paces them and estimates speed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Where a download is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Opening the connection (also before each resume).
    Connecting,
    Downloading,
    /// Waiting before another attempt after a dropped connection or a server error.
    Retrying,
    /// Reading back a partial file from an earlier session, or checking the finished file.
    Verifying,
    /// Stopped on request; the partial file is kept.
    Paused,
    /// Stopped on request; the partial file is deleted.
    Cancelled,
    /// Verified and installed.
    Done,
}

/// One progress report. `total` is unknown only when the server announces no size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub downloaded: u64,
    pub total: Option<u64>,
    pub percent: Option<f64>,
    /// Recent speed, over the last few seconds.
    pub bytes_per_sec: f64,
    pub eta_secs: Option<u64>,
    pub state: State,
}

/// How far back the speed estimate looks: long enough to smooth bursts, short enough to follow changes.
const SPEED_WINDOW: Duration = Duration::from_secs(5);

/// Turns byte counts into [`Progress`] reports, at most one per `interval` unless the state changes.
pub(crate) struct Meter<'a> {
    sink: &'a mut dyn FnMut(&Progress),
    interval: Duration,
    last_emit: Option<Instant>,
    last_state: Option<State>,
    samples: VecDeque<(Instant, u64)>,
    pub(crate) downloaded: u64,
    pub(crate) total: Option<u64>,
}

impl<'a> Meter<'a> {
    pub(crate) fn new(sink: &'a mut dyn FnMut(&Progress), interval: Duration) -> Self {
        Self {
            sink,
            interval,
            last_emit: None,
            last_state: None,
            samples: VecDeque::new(),
            downloaded: 0,
            total: None,
        }
    }

    /// Records that the file now holds `downloaded` bytes; reports if the interval has passed.
    pub(crate) fn advance(&mut self, downloaded: u64) {
        let now = Instant::now();
        self.downloaded = downloaded;
        self.samples.push_back((now, downloaded));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > SPEED_WINDOW)
        {
            self.samples.pop_front();
        }
        let due = self
            .last_emit
            .is_none_or(|t| now.duration_since(t) >= self.interval);
        if due {
            self.emit(State::Downloading);
        }
    }

    /// Forgets the speed history, e.g. when the file restarts from zero or after a pause.
    pub(crate) fn reset_speed(&mut self) {
        self.samples.clear();
    }

    /// Reports `state` now if it differs from the last report; `Downloading` is paced by `advance`.
    pub(crate) fn state(&mut self, state: State) {
        if self.last_state != Some(state) {
            self.emit(state);
        }
    }

    /// Reports unconditionally: the final report of a run.
    pub(crate) fn emit(&mut self, state: State) {
        let speed = self.speed();
        let percent = self
            .total
            .filter(|t| *t > 0)
            .map(|t| (self.downloaded as f64 / t as f64 * 100.0).min(100.0));
        let eta_secs = match (self.total, state) {
            (_, State::Done) => Some(0),
            (Some(t), _) if speed > 0.0 => {
                Some((t.saturating_sub(self.downloaded) as f64 / speed).ceil() as u64)
            }
            _ => None,
        };
        let p = Progress {
            downloaded: self.downloaded,
            total: self.total,
            percent,
            bytes_per_sec: speed,
            eta_secs,
            state,
        };
        self.last_emit = Some(Instant::now());
        self.last_state = Some(state);
        (self.sink)(&p);
    }

    fn speed(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                b1.saturating_sub(*b0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_paced_but_state_changes_are_immediate() {
        let mut seen = Vec::new();
        let mut sink = |p: &Progress| seen.push(*p);
        let mut m = Meter::new(&mut sink, Duration::from_secs(3600));
        m.total = Some(1000);
        m.state(State::Connecting);
        m.advance(100); // within the interval: no report
        m.state(State::Downloading);
        m.advance(200); // nor here
        m.state(State::Verifying);
        m.emit(State::Done);
        drop(m);
        let states: Vec<_> = seen.iter().map(|p| p.state).collect();
        assert_eq!(
            states,
            [
                State::Connecting,
                State::Downloading,
                State::Verifying,
                State::Done
            ]
        );
        assert_eq!(seen[1].percent, Some(10.0));
        assert_eq!(seen[3].eta_secs, Some(0));
    }

    #[test]
    fn speed_and_eta_follow_the_samples() {
        let mut last = None;
        let mut sink = |p: &Progress| last = Some(*p);
        let mut m = Meter::new(&mut sink, Duration::ZERO);
        m.total = Some(10_000_000);
        m.advance(0);
        std::thread::sleep(Duration::from_millis(20));
        m.advance(1_000_000);
        drop(m);
        let p = last.unwrap();
        assert!(p.bytes_per_sec > 0.0);
        assert!(p.eta_secs.unwrap() > 0);
        assert_eq!(p.state, State::Downloading);
    }
}
