//! MCP servers (the Model Context Protocol) over stdio, through the official Rust SDK (`rmcp`).
//!
//! Each configured server ([`McpServerConfig`]) is a program the app starts on demand: the
//! first answer that may call tools, or the settings page, starts it; its tools are then offered
//! to the model beside the built-ins, named `server__tool` ([`exposed_name`]) so that two
//! servers (or a server and a built-in) never offer the same name. A server that cannot start,
//! or that stops, is marked failed with its reason (its own last words on stderr where it said
//! any), and its tools are not offered. It is started again on its next use once a short wait
//! has passed ([`FIRST_RETRY_AFTER`], doubling with each failure in a row up to
//! [`MAX_RETRY_AFTER`], so a server that always fails does not slow every answer), or at once
//! when the user starts it ("Retry") or changes its settings.
//!
//! `rmcp` is async: the clients live on a small runtime owned by [`McpServers`], and the
//! blocking methods here wait on it. They must not be called from inside another async
//! runtime's worker (the server crate calls them from `spawn_blocking`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::ToolError;

/// Separates a server's name from its tool's in the name the model sees.
pub const NAME_SEPARATOR: &str = "__";
/// The most of a server's stderr kept to say why it stopped.
const STDERR_TAIL_BYTES: usize = 2048;
/// Longest server name: it prefixes every tool name the model reads.
const MAX_NAME_LEN: usize = 32;
/// How long a server that failed (to start, or while running) waits before its next use may
/// start it again; each further failure in a row doubles the wait.
pub const FIRST_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The longest wait between two tries.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// One MCP server as the user configures it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct McpServerConfig {
    /// Letters, digits, `-` and `_`: the prefix of its tools' names.
    pub name: String,
    /// The program to run (a path, or a name looked up on `PATH`).
    pub command: String,
    pub args: Vec<String>,
    /// Environment variables set for it (on top of the app's own).
    pub env: BTreeMap<String, String>,
    pub enabled: bool,
    /// Its tools (their names as the server gives them) the user lets run without asking.
    pub trusted: Vec<String>,
}

impl McpServerConfig {
    /// Checks the fields of the server at `index` of `tools.mcp_servers`; names are checked for
    /// uniqueness by [`super::ToolSettings::validate`].
    pub(crate) fn validate(&self, index: usize) -> crate::Result<()> {
        let invalid = |field, reason: String| crate::ChatError::InvalidMcpServer {
            index,
            field,
            reason,
        };
        let name = &self.name;
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(invalid(
                "name",
                format!("a server's name must have 1 to {MAX_NAME_LEN} characters, got {name:?}"),
            ));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || name.contains(NAME_SEPARATOR)
        {
            return Err(invalid(
                "name",
                format!(
                    "server {name:?}: use only letters, digits, '-' and single '_' in its name"
                ),
            ));
        }
        if self.command.trim().is_empty() {
            return Err(invalid(
                "command",
                format!("server {name:?} has no command to run"),
            ));
        }
        if let Some(key) = self
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(invalid(
                "env",
                format!("server {name:?}: {key:?} is not a valid environment variable name"),
            ));
        }
        Ok(())
    }

    /// Whether `other` runs the same program the same way (the trusted tools aside): a
    /// running server is restarted only when it does not.
    fn same_process(&self, other: &McpServerConfig) -> bool {
        self.command == other.command && self.args == other.args && self.env == other.env
    }
}

/// The server and tool of a name [`exposed_name`] made (server names have no `__`).
pub fn split_exposed(name: &str) -> Option<(&str, &str)> {
    name.split_once(NAME_SEPARATOR)
}

/// The name the model sees for `tool` of `server`.
pub fn exposed_name(server: &str, tool: &str) -> String {
    format!("{server}{NAME_SEPARATOR}{tool}")
}

/// A tool a running server offers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct McpTool {
    pub server: String,
    /// Its name as the server gives it.
    pub name: String,
    pub description: String,
    /// JSON Schema of its arguments.
    pub input_schema: Value,
}

impl McpTool {
    /// Its description for the template's `xml_tools`.
    pub fn spec(&self) -> Value {
        serde_json::json!({
            "name": exposed_name(&self.server, &self.name),
            "description": self.description,
            "parameters": self.input_schema,
        })
    }
}

