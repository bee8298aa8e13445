//! [`Reply`]: the answer of a page or fragment route (HTML or JSON, htmx triggers, the headers every
//! page carries), and the embedded files of `ui/dist`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The Content-Security-Policy of every page: only the app's own files; IPC for Tauri events.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self' ipc: http://ipc.localhost; object-src 'none'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

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
            content_type: "application/json",
            body: serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()),
            ..Self::html(String::new())
        }
    }

    /// No content: the request only had an effect (htmx swaps nothing on 204).
    pub fn empty() -> Self {
        Self {
            status: StatusCode::NO_CONTENT,
            content_type: "text/plain",
            ..Self::html(String::new())
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

    /// The page loads `url` instead of swapping (`HX-Redirect`): what a browser does where the
    /// desktop app opens a window.
    pub fn redirect(url: impl Into<String>) -> Self {
        Self::empty()
            .status(StatusCode::OK)
            .header("HX-Redirect", url)
    }

    /// Errors are shown as toasts whatever the request's target was.
    pub fn retarget_toast(self) -> Self {
        self.header("HX-Retarget", "#toasts")
            .header("HX-Reswap", "beforeend")
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut resp = (self.status, self.body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.append(name, v);
            }
        }
        if !self.triggers.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&self.triggers.join(", ")) {
                h.insert("HX-Trigger", v);
            }
        }
        resp
    }
}

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}

fn mime(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "html" => "text/html; charset=utf-8",
        "json" => "application/json",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// A file from `ui/dist` (`/static/…`, `/vendor/…`), embedded at build time.
pub fn asset(path: &str) -> Option<Response> {
    let (_, bytes) = embedded::FILES.iter().find(|(p, _)| *p == path)?;
    let mut resp = bytes.to_vec().into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime(path)));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_csp_and_triggers() {
        let resp = Reply::html("<p>x</p>".into())
            .trigger("chats-changed")
            .trigger("model-changed")
            .into_response();
        assert_eq!(resp.headers()["hx-trigger"], "chats-changed, model-changed");
        assert!(resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'"));
    }

    #[test]
    fn the_ui_files_are_embedded_with_their_types() {
        for (path, kind) in [
            ("/vendor/htmx.min.js", "text/javascript; charset=utf-8"),
            ("/static/app.css", "text/css; charset=utf-8"),
            ("/static/app.js", "text/javascript; charset=utf-8"),
            // highlight.js: the core, a language module (loaded by `import()`, which needs a
            // JavaScript type), the alias map and a theme.
            (
                "/vendor/highlight/core.js",
                "text/javascript; charset=utf-8",
            ),
            (
                "/vendor/highlight/languages/rust.js",
                "text/javascript; charset=utf-8",
            ),
            ("/vendor/highlight/aliases.json", "application/json"),
            (
                "/vendor/highlight/github.min.css",
                "text/css; charset=utf-8",
            ),
        ] {
            let resp = asset(path).unwrap_or_else(|| panic!("{path} is not embedded"));
            assert_eq!(resp.headers()["content-type"], kind, "{path}");
        }
        assert!(asset("/static/nope.js").is_none());
    }
}
