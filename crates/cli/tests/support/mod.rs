//! Running `smollm3` from a test with a time limit: a regression that keeps it running where it
//! should stop (a `serve` that listens where it should refuse) fails the test, naming the command
//! and what it said, instead of hanging it.

// Each test file uses the part it needs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{ChildStderr, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a command that should end by itself, or a line it should print, may take.
pub const LIMIT: Duration = Duration::from_secs(60);

/// `cmd.output()`, except that a command still running after `limit` is killed and the test fails.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let said = stderr.join().unwrap();
            panic!(
                "{cmd:?} was still running after {limit:?} (killed); it said:\n{}",
                String::from_utf8_lossy(&said)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Everything `from` gives until it closes, read on a thread so the child never blocks on a
/// full pipe.
fn drain(mut from: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = from.read_to_end(&mut all);
        all
    })
}

/// A running child's stderr, line by line, read on a thread until it closes (so the child never
/// blocks on a full pipe, whether or not anyone is listening).
pub struct Lines(Receiver<String>);

impl Lines {
    pub fn of(stderr: ChildStderr) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Lines(rx)
    }

    /// The first line containing `text`; the test fails if none comes within `limit`, or the
    /// stream ends first, with the lines seen.
    pub fn wait_for(&self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line with {text:?} within {limit:?}; seen:\n{}",
                        seen.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the output ended without {text:?}; seen:\n{}",
                        seen.join("\n")
                    )
                }
            }
        }
    }
}