/// Where a server stands, for the settings page.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum McpState {
    /// Switched off in the settings.
    Disabled,
    /// Not started yet (it starts on first use).
    Stopped,
    Running {
        tools: Vec<McpTool>,
    },
    /// It could not start, or it stopped: why, and in how many seconds its next use may start
    /// it again (0: on its next use).
    Failed {
        why: String,
        retry_in_s: u64,
    },
}

/// One configured server and where it stands.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct McpServerStatus {
    pub name: String,
    pub state: McpState,
}

/// A started server: the client, its tools, and what it said on stderr.
struct Connection {
    client: RunningService<RoleClient, ()>,
    tools: Vec<McpTool>,
    stderr: Arc<Mutex<StderrTail>>,
}

#[derive(Default)]
struct StderrTail {
    text: String,
    /// When the server closed its stderr: it has exited (or is about to).
    closed: Option<Instant>,
}

enum Slot {
    Stopped,
    Running(Arc<Connection>),
    Failed {
        why: String,
        /// From then on its next use starts it again.
        retry_at: Instant,
    },
}

struct Server {
    config: McpServerConfig,
    slot: Slot,
    /// Failures in a row (to start, or while running) since it last started well.
    failures: u32,
}

/// The configured MCP servers and their clients. Cheap to share (`Arc`); thread-safe.
pub struct McpServers {
    /// `None` once shut down.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    servers: Mutex<Vec<Server>>,
    /// Held while a server starts, so two first uses start it once.
    starting: Mutex<()>,
    /// The wait after a first failure ([`FIRST_RETRY_AFTER`]; tests shorten it).
    first_retry_after: Duration,
}

