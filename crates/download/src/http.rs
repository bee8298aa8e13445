//! One GET of a hub file, redirects followed by hand. The hub answers `resolve` with a redirect to a
//! CDN; the hub's answer carries `X-Linked-ETag` (the file's SHA-256) and `X-Linked-Size`, which the
//! CDN's answer does not. Only the endpoint's own origin is trusted with the token and believed about
//! the checksum: a later hop (a CDN, or whatever a redirect points at) could name any hash. A redirect
//! from `https` to `http` is refused, so no hop can move the download off an encrypted connection.

use std::io;

use ureq::http::header::{self, HeaderMap};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::source::parse_sha256;

const MAX_REDIRECTS: usize = 10;

/// A blocking HTTPS client: rustls with the webpki roots (certificates always verified) and the proxy
/// from `HTTPS_PROXY` / `ALL_PROXY` / `HTTP_PROXY`, minus the hosts in `NO_PROXY` (ureq reads these).
pub(crate) struct Client {
    agent: ureq::Agent,
    token: Option<String>,
}

/// What the caller already has, for a `Range` request.
pub(crate) struct Resume<'a> {
    pub offset: u64,
    /// ETag or Last-Modified of the earlier answer, sent as `If-Range`.
    pub validator: Option<&'a str>,
}

/// An answer with a body to read (200, 206 or 416).
pub(crate) struct Opened {
    pub status: u16,
    pub linked_sha256: Option<String>,
    pub linked_size: Option<u64>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub content_length: Option<u64>,
    /// `(first byte, full size)` from `Content-Range`.
    pub content_range: Option<(u64, Option<u64>)>,
    pub body: ureq::Body,
}

impl Client {
    pub(crate) fn new(config: &Config) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(config.connect_timeout))
            .timeout_per_read(Some(config.read_timeout))
            .user_agent(concat!("smollm3-download/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self {
            agent,
            token: config.token.clone(),
        }
    }

    /// GETs `url`, following redirects; errors for answers that carry no file.
    pub(crate) fn open(&self, url: &str, resume: Option<&Resume>) -> Result<Opened> {
        let start_origin = origin(url);
        let mut current = url.to_string();
        let mut linked_sha256 = None;
        let mut linked_size = None;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.agent.get(&current);
            if let Some(r) = resume {
                req = req.header(header::RANGE, format!("bytes={}-", r.offset));
                if let Some(v) = r.validator {
                    req = req.header(header::IF_RANGE, v);
                }
            }
            if let Some(token) = &self.token {
                if same_origin(&current, start_origin) {
                    req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
                }
            }
            tracing::debug!(url = %current, range = resume.map(|r| r.offset), "GET");
            let resp = req.call().map_err(|e| transport_error(&current, e))?;
            let status = resp.status().as_u16();
            let headers = resp.headers();
            // The checksum and size count only from the endpoint's origin (its redirects within
            // itself included, e.g. a renamed repository); the first such hop that names them wins.
            if same_origin(&current, start_origin) {
                if linked_sha256.is_none() {
                    linked_sha256 =
                        text(headers, "x-linked-etag").and_then(|v| parse_sha256(&v).ok());
                }
                if linked_size.is_none() {
                    linked_size =
                        text(headers, "x-linked-size").and_then(|v| v.trim().parse().ok());
                }
            }
            match status {
                200 | 206 | 416 => {
                    return Ok(Opened {
                        status,
                        linked_sha256,
                        linked_size,
                        etag: text(headers, "etag"),
                        last_modified: text(headers, "last-modified"),
                        content_length: text(headers, "content-length")
                            .and_then(|v| v.parse().ok()),
                        content_range: text(headers, "content-range")
                            .and_then(|v| content_range(&v)),
                        body: resp.into_body(),
                    });
                }
                301 | 302 | 303 | 307 | 308 => {
                    let location =
                        text(headers, "location").ok_or_else(|| Error::UnexpectedStatus {
                            status,
                            url: current.clone(),
                        })?;
                    current = next_hop(&current, &location)?;
                }
                401 => return Err(Error::Unauthorized { url: url.into() }),
                403 => return Err(Error::Forbidden { url: url.into() }),
                404 => return Err(Error::NotFound { url: url.into() }),
                408 | 429 | 500..=599 => {
                    return Err(Error::Server {
                        status,
                        url: url.into(),
                    })
                }
                _ => {
                    return Err(Error::UnexpectedStatus {
                        status,
                        url: url.into(),
                    })
                }
            }
        }
        Err(Error::TooManyRedirects { url: url.into() })
    }
}

/// Failures worth another attempt: the network or the server may recover.
pub(crate) fn is_transient(e: &Error) -> bool {
    matches!(
        e,
        Error::Server { .. }
            | Error::Timeout { .. }
            | Error::Network { .. }
            | Error::Offline { .. }
    )
}

/// A broken body read, in the words of [`Error`]. ureq hands its own errors (a read timeout, say)
/// through `Read` wrapped in an `io::Error`; converting back recovers them.
pub(crate) fn read_error(url: &str, e: io::Error) -> Error {
    transport_error(url, ureq::Error::from(e))
}

