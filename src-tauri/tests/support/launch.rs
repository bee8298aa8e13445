//! Launching the real app binary under a test's display and session bus, and reading its log.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{require, Guard};

const APP: &str = env!("CARGO_BIN_EXE_notso-smollm3");

/// A private session bus: the address it listens on, and the daemon.
pub fn start_session_bus() -> (Guard, String) {
    require("dbus-daemon");
    let mut child = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start dbus-daemon");
    let mut address = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut address)
        .expect("read the bus address");
    assert!(!address.trim().is_empty(), "dbus-daemon printed no address");
    (Guard(child), address.trim().to_string())
}

/// Waits for `done`, or fails after `timeout` naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The app on `display` and `bus`, its folders under `root`, its log (stderr) in `root/log`.
pub fn launch(root: &Path, display: &str, bus: &str, extra: &[&str], log: &str) -> Command {
    let mut cmd = Command::new(APP);
    for (flag, dir) in [
        ("--data-dir", "data"),
        ("--config-dir", "config"),
        ("--models-dir", "models"),
    ] {
        cmd.arg(flag).arg(root.join(dir));
    }
    cmd.args(extra)
        .env("DISPLAY", display)
        .env("DBUS_SESSION_BUS_ADDRESS", bus)
        .env("NO_AT_BRIDGE", "1")
        .env("GDK_BACKEND", "x11")
        .env("WEBKIT_DISABLE_COMPOSITING_MODE", "1")
        .env("RUST_LOG", "info")
        .env_remove("SMOLLM3_MODEL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join(log)).unwrap());
    cmd
}

/// The log `name` under `root` so far.
pub fn log(root: &Path, name: &str) -> String {
    std::fs::read_to_string(root.join(name)).unwrap_or_default()
}
