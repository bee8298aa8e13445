//! A small hub look-alike on 127.0.0.1 for the downloader tests, plus shared helpers.
//!
//! Two listeners play the hub and its CDN: `GET /{owner}/{repo}/resolve/{rev}/{file}` on the hub answers
//! 302 to the CDN with `X-Linked-ETag` / `X-Linked-Size`, as huggingface.co does; `GET /blob/{file}` on
//! the CDN serves the bytes with `Range` / `If-Range` support. [`Faults`] make either misbehave.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use download::{Config, Progress};
use sha2::{Digest, Sha256};

/// Bytes written per `write` call; also the step at which throttling sleeps.
const CHUNK: usize = 16 * 1024;

/// What the `X-Linked-ETag` header says.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum LinkedEtag {
    #[default]
    Real,
    Wrong,
    Absent,
}

#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer every `resolve` with this status (404, 403, 401, 500, ...).
    pub resolve_status: Option<u16>,
    /// Answer the first N `resolve` requests with 500.
    pub fail_first: u32,
    /// Once: close the CDN connection when the file offset reaches this many bytes.
    pub drop_at: Option<u64>,
    /// Answer `Range` requests with the whole file (200), like a server without range support.
    pub ignore_range: bool,
    /// Sleep this long after each 16 KiB chunk.
    pub throttle: Option<Duration>,
    /// Sleep this long before sending the body (a stalled connection).
    pub stall: Option<Duration>,
    pub linked_etag: LinkedEtag,
    /// The CDN's answer also carries `X-Linked-ETag` (a later hop naming a hash of its own).
    pub cdn_linked_etag: Option<LinkedEtag>,
    /// `resolve` first answers 307 to `/moved{path}` on the hub itself (a renamed repository),
    /// which then answers as `resolve` does.
    pub moved_on_hub: bool,
    /// `resolve` answers 401 unless it gets `Authorization: Bearer <token>`.
    pub require_token: Option<String>,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
}

struct Shared {
    data: Vec<u8>,
    sha256: String,
    cdn: SocketAddr,
    faults: Mutex<Faults>,
    seen: Mutex<Vec<Seen>>,
    served: AtomicU64,
    stop: AtomicBool,
}

pub struct TestServer {
    shared: Arc<Shared>,
    hub: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(data: Vec<u8>) -> Self {
        let hub = TcpListener::bind("127.0.0.1:0").expect("bind hub");
        let cdn = TcpListener::bind("127.0.0.1:0").expect("bind cdn");
        let shared = Arc::new(Shared {
            sha256: sha256_hex(&data),
            data,
            cdn: cdn.local_addr().unwrap(),
            faults: Mutex::new(Faults::default()),
            seen: Mutex::new(Vec::new()),
            served: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let hub_addr = hub.local_addr().unwrap();
        let threads = vec![
            accept_loop(hub, shared.clone()),
            accept_loop(cdn, shared.clone()),
        ];
        Self {
            shared,
            hub: hub_addr,
            threads,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.hub)
    }

    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        self.shared.faults.lock().unwrap()
    }

    pub fn data(&self) -> &[u8] {
        &self.shared.data
    }

    pub fn len(&self) -> u64 {
        self.shared.data.len() as u64
    }

    pub fn sha256(&self) -> &str {
        &self.shared.sha256
    }

    /// Body bytes written to clients, over all requests.
    pub fn bytes_served(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn blob_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.starts_with("/blob/"))
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake both accept loops so their threads end.
        let _ = TcpStream::connect(self.hub);
        let _ = TcpStream::connect(self.shared.cdn);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let shared = shared.clone();
            std::thread::spawn(move || handle(conn, &shared));
        }
    })
}

struct Request {
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Some(Request { path, headers })
}

