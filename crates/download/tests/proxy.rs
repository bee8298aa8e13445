//! The client honours the proxy environment (HTTPS_PROXY, NO_PROXY), which ureq reads when the
//! downloader is built. Its own test binary, because it changes the process environment.

mod common;

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::{gguf_like, test_config, TestServer};
use download::{Control, Downloader, Outcome, Source};

/// A minimal HTTP CONNECT proxy that records where it was asked to connect.
struct ConnectProxy {
    addr: std::net::SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let seen = targets.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || tunnel(conn, &seen));
            }
        });
        Self { addr, targets }
    }

    fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

fn tunnel(client: TcpStream, seen: &Mutex<Vec<String>>) -> Option<()> {
    let mut reader = BufReader::new(client.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let target = line
        .strip_prefix("CONNECT ")?
        .split_whitespace()
        .next()?
        .to_string();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        if h.trim_end().is_empty() {
            break;
        }
    }
    seen.lock().unwrap().push(target.clone());
    let upstream = TcpStream::connect(&target).ok()?;
    let mut c = client.try_clone().ok()?;
    c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .ok()?;
    let (mut up_r, mut up_w) = (upstream.try_clone().ok()?, upstream);
    let mut client_w = client;
    let t = std::thread::spawn(move || {
        let _ = io::copy(&mut reader, &mut up_w);
        let _ = up_w.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut up_r, &mut client_w);
    let _ = client_w.shutdown(Shutdown::Both);
    let _ = t.join();
    Some(())
}

fn installs(srv: &TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let out = Downloader::new(test_config(dir.path(), &srv.endpoint()))
        .download(
            &Source::new("org/Tiny-GGUF", "tiny.gguf"),
            &Control::new(),
            |_| {},
        )
        .unwrap();
    let Outcome::Installed(got) = out else {
        panic!("{out:?}")
    };
    assert_eq!(std::fs::read(got.path).unwrap(), srv.data());
}

#[test]
fn https_proxy_is_used_and_no_proxy_bypasses_it() {
    for var in [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        std::env::remove_var(var);
    }
    let srv = TestServer::start(gguf_like(256 * 1024));
    let proxy = ConnectProxy::start();
    std::env::set_var("HTTPS_PROXY", format!("http://{}", proxy.addr));

    installs(&srv);
    let hub = srv.endpoint().trim_start_matches("http://").to_string();
    let targets = proxy.targets();
    assert!(
        targets.contains(&hub),
        "the hub was not reached through the proxy: {targets:?}"
    );
    assert_eq!(
        targets.len(),
        2,
        "hub and CDN both go through the proxy: {targets:?}"
    );

    std::env::set_var("NO_PROXY", "127.0.0.1");
    installs(&srv);
    assert_eq!(
        proxy.targets().len(),
        2,
        "NO_PROXY hosts must bypass the proxy"
    );
}
