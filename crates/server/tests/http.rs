//! The Router over real HTTP: the guard (Host, key, writes from the page), a browser's view of a
//! stream, shutdown with streams open, and the desktop app's "Local server" switch.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use chat::{LocalServer, ServerStatus};
use common::{attr_after, fixture, serve_http, Fixture};
use tokio::sync::oneshot;

/// Serves `f` on a free loopback port; dropping the sender shuts it down.
async fn serve(f: &Fixture, key: &str) -> (u16, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let (port, task) = serve_http(f, key, async {
        let _ = stopped.await;
    })
    .await;
    (port, stop, task)
}

/// One raw HTTP/1.1 exchange: the status code and the body.
fn raw(port: u16, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out)
}

fn request(method: &str, path: &str, headers: &[&str]) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r + "\r\n"
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guard_wants_a_loopback_host_the_key_and_writes_from_the_page() {
    let f = fixture();
    let (port, _stop, _task) = serve(&f, "s3cret").await;
    let host = format!("Host: 127.0.0.1:{port}");
    let bearer = "Authorization: Bearer s3cret";
    tokio::task::spawn_blocking(move || {
        let (status, _) = raw(port, &request("GET", "/", &["Host: evil.example", bearer]));
        assert_eq!(status, 403, "a rebound DNS name");
        let (status, body) = raw(port, &request("GET", "/", &[&host]));
        assert_eq!(status, 401);
        assert!(
            body.contains("WWW-Authenticate: Basic") || body.contains("www-authenticate: Basic"),
            "{body}"
        );
        let (status, body) = raw(port, &request("GET", "/v1/models", &[&host]));
        assert_eq!(status, 401);
        assert!(body.contains("\"code\":\"invalid_api_key\""), "{body}");
        let (status, _) = raw(port, &request("GET", "/", &[&host, bearer]));
        assert_eq!(status, 200);
        // A browser: any user name, the key as the password (base64 of "me:s3cret").
        let (status, _) = raw(
            port,
            &request("GET", "/", &[&host, "Authorization: Basic bWU6czNjcmV0"]),
        );
        assert_eq!(status, 200);
        let (status, _) = raw(port, &request("GET", "/health", &[&host]));
        assert_ne!(status, 401, "/health is open");
        let (status, _) = raw(port, &request("POST", "/chats", &[&host, bearer]));
        assert_eq!(
            status, 403,
            "a write without HX-Request (a cross-site form)"
        );
        let (status, _) = raw(
            port,
            &request("POST", "/chats", &[&host, bearer, "HX-Request: true"]),
        );
        assert_eq!(status, 200);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_streams_an_answer_over_sse_and_shutdown_ends_open_streams() {
    let f = fixture();
    let (port, stop, task) = serve(&f, "").await;
    let cid = f.new_chat().await;
    let (_, html) = f
        .htmx("POST", &format!("/chats/{cid}/messages"), "text=%2Fquote")
        .await;
    let after = attr_after(&html, "sse-last-id=\"");
    let lines = tokio::task::spawn_blocking(move || {
        let url = format!("http://127.0.0.1:{port}/chats/{cid}/stream?after={after}");
        let resp = ureq::get(&url).call().unwrap();
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut lines = Vec::new();
        for line in BufReader::new(resp.into_body().into_reader()).lines() {
            let line = line.unwrap();
            let done = line == "event: complete";
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    })
    .await
    .unwrap();
    assert!(lines.iter().any(|l| l == "event: token"), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("id: ")), "{lines:?}");
    // A stream left open (page-wide news) does not hold the shutdown.
    let reader = tokio::task::spawn_blocking(move || {
        let resp = ureq::get(&format!("http://127.0.0.1:{port}/events"))
            .call()
            .unwrap();
        let mut body = String::new();
        let _ = resp.into_body().into_reader().read_to_string(&mut body);
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stop);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the server stops with a stream open")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the open stream ends")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_server_setting_starts_moves_and_stops_the_listener() {
    let f = fixture();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let on = LocalServer {
        enabled: true,
        port,
        ..LocalServer::default()
    };
    f.server.apply_local_server(on.clone()).await;
    assert_eq!(
        f.server.chat().status().server,
        ServerStatus::Listening {
            url: format!("http://127.0.0.1:{port}"),
            key_required: false
        }
    );
    let get = move || {
        tokio::task::spawn_blocking(move || {
            raw(
                port,
                &request("GET", "/", &[&format!("Host: localhost:{port}")]),
            )
            .0
        })
    };
    assert_eq!(get().await.unwrap(), 200);
    f.server
        .apply_local_server(LocalServer {
            enabled: false,
            ..on.clone()
        })
        .await;
    assert_eq!(f.server.chat().status().server, ServerStatus::Off);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "closed");
    // Every network without a key is refused, and says why.
    f.server
        .apply_local_server(LocalServer {
            host: "0.0.0.0".into(),
            ..on
        })
        .await;
    match f.server.chat().status().server {
        ServerStatus::Failed { error, .. } => assert!(error.contains("API key"), "{error}"),
        other => panic!("{other:?}"),
    }
}
