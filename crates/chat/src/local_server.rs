//! The local server: the chat UI and the OpenAI-compatible API served over HTTP, by the desktop app
//! (a setting, [`LocalServer`], off by default) or by `smollm3 serve`. What may be bound is decided
//! here, once: this computer only (loopback) without a key; any other address only with one.
//! [`ServerStatus`] is what `/status` shows.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::sampling::invalid;

pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_PORT: u16 = 8080;

/// Where and how to serve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalServer {
    /// Serve at all (the desktop app's setting; `smollm3 serve` always does).
    pub enabled: bool,
    /// An IP address, or `localhost`.
    pub host: String,
    pub port: u16,
    /// Required from clients when set (`Authorization: Bearer KEY`; a browser asks for it as a
    /// password). Empty: none, allowed only on loopback.
    pub api_key: String,
}

impl Default for LocalServer {
    fn default() -> Self {
        LocalServer {
            enabled: false,
            host: DEFAULT_HOST.into(),
            port: DEFAULT_PORT,
            api_key: String::new(),
        }
    }
}

impl LocalServer {
    /// The address to bind; `localhost` is 127.0.0.1.
    pub fn ip(&self) -> Result<IpAddr> {
        let host = self.host.trim();
        if host.eq_ignore_ascii_case("localhost") {
            return Ok(IpAddr::from([127, 0, 0, 1]));
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        bare.parse().map_err(|_| {
            invalid(
                "local_server.host",
                format!(
                    "“{host}” is not an IP address (e.g. 127.0.0.1, or 0.0.0.0 for every network)"
                ),
            )
        })
    }

    /// Whether only this computer can connect.
    pub fn is_loopback(&self) -> bool {
        self.ip().is_ok_and(|ip| ip.is_loopback())
    }

    pub fn key(&self) -> Option<&str> {
        Some(self.api_key.trim()).filter(|k| !k.is_empty())
    }

    /// Refuses what cannot or must not be served: a bad address or port, and any address other
    /// than loopback without a key.
    pub fn validate(&self) -> Result<()> {
        let ip = self.ip()?;
        if self.port == 0 {
            return Err(invalid("local_server.port", "must be between 1 and 65535"));
        }
        if !ip.is_loopback() && self.key().is_none() {
            return Err(invalid(
                "local_server.api_key",
                format!(
                    "serving on {ip} lets other computers connect, so it requires an API key \
                     (or use 127.0.0.1 for this computer only)"
                ),
            ));
        }
        Ok(())
    }

    /// `http://127.0.0.1:8080` (IPv6 in brackets).
    pub fn url(&self) -> String {
        match self.ip() {
            Ok(IpAddr::V6(ip)) => format!("http://[{ip}]:{}", self.port),
            Ok(ip) => format!("http://{ip}:{}", self.port),
            Err(_) => format!("http://{}:{}", self.host.trim(), self.port),
        }
    }
}

/// The local server as `/status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ServerStatus {
    #[default]
    Off,
    Listening {
        url: String,
        key_required: bool,
    },
    Failed {
        url: String,
        error: String,
    },
}

impl ServerStatus {
    /// One line for `/status`.
    pub fn describe(&self) -> String {
        match self {
            ServerStatus::Off => "off (Settings → Local server)".into(),
            ServerStatus::Listening { url, key_required } => format!(
                "{url} (chat in a browser; OpenAI-compatible API at {url}/v1{})",
                if *key_required {
                    "; API key required"
                } else {
                    ""
                }
            ),
            ServerStatus::Failed { url, error } => format!("could not serve {url}: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChatError;

    fn at(host: &str, key: &str) -> LocalServer {
        LocalServer {
            host: host.into(),
            api_key: key.into(),
            ..LocalServer::default()
        }
    }

    fn refused_field(s: LocalServer) -> &'static str {
        match s.validate() {
            Err(ChatError::InvalidSetting { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn loopback_needs_no_key_and_any_other_address_does() {
        for host in ["127.0.0.1", "localhost", "::1", "[::1]"] {
            assert!(at(host, "").validate().is_ok(), "{host}");
        }
        assert_eq!(refused_field(at("0.0.0.0", "")), "local_server.api_key");
        assert_eq!(
            refused_field(at("192.168.1.5", "  ")),
            "local_server.api_key"
        );
        assert!(at("0.0.0.0", "secret").validate().is_ok());
        assert_eq!(refused_field(at("my.host", "k")), "local_server.host");
        let no_port = LocalServer {
            port: 0,
            ..LocalServer::default()
        };
        assert_eq!(refused_field(no_port), "local_server.port");
    }

    #[test]
    fn the_url_names_the_address() {
        assert_eq!(at("localhost", "").url(), "http://127.0.0.1:8080");
        assert_eq!(at("::1", "").url(), "http://[::1]:8080");
        let s = ServerStatus::Listening {
            url: "http://127.0.0.1:8080".into(),
            key_required: true,
        };
        assert!(
            s.describe().contains("/v1; API key required"),
            "{}",
            s.describe()
        );
    }
}