impl McpServers {
    pub fn new(configs: &[McpServerConfig]) -> crate::Result<McpServers> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mcp")
            .enable_all()
            .build()
            .map_err(|e| crate::ChatError::Invalid(format!("cannot start the MCP runtime: {e}")))?;
        let servers = McpServers {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            servers: Mutex::new(Vec::new()),
            starting: Mutex::new(()),
            first_retry_after: FIRST_RETRY_AFTER,
        };
        servers.configure(configs);
        Ok(servers)
    }

    /// The same servers, waiting `first` (instead of [`FIRST_RETRY_AFTER`]) after a first
    /// failure before a use starts a server again.
    pub fn with_first_retry_after(mut self, first: Duration) -> McpServers {
        self.first_retry_after = first;
        self
    }

    /// The wait before the next try after `failures` failures in a row.
    fn retry_after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        (self.first_retry_after * 2u32.pow(doublings))
            .min(MAX_RETRY_AFTER.max(self.first_retry_after))
    }

    /// Marks every server whose process has ended failed (once), timing its next try from when
    /// it ended.
    fn settle(&self, servers: &mut [Server]) {
        for server in servers.iter_mut() {
            let Slot::Running(c) = &server.slot else {
                continue;
            };
            if !c.exited() {
                continue;
            }
            let (why, ended) = {
                let tail = c.stderr.lock().unwrap();
                (format!("it stopped{}", tail.said()), tail.closed)
            };
            server.failures += 1;
            server.slot = Slot::Failed {
                why,
                retry_at: ended.unwrap_or_else(Instant::now) + self.retry_after(server.failures),
            };
        }
    }

    /// Takes new settings: a server removed, switched off or changed (command, arguments,
    /// environment) is stopped; a changed one starts again on its next use.
    pub fn configure(&self, configs: &[McpServerConfig]) {
        let mut servers = self.servers.lock().unwrap();
        let mut old: HashMap<String, Server> = servers
            .drain(..)
            .map(|s| (s.config.name.clone(), s))
            .collect();
        for config in configs {
            let (slot, failures) = match old.remove(&config.name) {
                Some(s) if config.enabled && s.config.enabled && s.config.same_process(config) => {
                    (s.slot, s.failures)
                }
                _ => (Slot::Stopped, 0),
            };
            servers.push(Server {
                config: config.clone(),
                slot,
                failures,
            });
        }
        // Dropping a connection ends its process (`kill_on_drop`).
    }

    /// Whether the user lets `tool` of `server` run without asking.
    pub fn is_trusted(&self, server: &str, tool: &str) -> bool {
        let servers = self.servers.lock().unwrap();
        servers
            .iter()
            .any(|s| s.config.name == server && s.config.trusted.iter().any(|t| t == tool))
    }

    /// Where each configured server stands, in the settings' order.
    pub fn statuses(&self) -> Vec<McpServerStatus> {
        let mut servers = self.servers.lock().unwrap();
        self.settle(&mut servers);
        servers.iter().map(status).collect()
    }

    /// Starts every enabled server not started yet, and every failed one whose wait is over
    /// (see [`FIRST_RETRY_AFTER`]); returns the tools of those running.
    pub fn tools(&self, timeout: Duration) -> Vec<McpTool> {
        let names: Vec<String> = {
            let mut servers = self.servers.lock().unwrap();
            self.settle(&mut servers);
            let now = Instant::now();
            servers
                .iter()
                .filter(|s| {
                    s.config.enabled
                        && match &s.slot {
                            Slot::Stopped => true,
                            Slot::Failed { retry_at, .. } => now >= *retry_at,
                            Slot::Running(_) => false,
                        }
                })
                .map(|s| s.config.name.clone())
                .collect()
        };
        for name in names {
            self.start(&name, timeout, false);
        }
        let servers = self.servers.lock().unwrap();
        servers
            .iter()
            .filter_map(|s| match &s.slot {
                Slot::Running(c) if !c.exited() => Some(c.tools.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Starts `name` now (again, when it runs, failed or stopped; a failed one's wait is
    /// skipped: the user asked); returns where it stands then.
    pub fn restart(&self, name: &str, timeout: Duration) -> crate::Result<McpServerStatus> {
        self.start(name, timeout, true);
        let servers = self.servers.lock().unwrap();
        servers
            .iter()
            .find(|s| s.config.name == name)
            .map(status)
            .ok_or_else(|| {
                crate::ChatError::Invalid(format!("there is no MCP server named {name:?}"))
            })
    }

    /// Starts `name` if it is stopped, or failed and its wait is over; `again`: also when it
    /// runs or waits (the user asked).
    fn start(&self, name: &str, timeout: Duration, again: bool) {
        let _one_at_a_time = self.starting.lock().unwrap();
        let config = {
            let mut servers = self.servers.lock().unwrap();
            self.settle(&mut servers);
            let Some(server) = servers.iter_mut().find(|s| s.config.name == name) else {
                return;
            };
            if !server.config.enabled {
                return;
            }
            match &server.slot {
                Slot::Stopped => {}
                Slot::Running(_) if !again => return,
                Slot::Failed { retry_at, .. } if !again && Instant::now() < *retry_at => return,
                _ => server.slot = Slot::Stopped,
            }
            server.config.clone()
        };
        let started = self.connect(&config, timeout);
        let mut servers = self.servers.lock().unwrap();
        // The settings may have changed meanwhile: keep the result only for the same server.
        let Some(server) = servers
            .iter_mut()
            .find(|s| s.config.name == name && s.config.same_process(&config))
        else {
            return;
        };
        server.slot = match started {
            Ok(connection) => {
                server.failures = 0;
                Slot::Running(Arc::new(connection))
            }
            Err(why) => {
                server.failures += 1;
                let wait = self.retry_after(server.failures);
                tracing::warn!(
                    server = name,
                    retry_in_s = wait.as_secs_f64(),
                    "MCP server failed to start: {why}"
                );
                Slot::Failed {
                    why,
                    retry_at: Instant::now() + wait,
                }
            }
        };
    }

    fn connect(&self, config: &McpServerConfig, timeout: Duration) -> Result<Connection, String> {
        let mut command = tokio::process::Command::new(&config.command);
        command
            .args(&config.args)
            .envs(&config.env)
            .kill_on_drop(true);
        let stderr = Arc::new(Mutex::new(StderrTail::default()));
        let tail = stderr.clone();
        let name = config.name.clone();
        let program = config.command.clone();
        let handshake = async move {
            let (transport, pipe) = TokioChildProcess::builder(command)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot run {program:?}: {e}"))?;
            if let Some(mut pipe) = pipe {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match pipe.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => tail.lock().unwrap().push(&buf[..n]),
                        }
                    }
                    tail.lock().unwrap().closed = Some(Instant::now());
                });
            }
            let client = ().serve(transport).await.map_err(|e| e.to_string())?;
            let listed = client.list_all_tools().await.map_err(|e| e.to_string())?;
            let tools = listed
                .into_iter()
                .map(|t| McpTool {
                    server: name.clone(),
                    name: t.name.to_string(),
                    description: t.description.as_deref().unwrap_or_default().to_owned(),
                    input_schema: Value::Object((*t.input_schema).clone()),
                })
                .collect();
            Ok::<_, String>((client, tools))
        };
        let outcome = self.block_on(async move { tokio::time::timeout(timeout, handshake).await });
        let why = match outcome {
            Some(Ok(Ok((client, tools)))) => {
                return Ok(Connection {
                    client,
                    tools,
                    stderr,
                })
            }
            Some(Ok(Err(why))) => why,
            Some(Err(_)) => format!("it did not answer within {} s", timeout.as_secs_f64()),
            None => "the app is shutting down".into(),
        };
        // Its stderr usually says more than the protocol error; give it a moment to arrive.
        std::thread::sleep(Duration::from_millis(100));
        let said = stderr.lock().unwrap().said();
        Err(format!("{why}{said}"))
    }

    /// Calls `tool` of `server` with `arguments`, waiting at most `timeout`.
    pub fn call(
        &self,
        server: &str,
        tool: &str,
        arguments: serde_json::Map<String, Value>,
        timeout: Duration,
    ) -> Result<String, ToolError> {
        self.call_until_stopped(server, tool, arguments, timeout, &Arc::default())
    }

    /// [`McpServers::call`] that gives up as soon as `stopped` is set (looked at every
    /// [`super::STOP_POLL`]): the request is dropped, and rmcp then tells the server with
    /// `notifications/cancelled`.
    pub fn call_until_stopped(
        &self,
        server: &str,
        tool: &str,
        arguments: serde_json::Map<String, Value>,
        timeout: Duration,
        stopped: &Arc<AtomicBool>,
    ) -> Result<String, ToolError> {
        let connection = {
            let mut servers = self.servers.lock().unwrap();
            self.settle(&mut servers);
            let found = servers.iter().find(|s| s.config.name == server);
            match found.map(|s| &s.slot) {
                Some(Slot::Running(c)) => c.clone(),
                Some(Slot::Failed { why, retry_at }) => {
                    return Err(ToolError::Failed(format!(
                        "the MCP server {server:?} is not running: {why}; {}",
                        next_try(*retry_at)
                    )))
                }
                Some(Slot::Stopped) => {
                    return Err(ToolError::Failed(format!(
                        "the MCP server {server:?} is not running"
                    )))
                }
                None => return Err(ToolError::Unknown(exposed_name(server, tool))),
            }
        };
        if !connection.tools.iter().any(|t| t.name == tool) {
            return Err(ToolError::Unknown(exposed_name(server, tool)));
        }
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        let client = connection.clone();
        let stopped = stopped.clone();
        let outcome = self.block_on(async move {
            let stop = async move {
                while !stopped.load(Ordering::SeqCst) {
                    tokio::time::sleep(super::STOP_POLL).await;
                }
            };
            tokio::time::timeout(timeout, async {
                tokio::select! {
                    result = client.client.call_tool(params) => Some(result),
                    () = stop => None,
                }
            })
            .await
        });
        match outcome {
            Some(Ok(None)) => Err(ToolError::Failed(super::STOPPED.into())),
            Some(Ok(Some(Ok(result)))) => result_text(result),
            Some(Ok(Some(Err(ServiceError::McpError(e))))) => {
                Err(ToolError::Failed(e.message.to_string()))
            }
            Some(Ok(Some(Err(e)))) => {
                // The transport is gone (or broken): the server stopped.
                std::thread::sleep(Duration::from_millis(100));
                let why = format!(
                    "it stopped ({e}){}",
                    connection.stderr.lock().unwrap().said()
                );
                let retry_at = self.mark_failed(server, &connection, why.clone());
                Err(ToolError::Failed(format!(
                    "the MCP server {server:?} stopped: {why}; {}",
                    next_try(retry_at)
                )))
            }
            Some(Err(_)) => Err(ToolError::Failed(format!(
                "timed out after {} s",
                timeout.as_secs_f64()
            ))),
            None => Err(ToolError::Failed("the app is shutting down".into())),
        }
    }

    /// Marks `server` failed, if `connection` is still the one it runs; returns when its next
    /// use may start it again.
    fn mark_failed(&self, server: &str, connection: &Arc<Connection>, why: String) -> Instant {
        let mut servers = self.servers.lock().unwrap();
        let Some(s) = servers.iter_mut().find(|s| s.config.name == server) else {
            return Instant::now();
        };
        if matches!(&s.slot, Slot::Running(c) if Arc::ptr_eq(c, connection)) {
            s.failures += 1;
            s.slot = Slot::Failed {
                why,
                retry_at: Instant::now() + self.retry_after(s.failures),
            };
        }
        match &s.slot {
            Slot::Failed { retry_at, .. } => *retry_at,
            _ => Instant::now(),
        }
    }

    /// Runs `future` on the MCP runtime and waits for it; `None` once shut down.
    fn block_on<F>(&self, future: F) -> Option<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if self.runtime.lock().unwrap().is_none() {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().ok()
    }

    /// Stops every server and the runtime. Does not block (safe inside another runtime).
    pub fn shutdown(&self) {
        self.servers.lock().unwrap().clear();
        if let Some(runtime) = self.runtime.lock().unwrap().take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for McpServers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Connection {
    fn exited(&self) -> bool {
        self.stderr.lock().unwrap().closed.is_some() || self.client.is_closed()
    }
}

impl StderrTail {
    fn push(&mut self, bytes: &[u8]) {
        self.text.push_str(&String::from_utf8_lossy(bytes));
        if self.text.len() > STDERR_TAIL_BYTES {
            let mut cut = self.text.len() - STDERR_TAIL_BYTES;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
        }
    }

    /// What the server said on stderr, as the end of a reason.
    fn said(&self) -> String {
        match self.text.trim() {
            "" => String::new(),
            text => format!("; it said: {text}"),
        }
    }
}

/// When a failed server is tried again, as the end of a sentence about it.
fn next_try(retry_at: Instant) -> String {
    match retry_at.saturating_duration_since(Instant::now()).as_secs() {
        0 => "it is started again on its next use".into(),
        s => format!("it is started again on its next use after {s} s"),
    }
}

/// Where `server` stands (a dead connection is already [`McpServers::settle`]d).
fn status(server: &Server) -> McpServerStatus {
    let state = match &server.slot {
        _ if !server.config.enabled => McpState::Disabled,
        Slot::Stopped => McpState::Stopped,
        Slot::Running(c) => McpState::Running {
            tools: c.tools.clone(),
        },
        Slot::Failed { why, retry_at } => McpState::Failed {
            why: why.clone(),
            // Rounded up from nanoseconds: "0" means the next use starts it (from
            // milliseconds, the last part of a millisecond read as 0 while the wait still ran).
            retry_in_s: retry_at
                .saturating_duration_since(Instant::now())
                .as_nanos()
                .div_ceil(1_000_000_000) as u64,
        },
    };
    McpServerStatus {
        name: server.config.name.clone(),
        state,
    }
}

/// The text the model reads: the result's text parts (other content is named, not shown); a
/// result flagged as an error is the tool's error.
fn result_text(result: CallToolResult) -> Result<String, ToolError> {
    let mut parts: Vec<String> = result
        .content
        .iter()
        .map(|c| match c {
            ContentBlock::Text(t) => t.text.clone(),
            ContentBlock::Image(_) => "[an image, not shown]".into(),
            ContentBlock::Audio(_) => "[an audio clip, not shown]".into(),
            _ => "[content that cannot be shown as text]".into(),
        })
        .collect();
    if parts.is_empty() {
        if let Some(structured) = &result.structured_content {
            parts.push(structured.to_string());
        }
    }
    let text = parts.join("\n");
    match result.is_error {
        Some(true) => Err(ToolError::Failed(match text.is_empty() {
            true => "the tool failed without saying why".into(),
            false => text,
        })),
        _ => Ok(text),
    }
}
