//! The processes and folders the app's tests set up around it: a display (Xvfb), a child process
//! that ends with the test, a temporary folder.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Xvfb on a display of its own.
pub fn start_display() -> (Guard, String) {
    require("Xvfb");
    // A display is in use when its socket answers: a killed Xvfb leaves its socket and lock file
    // behind, and a new Xvfb takes such a display over (it checks the lock's process is gone).
    let live =
        |n: u32| std::os::unix::net::UnixStream::connect(format!("/tmp/.X11-unix/X{n}")).is_ok();
    for n in 90..120 {
        if live(n) {
            continue;
        }
        let display = format!(":{n}");
        let child = Command::new("Xvfb")
            .args([&display, "-screen", "0", "1280x860x24", "-nolisten", "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Xvfb");
        let guard = Guard(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if live(n) {
                return (guard, display);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("Xvfb did not start");
}

/// A directory removed when the test ends.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
