//! The small slice of HTTP the `app://` protocol needs: decoded requests and HTML/JSON/asset responses.

use std::collections::HashMap;

use tauri::http::{self, header, Method, StatusCode};

/// The Content-Security-Policy of every page: only the app's own files; IPC for Tauri events.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self' ipc: http://ipc.localhost; object-src 'none'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

/// A request to the `app://` protocol, decoded once.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// Path segments without the empty ones: `/chats/3/messages` -> `["chats", "3", "messages"]`.
    pub segments: Vec<String>,
    pub query: HashMap<String, String>,
    pub form: HashMap<String, String>,
    /// `HX-Request` was set: the page wants a fragment.
    pub htmx: bool,
}

impl Request {
    pub fn from_http(req: &http::Request<Vec<u8>>) -> Self {
        let uri = req.uri();
        let segments = uri
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect();
        let query = uri.query().map(decode_pairs).unwrap_or_default();
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let form = if is_form {
            decode_pairs(&String::from_utf8_lossy(req.body()))
        } else {
            HashMap::new()
        };
        Self {
            method: req.method().clone(),
            segments,
            query,
            form,
            htmx: req.headers().contains_key("hx-request"),
        }
    }

    pub fn path(&self) -> Vec<&str> {
        self.segments.iter().map(String::as_str).collect()
    }

    /// A form field, or a query parameter for GETs.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.form
            .get(name)
            .or_else(|| self.query.get(name))
            .map(String::as_str)
    }
}

/// A path segment: `%XX` escapes only (`+` is a plus sign in paths, unlike in forms).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn decode_pairs(s: &str) -> HashMap<String, String> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

/// A response under construction: status, body, and htmx triggers.
pub struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
    triggers: Vec<&'static str>,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn html(body: String) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "text/html; charset=utf-8",
            body: body.into_bytes(),
            triggers: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn json<T: serde::Serialize>(value: &T) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "application/json",
            body: serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()),
            triggers: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// No content: the request only had an effect (htmx swaps nothing on 204).
    pub fn empty() -> Self {
        Self {
            status: StatusCode::NO_CONTENT,
            content_type: "text/plain",
            body: Vec::new(),
            triggers: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Fires `event` on the page's body after the swap (`HX-Trigger`), e.g. `chats-changed`.
    pub fn trigger(mut self, event: &'static str) -> Self {
        self.triggers.push(event);
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn into_http(self) -> http::Response<Vec<u8>> {
        let mut b = http::Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, self.content_type)
            .header(header::CACHE_CONTROL, "no-store")
            .header("Content-Security-Policy", CSP)
            .header("X-Content-Type-Options", "nosniff");
        for (name, value) in self.headers {
            b = b.header(name, value);
        }
        if !self.triggers.is_empty() {
            b = b.header("HX-Trigger", self.triggers.join(", "));
        }
        b.body(self.body).unwrap_or_else(|_| {
            http::Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Vec::new())
                .expect("static response")
        })
    }
}

/// A file from `ui/dist` (embedded at build time).
pub fn asset(bytes: Vec<u8>, mime: &str) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .header(header::CONTENT_TYPE, mime)
        .header(header::CACHE_CONTROL, "max-age=3600")
        .header("X-Content-Type-Options", "nosniff")
        .body(bytes)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_path_query_and_form() {
        let req = http::Request::builder()
            .method("POST")
            .uri("app://localhost/chats/12/messages?after=3")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("hx-request", "true")
            .body(b"text=hello+%2Fworld%20%26+more".to_vec())
            .unwrap();
        let r = Request::from_http(&req);
        assert_eq!(r.path(), ["chats", "12", "messages"]);
        assert_eq!(r.param("after"), Some("3"));
        assert_eq!(r.param("text"), Some("hello /world & more"));
        let plus = Request::from_http(
            &http::Request::builder()
                .uri("app://localhost/models/a+b%20c.gguf")
                .body(Vec::new())
                .unwrap(),
        );
        assert_eq!(plus.path(), ["models", "a+b c.gguf"]);
        assert!(r.htmx);
    }

    #[test]
    fn replies_carry_csp_and_triggers() {
        let resp = Reply::html("<p>x</p>".into())
            .trigger("chats-changed")
            .trigger("model-changed")
            .into_http();
        assert_eq!(resp.headers()["hx-trigger"], "chats-changed, model-changed");
        assert!(resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'"));
    }
}