fn handle(mut conn: TcpStream, shared: &Shared) {
    let Some(req) = read_request(&conn) else {
        return;
    };
    let faults = shared.faults.lock().unwrap().clone();
    let mut seen = Seen {
        path: req.path.clone(),
        range: req.header("range"),
        if_range: req.header("if-range"),
        authorization: req.header("authorization"),
        status: 0,
    };
    if faults.moved_on_hub && !req.path.starts_with("/moved/") && req.path.contains("/resolve/") {
        seen.status = 307;
        shared.seen.lock().unwrap().push(seen);
        let _ = write!(
            conn,
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: /moved{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            req.path
        );
        return;
    }
    if req.path.contains("/resolve/") {
        let status = resolve_status(shared, &faults, &req);
        seen.status = status;
        shared.seen.lock().unwrap().push(seen);
        if status != 302 {
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        let file = req.path.rsplit('/').next().unwrap_or("");
        let mut head = format!(
            "HTTP/1.1 302 Found\r\nLocation: http://{}/blob/{file}\r\nContent-Length: 0\r\nConnection: close\r\n",
            shared.cdn
        );
        head += &linked_etag(shared, &faults.linked_etag);
        head += &format!("X-Linked-Size: {}\r\n\r\n", shared.data.len());
        let _ = conn.write_all(head.as_bytes());
    } else if req.path.starts_with("/blob/") {
        serve_blob(conn, shared, &faults, &req, seen);
    } else {
        seen.status = 404;
        shared.seen.lock().unwrap().push(seen);
        let _ = write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
}

/// The `X-Linked-ETag` header line (empty for `Absent`).
fn linked_etag(shared: &Shared, which: &LinkedEtag) -> String {
    match which {
        LinkedEtag::Real => format!("X-Linked-ETag: \"{}\"\r\n", shared.sha256),
        LinkedEtag::Wrong => format!("X-Linked-ETag: \"{}\"\r\n", "0".repeat(64)),
        LinkedEtag::Absent => String::new(),
    }
}

fn resolve_status(shared: &Shared, faults: &Faults, req: &Request) -> u16 {
    if let Some(s) = faults.resolve_status {
        return s;
    }
    if faults.fail_first > 0 {
        shared.faults.lock().unwrap().fail_first -= 1;
        return 500;
    }
    if let Some(token) = &faults.require_token {
        if req.header("authorization") != Some(format!("Bearer {token}")) {
            return 401;
        }
    }
    302
}

fn serve_blob(
    mut conn: TcpStream,
    shared: &Shared,
    faults: &Faults,
    req: &Request,
    mut seen: Seen,
) {
    let len = shared.data.len() as u64;
    let etag = format!("\"blob-{}\"", &shared.sha256[..16]);
    let range_ok = !faults.ignore_range && req.header("if-range").is_none_or(|v| v == etag);
    let start = req.header("range").filter(|_| range_ok).and_then(|r| {
        r.strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse::<u64>()
            .ok()
    });
    let head = match start {
        Some(s) if s >= len => {
            seen.status = 416;
            shared.seen.lock().unwrap().push(seen);
            let _ = write!(
                conn,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        Some(s) => {
            seen.status = 206;
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{len}\r\nContent-Length: {}\r\n",
                len - 1,
                len - s
            )
        }
        None => {
            seen.status = 200;
            format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n")
        }
    };
    shared.seen.lock().unwrap().push(seen);
    let linked = faults
        .cdn_linked_etag
        .as_ref()
        .map_or(String::new(), |l| linked_etag(shared, l));
    let head =
        format!("{head}{linked}ETag: {etag}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n");
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    if let Some(d) = faults.stall {
        std::thread::sleep(d);
    }
    let mut pos = start.unwrap_or(0);
    // The drop fault fires once, on the first response that crosses it.
    let drop_at = {
        let mut f = shared.faults.lock().unwrap();
        match f.drop_at {
            Some(at) if at > pos => f.drop_at.take(),
            _ => None,
        }
    };
    let end = drop_at.unwrap_or(len).min(len);
    while pos < end {
        let n = (end - pos).min(CHUNK as u64);
        let chunk = &shared.data[pos as usize..(pos + n) as usize];
        if conn.write_all(chunk).is_err() {
            return;
        }
        shared.served.fetch_add(n, Ordering::SeqCst);
        pos += n;
        if let Some(d) = faults.throttle {
            std::thread::sleep(d);
        }
    }
    if drop_at.is_some() {
        let _ = conn.shutdown(Shutdown::Both);
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `len` bytes that start like a GGUF file and then look random (so a misplaced range changes the hash).
pub fn gguf_like(len: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(len);
    data.extend_from_slice(b"GGUF\x03\x00\x00\x00");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    data
}

/// A downloader configuration for tests: no reserve, fast retries, a progress report per chunk.
pub fn test_config(models_dir: &Path, endpoint: &str) -> Config {
    Config {
        free_space_reserve: 0,
        max_retries: 3,
        retry_base_delay: Duration::from_millis(10),
        max_retry_delay: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        progress_interval: Duration::ZERO,
        ..Config::new(models_dir).with_endpoint(endpoint)
    }
}

/// Every progress report, for assertions after the download.
#[derive(Default)]
pub struct Recorder(pub Vec<Progress>);

impl Recorder {
    pub fn states(&self) -> Vec<download::State> {
        let mut out: Vec<download::State> = Vec::new();
        for p in &self.0 {
            if out.last() != Some(&p.state) {
                out.push(p.state);
            }
        }
        out
    }
}

/// Names of the files in `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
