//! Serving the Router over HTTP (`smollm3 serve`, and the desktop app's "Local server" setting):
//! binding where [`LocalServer`] allows, the guard every HTTP request passes, and shutting down.
//!
//! The guard, in order:
//! - **Host** (on a loopback address): only `localhost` or a loopback IP, so a web page whose DNS name
//!   is rebound to 127.0.0.1 cannot reach the server;
//! - **the key**, when set: `Authorization: Bearer KEY` (API clients) or HTTP Basic with the key as
//!   the password (a browser asks for it once); `/health` is open;
//! - **writes from the page** (anything but GET/HEAD outside `/v1`) must carry `HX-Request`, which
//!   htmx always sends and a cross-site form cannot (a custom header needs CORS, which the server
//!   never grants).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use chat::{LocalServer, ServerStatus};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::Server;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(#[from] chat::ChatError),
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("the server stopped: {0}")]
    Io(#[from] std::io::Error),
}

/// Resolves when the server is shutting down; event streams end then, so the shutdown never
/// waits on a browser tab. A request extension on the HTTP transport only.
#[derive(Clone)]
pub struct Closing(watch::Receiver<bool>);

impl Closing {
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|closing| *closing).await;
    }
}

/// Binds the address `config` names, after checking it may be served.
pub async fn bind(config: &LocalServer) -> Result<TcpListener, ServeError> {
    config.validate()?;
    let addr = SocketAddr::new(config.ip()?, config.port);
    TcpListener::bind(addr)
        .await
        .map_err(|error| ServeError::Bind { addr, error })
}

struct Guard {
    loopback: bool,
    key: Option<String>,
}

/// The server's routes behind the guard, with `closing` for its event streams.
fn guarded(server: &Server, config: &LocalServer, closing: Closing) -> Router {
    let guard = Arc::new(Guard {
        loopback: config.is_loopback(),
        key: config.key().map(str::to_owned),
    });
    server
        .router()
        .layer(Extension(closing))
        .layer(from_fn_with_state(guard, check))
}

/// Serves `server` on `listener` until `shutdown` resolves; open event streams end then.
pub async fn serve(
    server: Server,
    listener: TcpListener,
    config: &LocalServer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (tx, rx) = watch::channel(false);
    let app = guarded(&server, config, Closing(rx));
    // The client's address names it for fair turns on the worker.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tx.send_replace(true);
        })
        .await?;
    Ok(())
}

/// The HTTP listener the desktop app runs for its "Local server" setting.
pub(crate) struct Running {
    config: LocalServer,
    stop: oneshot::Sender<()>,
    done: JoinHandle<()>,
}

impl Server {
    /// Starts, stops or restarts the HTTP listener to match `config` (the "Local server"
    /// setting); `/status` shows the outcome, and a failure is also a toast.
    pub async fn apply_local_server(&self, config: LocalServer) {
        let mut running = self.listener().lock().await;
        if running.as_ref().map(|r| &r.config) == Some(&config) {
            return;
        }
        if let Some(r) = running.take() {
            let _ = r.stop.send(());
            let _ = r.done.await;
        }
        if !config.enabled {
            self.chat().set_server_status(ServerStatus::Off);
            return;
        }
        let url = config.url();
        let listener = match bind(&config).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%url, error = %e, "the local server did not start");
                self.toast(format!("The local server did not start: {e}"), true);
                self.chat().set_server_status(ServerStatus::Failed {
                    url,
                    error: e.to_string(),
                });
                return;
            }
        };
        tracing::info!(%url, "local server listening");
        self.chat().set_server_status(ServerStatus::Listening {
            url,
            key_required: config.key().is_some(),
        });
        let (stop, stopped) = oneshot::channel();
        let (server, cfg) = (self.clone(), config.clone());
        let done = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            if let Err(e) = serve(server.clone(), listener, &cfg, stopped).await {
                tracing::warn!(error = %e, "the local server stopped");
                server.chat().set_server_status(ServerStatus::Failed {
                    url: cfg.url(),
                    error: e.to_string(),
                });
            }
        });
        *running = Some(Running { config, stop, done });
    }
}

async fn check(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let api = path.starts_with("/v1/") || path == "/v1";
    if guard.loopback && !loopback_host(req.headers()) {
        return (
            StatusCode::FORBIDDEN,
            "This server answers only to localhost or a loopback address.",
        )
            .into_response();
    }
    if let Some(key) = &guard.key {
        if path != "/health" && !authorized(req.headers(), key) {
            return unauthorized(api);
        }
    }
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD);
    if writes && !api && !req.headers().contains_key("hx-request") {
        return (
            StatusCode::FORBIDDEN,
            "Changes come from the chat page only (HX-Request is missing).",
        )
            .into_response();
    }
    next.run(req).await
}

fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    // `name:port`, `[v6]:port` or a bare name.
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (scheme, value) = auth.trim().split_once(' ').unwrap_or((auth, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return same(value.trim().as_bytes(), key.as_bytes());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value.trim()) else {
            return false;
        };
        // `user:password`; any user name, the key as the password.
        let password = decoded
            .iter()
            .position(|&b| b == b':')
            .map(|i| &decoded[i + 1..])
            .unwrap_or(&[]);
        return same(password, key.as_bytes());
    }
    false
}

fn unauthorized(api: bool) -> Response {
    if api {
        return crate::api::ApiError::unauthorized().into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"NotSo-SmolLM3 Bot\", charset=\"UTF-8\"",
        )],
        "This server needs its API key: enter it as the password (any user name).",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for host in [
            "localhost:8080",
            "127.0.0.1:1",
            "[::1]:8080",
            "LOCALHOST",
            "127.0.0.2",
        ] {
            assert!(loopback_host(&headers(&[("host", host)])), "{host}");
        }
        for host in ["evil.example:8080", "192.168.1.2:8080", "[::2]:80"] {
            assert!(!loopback_host(&headers(&[("host", host)])), "{host}");
        }
        assert!(!loopback_host(&HeaderMap::new()));
    }

    #[test]
    fn the_key_is_accepted_as_a_bearer_token_or_a_basic_password() {
        let ok = |auth: &str| authorized(&headers(&[("authorization", auth)]), "s3cret");
        assert!(ok("Bearer s3cret"));
        assert!(ok("bearer  s3cret "));
        assert!(!ok("Bearer s3cre"));
        // base64("me:s3cret"), base64(":s3cret"), base64("me:wrong")
        assert!(ok("Basic bWU6czNjcmV0"));
        assert!(ok("Basic OnMzY3JldA=="));
        assert!(!ok("Basic bWU6d3Jvbmc="));
        assert!(!ok("Token s3cret"));
        assert!(!authorized(&HeaderMap::new(), "s3cret"));
    }
}
