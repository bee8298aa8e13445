//! `smollm3 serve` keeps its data folder to itself: a second `serve` (or the desktop app) on the same
//! folder would end the first one's live answers as interrupted, so it stops at once instead, saying
//! which process has the folder and what to do, and the first goes on serving.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use support::{output_within, Lines, LIMIT};

fn test_model() -> PathBuf {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run `make model`",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smollm3"));
    cmd.arg("serve")
        .arg("--model")
        .arg(test_model())
        .args(["--port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--config-dir")
        .arg(dir.join("config"))
        .env_remove("SMOLLM3_API_KEY");
    cmd
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The status line of `GET /` (the chat page) on `port`.
fn page(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn a_second_serve_on_one_data_folder_exits_saying_who_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut first = serve(dir.path(), port)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read on, so the first never blocks on a full pipe.
    let lines = Lines::of(first.stderr.take().unwrap());
    let first = Killed(first);
    lines.wait_for("smollm3 serve: the chat at", LIMIT);

    // Were the lock not checked, the second would serve on: the limit fails the test then.
    let second = output_within(&mut serve(dir.path(), free_port()), LIMIT);
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{said}");
    let data = dir.path().join("data");
    assert!(
        said.contains(&format!(
            "the chat data in {} is in use by another NotSo-SmolLM3 process (pid {})",
            data.display(),
            first.0.id()
        )),
        "{said}"
    );
    assert!(said.contains("Settings → Local server"), "{said}");
    assert!(!said.contains("the chat at"), "it never listened: {said}");

    assert!(page(port).contains(" 200 "), "the first one still serves");
}