fn transport_error(url: &str, e: ureq::Error) -> Error {
    let host = host(url).to_string();
    match e {
        ureq::Error::HostNotFound => Error::Offline {
            host,
            reason: "the host name could not be resolved (no network or DNS failure)".into(),
        },
        ureq::Error::ConnectionFailed => Error::Offline {
            host,
            reason: "the connection failed".into(),
        },
        ureq::Error::ConnectProxyFailed(reason) => Error::Offline {
            host,
            reason: format!("the proxy refused the connection: {reason}"),
        },
        ureq::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => Error::Offline {
            host,
            reason: "connection refused".into(),
        },
        ureq::Error::Io(io) if io.kind() == io::ErrorKind::TimedOut => Error::Timeout { host },
        ureq::Error::Timeout(_) => Error::Timeout { host },
        ureq::Error::Tls(reason) => Error::Tls {
            host,
            reason: reason.to_string(),
        },
        ureq::Error::Rustls(e) => Error::Tls {
            host,
            reason: e.to_string(),
        },
        ureq::Error::Io(io) => Error::Network {
            host,
            reason: io.to_string(),
        },
        other => Error::Network {
            host,
            reason: other.to_string(),
        },
    }
}

fn text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_string)
}

/// `bytes 100-199/1000` -> `(100, Some(1000))`; `bytes */1000` (a 416) -> `None`.
fn content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// `scheme://host[:port]` of an absolute URL; the token only goes where this matches the endpoint's.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

pub(crate) fn host(url: &str) -> &str {
    let o = origin(url);
    o.split_once("://").map_or(o, |(_, h)| h)
}

/// Where a redirect from `current` to `location` leads; an `https` -> `http` downgrade is refused
/// (the bytes, and the checksum check's premise, would travel in the clear).
fn next_hop(current: &str, location: &str) -> Result<String> {
    let next = join(current, location);
    if is_scheme(current, "https") && !is_scheme(&next, "https") {
        return Err(Error::InsecureRedirect {
            from: current.to_string(),
            to: next,
        });
    }
    Ok(next)
}

fn is_scheme(url: &str, scheme: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(s, _)| s.eq_ignore_ascii_case(scheme))
}

/// An absolute URL (`scheme://…`), as opposed to a path or a scheme-relative `//host/…`.
fn has_scheme(url: &str) -> bool {
    url.split_once("://").is_some_and(|(s, _)| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// Scheme and host compare without regard to case, as URLs do.
fn same_origin(a: &str, b: &str) -> bool {
    origin(a).eq_ignore_ascii_case(origin(b))
}

/// Resolves a `Location` header against the URL that sent it.
fn join(base: &str, location: &str) -> String {
    if has_scheme(location) {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        let scheme = base.split_once("://").map_or("https", |(s, _)| s);
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        let path_end = base.find(['?', '#']).unwrap_or(base.len());
        let dir_end = base[..path_end].rfind('/').map_or(path_end, |i| i + 1);
        format!("{}{location}", &base[..dir_end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert_eq!(
            origin("https://huggingface.co/a/b?x"),
            "https://huggingface.co"
        );
        assert_eq!(origin("http://127.0.0.1:8080/x"), "http://127.0.0.1:8080");
        assert_ne!(
            origin("http://127.0.0.1:8080/x"),
            origin("http://127.0.0.1:8081/x")
        );
        assert_eq!(host("https://cdn.example:443/x"), "cdn.example:443");
    }

    #[test]
    fn locations_resolve_against_the_base() {
        let base = "https://hub.example/org/repo/resolve/main/f.gguf";
        assert_eq!(join(base, "https://cdn.example/x"), "https://cdn.example/x");
        assert_eq!(join(base, "//cdn.example/x"), "https://cdn.example/x");
        assert_eq!(join(base, "/api/x?y=1"), "https://hub.example/api/x?y=1");
        assert_eq!(
            join(base, "g.gguf"),
            "https://hub.example/org/repo/resolve/main/g.gguf"
        );
    }

    #[test]
    fn an_https_to_http_redirect_is_refused() {
        let from = "https://hub.example/org/repo/resolve/main/f.gguf";
        for location in [
            "http://cdn.example/x",
            "HTTP://cdn.example/x",
            "ftp://cdn.example/x",
        ] {
            let err = next_hop(from, location).unwrap_err();
            assert!(
                matches!(&err, Error::InsecureRedirect { from: f, .. } if f == from),
                "{location}: {err}"
            );
        }
        // Staying on https, relative locations and scheme-relative ones are followed.
        assert_eq!(
            next_hop(from, "https://cdn.example/x").unwrap(),
            "https://cdn.example/x"
        );
        assert_eq!(
            next_hop(from, "//cdn.example/x").unwrap(),
            "https://cdn.example/x"
        );
        assert_eq!(next_hop(from, "/x").unwrap(), "https://hub.example/x");
        // A local http mirror may redirect anywhere, https included.
        let mirror = "http://127.0.0.1:8080/o/r/resolve/main/f.gguf";
        assert_eq!(
            next_hop(mirror, "http://127.0.0.1:8081/x").unwrap(),
            "http://127.0.0.1:8081/x"
        );
        assert_eq!(
            next_hop(mirror, "https://cdn.example/x").unwrap(),
            "https://cdn.example/x"
        );
    }

    #[test]
    fn origins_compare_without_case() {
        assert!(same_origin(
            "https://Hub.Example/a",
            "HTTPS://hub.example/b"
        ));
        assert!(!same_origin(
            "https://hub.example/a",
            "http://hub.example/a"
        ));
        assert!(!same_origin(
            "https://hub.example/a",
            "https://hub.example.evil/a"
        ));
    }

    #[test]
    fn content_range_parses_start_and_total() {
        assert_eq!(content_range("bytes 100-199/1000"), Some((100, Some(1000))));
        assert_eq!(content_range("bytes 0-9/*"), Some((0, None)));
        assert_eq!(content_range("bytes */1000"), None);
    }

    #[test]
    fn transient_errors_are_the_recoverable_ones() {
        let url = "u".to_string();
        assert!(is_transient(&Error::Server {
            status: 503,
            url: url.clone()
        }));
        assert!(!is_transient(&Error::NotFound { url: url.clone() }));
        assert!(!is_transient(&Error::Forbidden { url }));
    }
}
