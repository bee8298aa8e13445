//! The processes and folders the app's tests set up around it: a display (Xvfb), a child process
//! that ends with the test, a temporary folder.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A child process killed when the test ends, however it ends.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fails the test, naming the tool, when `tool` is not on the PATH.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{tool}` is not installed: run the tests with `make test`, which installs Xvfb, D-Bus, \
         WebKitWebDriver (Debian webkit2gtk-driver) and tauri-driver"
    );
}

/// Xvfb on a display of its own. Xvfb picks the display (`-displayfd`: the first free one, taken
/// under its lock file) and prints its number: tests that start displays at once (the tests of one
/// binary run in parallel) each get their own. Choosing the number here raced: two tests saw the
/// same free display, one Xvfb lost it, and both tests used the other's, which went away when its
/// test ended and took the first test's app with it (exit 1, display lost).
pub fn start_display() -> (Guard, String) {
    require("Xvfb");
    let mut child = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1280x860x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Xvfb");
    let stdout = child.stdout.take().expect("Xvfb's stdout");
    let guard = Guard(child);
    let mut number = String::new();
    BufReader::new(stdout)
        .read_line(&mut number)
        .expect("read Xvfb's display number");
    let number = number.trim();
    assert!(
        !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()),
        "Xvfb did not start (it printed {number:?} for its display)"
    );
    (guard, format!(":{number}"))
}

/// A directory removed when the test ends.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
