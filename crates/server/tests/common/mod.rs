//! A server over a fresh chat core (temporary folders, no model unless one is loaded), requests to
//! its Router as the desktop transport makes them (tower `oneshot`), and a reader of SSE bodies.
#![allow(dead_code)] // each test binary uses part of this

use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use chat::{AppPaths, ChatApp, LocalServer};
use futures_util::StreamExt;
use server::{Downloads, Hub, Server};
use tokio::net::TcpListener;
use tower::ServiceExt;

pub struct Fixture {
    pub server: Server,
    pub router: Router,
    _dir: tempfile::TempDir,
}

/// Serves `f` over HTTP on a free loopback port (with `key`) until `shutdown` completes.
pub async fn serve_http(
    f: &Fixture,
    key: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = LocalServer {
        enabled: true,
        port,
        api_key: key.into(),
        ..LocalServer::default()
    };
    let server = f.server.clone();
    let task = tokio::spawn(async move {
        server::http::serve(server, listener, &config, shutdown)
            .await
            .unwrap();
    });
    (port, task)
}

/// The SmolLM2 test model (`make model` fetches it).
pub fn test_model() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run `make model`",
        path.display()
    );
    path
}

pub fn fixture() -> Fixture {
    fixture_with(None)
}

/// [`fixture`] with `settings` saved before the chat core opens (and loads what they name).
pub fn fixture_with(settings: Option<&chat::Settings>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let paths = AppPaths {
        data_dir: dir.path().join("data"),
        config_dir: dir.path().join("config"),
        models_dir: dir.path().join("models"),
    };
    if let Some(s) = settings {
        s.save(&paths.settings_file()).unwrap();
    }
    let hub = Hub::new();
    let chat = ChatApp::open(paths, hub.sink()).unwrap();
    let server = Server::new(chat, hub, Downloads::default());
    Fixture {
        router: server.router(),
        server,
        _dir: dir,
    }
}

impl Fixture {
    pub async fn send(&self, req: Request<Body>) -> Response<Body> {
        self.router.clone().oneshot(req).await.unwrap()
    }

    /// An htmx request (`HX-Request`), with a form body for POSTs.
    pub async fn htmx(&self, method: &str, uri: &str, form: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("hx-request", "true")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(form.to_owned()))
            .unwrap();
        let resp = self.send(req).await;
        let status = resp.status();
        (status, unescape(&text(resp).await))
    }

    pub async fn get(&self, uri: &str) -> Response<Body> {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    /// A new chat's id.
    pub async fn new_chat(&self) -> i64 {
        let (status, html) = self.htmx("POST", "/chats", "").await;
        assert_eq!(status, StatusCode::OK, "{html}");
        attr_after(&html, "id=\"chat-title-")
            .parse()
            .unwrap_or_else(|_| panic!("no chat id in {html}"))
    }
}

/// The page's text with minijinja's HTML escapes undone, to look for what the user reads.
pub fn unescape(html: &str) -> String {
    html.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

pub async fn text(resp: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The text after `marker` up to the next quote: `attr_after(html, "sse-last-id=\"")`.
pub fn attr_after(html: &str, marker: &str) -> String {
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in {html}"))
        + marker.len();
    html[start..].chars().take_while(|c| *c != '"').collect()
}

/// One Server-Sent Event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sse {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl Sse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// Reads an event-stream body event by event.
pub struct SseReader {
    body: axum::body::BodyDataStream,
    buf: String,
}

impl SseReader {
    pub fn new(resp: Response<Body>) -> Self {
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        SseReader {
            body: resp.into_body().into_data_stream(),
            buf: String::new(),
        }
    }

    /// The next event (comments skipped); `None` when the stream ends. Fails after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Sse::default();
                let mut any = false;
                for line in block.lines() {
                    let (k, v) = line.split_once(':').unwrap_or((line, ""));
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    match k {
                        "event" => ev.event = v.to_owned(),
                        "id" => ev.id = Some(v.to_owned()),
                        "data" => {
                            if any {
                                ev.data.push('\n');
                            }
                            ev.data.push_str(v);
                            any = true;
                        }
                        _ => {}
                    }
                }
                if any {
                    return Some(ev);
                }
                continue;
            }
            let chunk: Option<Result<Bytes, _>> = tokio::time::timeout(timeout, self.body.next())
                .await
                .expect("the next event in time");
            match chunk {
                Some(Ok(bytes)) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                Some(Err(e)) => panic!("stream error: {e}"),
                None => return None,
            }
        }
    }
}
