//! The API key flags: `smollm3 serve` refuses to listen beyond this computer without
//! `--api-key`, and `smollm3 generate --endpoint URL --api-key K` sends the key (to a fake
//! OpenAI-compatible server on loopback that lets only that key in).

#[path = "../../chat/tests/fake_http/mod.rs"]
mod fake_http;
mod support;

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use serde_json::json;
use support::{output_within, LIMIT};

/// `smollm3 args`, run to its end: one that would run on (a `serve` that listens where it should
/// refuse) is killed after [`LIMIT`] and fails the test.
fn smollm3(args: &[&str]) -> Output {
    output_within(
        Command::new(env!("CARGO_BIN_EXE_smollm3"))
            .args(args)
            .env_remove("SMOLLM3_API_KEY")
            .env_remove("SMOLLM3_ENDPOINT_KEY"),
        LIMIT,
    )
}

#[test]
fn serve_on_every_network_without_a_key_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (data, config) = (dir.path().join("data"), dir.path().join("config"));
    let out = smollm3(&[
        "serve",
        "--model",
        "model.gguf",
        "--host",
        "0.0.0.0",
        "--data-dir",
        data.to_str().unwrap(),
        "--config-dir",
        config.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--api-key is required") && err.contains("0.0.0.0"),
        "{err}"
    );
    assert!(!data.exists(), "refused before opening anything");
}

/// A fake endpoint that answers only `Authorization: Bearer sesame` (401 otherwise) and records
/// the `Authorization` of every request.
fn fake_endpoint() -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut out = conn;
            let Some(request) = fake_http::read_request(&mut reader) else {
                continue;
            };
            log.lock().unwrap().push(request.auth.clone());
            let (status, kind, body) = match (request.auth.as_deref(), request.path.as_str()) {
                (Some("Bearer sesame"), "/v1/models") => (
                    200,
                    "application/json",
                    json!({"object": "list", "data": [{"id": "smol"}]}).to_string(),
                ),
                (Some("Bearer sesame"), _) => {
                    let chunk = json!({"choices": [{"index": 0, "delta": {"content": "Open"},
                        "finish_reason": "stop"}]});
                    (
                        200,
                        "text/event-stream",
                        format!("data: {chunk}\n\ndata: [DONE]\n\n"),
                    )
                }
                _ => (
                    401,
                    "application/json",
                    json!({"error": {"message": "Invalid API Key"}}).to_string(),
                ),
            };
            let _ = write!(
                out,
                "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

#[test]
fn generate_with_an_endpoint_sends_its_api_key() {
    let (url, seen) = fake_endpoint();
    let out = smollm3(&["generate", "--endpoint", &url, "--api-key", "sesame", "Hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Open");
    let auths = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        auths.len(),
        2,
        "the models check, then the answer: {auths:?}"
    );
    assert!(
        auths.iter().all(|a| a.as_deref() == Some("Bearer sesame")),
        "{auths:?}"
    );

    let out = smollm3(&["generate", "--endpoint", &url, "--api-key", "wrong", "Hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("refused the API key"),
        "{err}"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [Some("Bearer wrong".to_owned())],
        "the wrong key was sent"
    );
}
