//! A stand-in for the model hub on 127.0.0.1: serves one file at `/{repo}/resolve/{revision}/{file}`
//! (any repo, revision and file name), so the app's onboarding can download the test model offline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Hub {
    pub endpoint: String,
    pub requests: Arc<AtomicUsize>,
}

pub fn serve(file: PathBuf) -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test hub");
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let file = file.clone();
            let count = count.clone();
            std::thread::spawn(move || {
                let _ = answer(stream, &file, &count);
            });
        }
    });
    Hub { endpoint, requests }
}

fn answer(mut stream: TcpStream, file: &PathBuf, count: &AtomicUsize) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range_start = 0u64;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            range_start = v.trim().trim_end_matches('-').parse().unwrap_or(0);
        }
    }
    count.fetch_add(1, Ordering::SeqCst);
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    if !path.contains("/resolve/") {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
    }
    let mut f = std::fs::File::open(file)?;
    let len = f.metadata()?.len();
    let head = if range_start > 0 {
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(range_start))?;
        format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {range_start}-{}/{len}\r\nconnection: close\r\n\r\n",
            len - range_start,
            len - 1
        )
    } else {
        format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\naccept-ranges: bytes\r\nconnection: close\r\n\r\n")
    };
    stream.write_all(head.as_bytes())?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}
