//! Tool calling: the model asks for a tool in its answer (`<tool_call>`, see [`parse`]), the
//! worker runs it between two generation steps (see [`crate::worker`]) and feeds the result back
//! as a `tool` message through the model's template.
//!
//! What a tool is and how it runs is a [`ToolHost`]'s business: the app's host ([`host`])
//! offers the built-in tools ([`builtin`]) and those of the user's MCP servers ([`mcp`]). The loop's rules live here: each call gets a [`ToolRecord`] (the
//! card the user sees), and every outcome, failures included, becomes the text the model reads
//! next ([`tool_message`]).

pub mod approval;
pub mod builtin;
#[cfg(test)]
mod e2e_tests;
pub mod host;
pub mod mcp;
pub mod parse;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use parse::{MalformedCall, ParsedCall, ToolCall, ToolCallParser};

/// Offers tools to the model and runs them.
pub trait ToolHost: Send + Sync {
    /// The tools, as the template's `xml_tools` lists them: `{"name", "description",
    /// "parameters"}` with a JSON Schema for the parameters.
    fn specs(&self) -> Vec<Value>;
    /// Runs a call; `Err` is the tool's own error, said to the model and the user. A tool
    /// that can give up early does so once `stopped` is set (the user stopped the answer).
    fn run(&self, call: &ToolCall, stopped: &Arc<AtomicBool>) -> Result<String, ToolError>;
    /// Whether the user must allow a call of `name` first (see [`approval`]): tools that are
    /// not read-only. The built-ins are.
    fn needs_approval(&self, name: &str) -> bool {
        let _ = name;
        false
    }
}

/// Why a call produced no result.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ToolError {
    #[error("there is no tool named {0:?}")]
    Unknown(String),
    #[error("bad arguments: {0}")]
    Arguments(String),
    #[error("{0}")]
    Failed(String),
}

/// Where a call stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolStatus {
    Running,
    /// It returned a result.
    Done,
    /// Malformed, unknown, failed or timed out: `result` says why.
    Failed,
    /// Not run: the answer reached the step limit (or was stopped) first.
    Skipped,
    /// Handed back to the caller to run (see [`Tools::Offer`]).
    Requested,
    /// Waiting for the user to allow it (see [`approval`]).
    Pending,
    /// The user did not allow it: `result` says so.
    Declined,
}

impl ToolStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolStatus::Running => "running",
            ToolStatus::Done => "done",
            ToolStatus::Failed => "failed",
            ToolStatus::Skipped => "skipped",
            ToolStatus::Requested => "requested",
            ToolStatus::Pending => "pending",
            ToolStatus::Declined => "declined",
        }
    }
}

/// One tool call of an answer, as the user sees it (and as it is stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRecord {
    /// Its place among the answer's calls (0, 1, ...): a later record with the same index
    /// replaces the earlier one (`running`, then its outcome).
    pub index: usize,
    /// The tool's name; for a malformed call, what could be made of it (may be empty).
    pub name: String,
    /// The arguments as the model gave them (an object), or its raw text when malformed.
    pub arguments: Value,
    pub status: ToolStatus,
    /// The result, or a readable note saying why there is none.
    pub result: String,
    pub duration_ms: u64,
}

/// What a job does with tools.
#[derive(Clone, Debug)]
pub enum Tools {
    /// Offer the host's tools and run the calls (a desktop chat).
    Run(ToolUse),
    /// Offer these tools (`xml_tools` specs) and hand the calls back as
    /// [`ToolStatus::Requested`] records, unrun (an API request: the client runs them).
    Offer(Vec<Value>),
}

/// How the worker offers and runs tools for one answer.
#[derive(Clone)]
pub struct ToolUse {
    pub host: Arc<dyn ToolHost>,
    /// Generation steps that may end in tool calls; the step after the last one answers
    /// without running any more.
    pub max_steps: usize,
    /// How long one call may run before its result is "timed out".
    pub timeout: Duration,
    /// Where calls that need approval wait for the user; `None`: such a call is declined,
    /// as there is no one to ask.
    pub approval: Option<Approval>,
}

/// Where an answer's calls wait for the user's approval.
#[derive(Clone)]
pub struct Approval {
    pub approvals: Arc<approval::Approvals>,
    /// The answer the calls belong to.
    pub answer: crate::store::MessageId,
}

impl std::fmt::Debug for ToolUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolUse")
            .field("max_steps", &self.max_steps)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The user's tool settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ToolSettings {
    /// Whether the model is offered tools at all.
    pub enabled: bool,
    /// Generation steps of one answer that may end in tool calls (see [`ToolUse::max_steps`]).
    pub max_steps: usize,
    /// Seconds one call may run (and an MCP server may take to start).
    pub timeout_secs: u64,
    /// MCP servers whose tools are offered beside the built-ins.
    pub mcp_servers: Vec<mcp::McpServerConfig>,
}

impl Default for ToolSettings {
    fn default() -> Self {
        ToolSettings {
            enabled: true,
            max_steps: 5,
            timeout_secs: 30,
            mcp_servers: Vec::new(),
        }
    }
}

impl ToolSettings {
    /// How long one call may run, and an MCP server may take to start.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    pub fn validate(&self) -> crate::Result<()> {
        crate::sampling::check_range("tools.max_steps", Some(self.max_steps), 1, 50)?;
        crate::sampling::check_range("tools.timeout_secs", Some(self.timeout_secs), 1, 3600)?;
        let mut names = std::collections::HashSet::new();
        for (index, server) in self.mcp_servers.iter().enumerate() {
            server.validate(index)?;
            if !names.insert(server.name.as_str()) {
                return Err(crate::ChatError::InvalidMcpServer {
                    index,
                    field: "name",
                    reason: format!("two servers are named {:?}", server.name),
                });
            }
        }
        Ok(())
    }
}

/// How often a running call looks whether the answer was stopped.
pub const STOP_POLL: Duration = Duration::from_millis(50);
/// The outcome of a call the user stopped while it ran.
pub const STOPPED: &str = "stopped: the answer was stopped while the tool ran";

/// Longest result passed back to the model and stored; longer ones are cut (and say so).
pub const MAX_RESULT_BYTES: usize = 16 * 1024;

impl ToolUse {
    /// Asks the user before a call the host does not run freely (`show` gets the `pending`
    /// record the card shows meanwhile). `None`: run it; otherwise the record of a call that
    /// will not run: declined, or the answer was stopped while it waited.
    pub fn ask(
        &self,
        index: usize,
        call: &ParsedCall,
        cancelled: &AtomicBool,
        show: &mut dyn FnMut(ToolRecord),
    ) -> Option<ToolRecord> {
        let Ok(c) = call else { return None };
        if !self.host.needs_approval(&c.name) {
            return None;
        }
        let Some(approval) = &self.approval else {
            return Some(ToolRecord {
                status: ToolStatus::Declined,
                ..skipped(
                    index,
                    call,
                    "not run: it needs approval, and no one can give it here",
                )
            });
        };
        show(ToolRecord {
            status: ToolStatus::Pending,
            ..skipped(index, call, "")
        });
        let decision = approval
            .approvals
            .wait(approval.answer, index, &c.name, cancelled);
        match decision {
            Some(approval::Decision::Once | approval::Decision::Always) => None,
            Some(approval::Decision::Deny) => Some(ToolRecord {
                status: ToolStatus::Declined,
                ..skipped(index, call, approval::DECLINED)
            }),
            None => Some(skipped(index, call, "not run: the answer was stopped")),
        }
    }

    /// Runs a parsed call with the time limit, or until `stopped` is set; returns its record
    /// (never `Running`).
    pub fn run(&self, index: usize, call: &ParsedCall, stopped: &Arc<AtomicBool>) -> ToolRecord {
        let (name, arguments) = match call {
            Ok(c) => (c.name.clone(), Value::Object(c.arguments.clone())),
            Err(m) => (String::new(), Value::String(m.raw.clone())),
        };
        let start = Instant::now();
        let outcome = match call {
            Err(m) => Err(format!("malformed tool call: {}", m.why)),
            Ok(call) => self.run_with_timeout(call, stopped),
        };
        let (status, result) = match outcome {
            Ok(text) => (ToolStatus::Done, cap(text)),
            Err(why) => (ToolStatus::Failed, cap(why)),
        };
        ToolRecord {
            index,
            name,
            arguments,
            status,
            result,
            duration_ms: start.elapsed().as_millis() as u64,
        }
    }

    /// The call runs on its own thread so that a tool that hangs costs the answer only the
    /// timeout, or until the user stops the answer (looked at every [`STOP_POLL`]); such a
    /// thread is left to finish on its own (its result is dropped).
    fn run_with_timeout(
        &self,
        call: &ToolCall,
        stopped: &Arc<AtomicBool>,
    ) -> Result<String, String> {
        let (tx, rx) = mpsc::channel();
        let host = self.host.clone();
        let owned = call.clone();
        let flag = stopped.clone();
        std::thread::Builder::new()
            .name(format!("tool {}", call.name))
            .spawn(move || {
                let _ = tx.send(host.run(&owned, &flag));
            })
            .map_err(|e| format!("cannot start the tool: {e}"))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            if stopped.load(Ordering::SeqCst) {
                return Err(STOPPED.into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(STOP_POLL)) {
                Ok(result) => return result.map_err(|e| e.to_string()),
                Err(mpsc::RecvTimeoutError::Timeout) if left > STOP_POLL => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("timed out after {} s", self.timeout.as_secs_f64()))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err("the tool crashed".into()),
            }
        }
    }
}

/// A record for a call that will not run (`why` is said to the model and the user).
pub fn skipped(index: usize, call: &ParsedCall, why: &str) -> ToolRecord {
    let (name, arguments) = match call {
        Ok(c) => (c.name.clone(), Value::Object(c.arguments.clone())),
        Err(m) => (String::new(), Value::String(m.raw.clone())),
    };
    ToolRecord {
        index,
        name,
        arguments,
        status: ToolStatus::Skipped,
        result: why.into(),
        duration_ms: 0,
    }
}

/// A record for a call about to run.
pub fn running(index: usize, call: &ParsedCall) -> ToolRecord {
    ToolRecord {
        status: ToolStatus::Running,
        result: String::new(),
        ..skipped(index, call, "")
    }
}

/// The `tool` message the model reads after a call: a JSON object naming the tool with its
/// `result`, or with the `error` that kept it from one.
pub fn tool_message(record: &ToolRecord) -> String {
    let key = match record.status {
        ToolStatus::Done => "result",
        _ => "error",
    };
    let mut object = serde_json::Map::new();
    object.insert("name".into(), Value::String(record.name.clone()));
    object.insert(key.into(), Value::String(record.result.clone()));
    Value::Object(object).to_string()
}

fn cap(mut text: String) -> String {
    if text.len() <= MAX_RESULT_BYTES {
        return text;
    }
    let mut cut = MAX_RESULT_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let total = text.len();
    text.truncate(cut);
    text.push_str(&format!("\n[cut: {total} bytes in all]"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Slow;

    impl ToolHost for Slow {
        fn specs(&self) -> Vec<Value> {
            Vec::new()
        }
        fn run(&self, call: &ToolCall, _: &Arc<AtomicBool>) -> Result<String, ToolError> {
            match call.name.as_str() {
                "sleep" => {
                    std::thread::sleep(Duration::from_secs(5));
                    Ok("late".into())
                }
                "hang" => {
                    std::thread::sleep(Duration::from_secs(120));
                    Ok("late".into())
                }
                "panic" => panic!("boom"),
                "big" => Ok("é".repeat(MAX_RESULT_BYTES)),
                other => Err(ToolError::Unknown(other.into())),
            }
        }
    }

    fn tools() -> ToolUse {
        ToolUse {
            host: Arc::new(Slow),
            max_steps: 3,
            timeout: Duration::from_millis(100),
            approval: None,
        }
    }

    fn call(name: &str) -> ParsedCall {
        Ok(ToolCall {
            name: name.into(),
            arguments: serde_json::Map::new(),
        })
    }

    #[test]
    fn a_hanging_tool_times_out_and_a_crashing_one_says_so() {
        let start = Instant::now();
        let r = tools().run(0, &call("sleep"), &Arc::default());
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(r.status, ToolStatus::Failed);
        assert_eq!(r.result, "timed out after 0.1 s");
        let message: Value = serde_json::from_str(&tool_message(&r)).unwrap();
        assert_eq!(
            message,
            serde_json::json!({"name": "sleep", "error": "timed out after 0.1 s"})
        );
        // A crash is reported as soon as it happens, not at the timeout.
        let patient = ToolUse {
            timeout: Duration::from_secs(60),
            ..tools()
        };
        let r = patient.run(1, &call("panic"), &Arc::default());
        assert_eq!(
            (r.status, r.result.as_str()),
            (ToolStatus::Failed, "the tool crashed")
        );
    }

    #[test]
    fn stop_ends_a_running_call_long_before_its_timeout() {
        let patient = ToolUse {
            timeout: Duration::from_secs(60),
            ..tools()
        };
        let stopped = Arc::new(AtomicBool::new(false));
        let stopper = {
            let stopped = stopped.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                stopped.store(true, Ordering::SeqCst);
            })
        };
        let start = Instant::now();
        // `hang` sleeps far past the stop; the call ends with the stop, not with the tool.
        let r = patient.run(0, &call("hang"), &stopped);
        stopper.join().unwrap();
        assert_eq!((r.status, r.result.as_str()), (ToolStatus::Failed, STOPPED));
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn unknown_and_malformed_calls_become_errors_for_the_model() {
        let r = tools().run(0, &call("nope"), &Arc::default());
        assert_eq!(r.result, "there is no tool named \"nope\"");
        let bad = Err(MalformedCall {
            raw: "{oops".into(),
            why: "the call is not valid JSON".into(),
            written: "<tool_call>{oops</tool_call>".into(),
        });
        let r = tools().run(1, &bad, &Arc::default());
        assert_eq!(r.status, ToolStatus::Failed);
        assert_eq!(r.arguments, Value::String("{oops".into()));
        assert_eq!(r.result, "malformed tool call: the call is not valid JSON");
    }

    #[test]
    fn long_results_are_cut_on_a_char_boundary() {
        let r = tools().run(0, &call("big"), &Arc::default());
        assert_eq!(r.status, ToolStatus::Done);
        assert!(r
            .result
            .ends_with(&format!("[cut: {} bytes in all]", 2 * MAX_RESULT_BYTES)));
        assert!(r.result.len() < MAX_RESULT_BYTES + 40);
    }

    #[test]
    fn mcp_servers_are_validated_with_the_settings() {
        let server = |name: &str, command: &str| mcp::McpServerConfig {
            name: name.into(),
            command: command.into(),
            enabled: true,
            ..Default::default()
        };
        let with = |servers: Vec<mcp::McpServerConfig>| ToolSettings {
            mcp_servers: servers,
            ..ToolSettings::default()
        };
        with(vec![server("files", "npx"), server("git-2", "uvx")])
            .validate()
            .unwrap();
        let mut bad_env = server("files", "npx");
        bad_env.env.insert("A=B".into(), "x".into());
        for (servers, at, why) in [
            (vec![server("", "npx")], "[0].name", "1 to 32 characters"),
            (vec![server("my files", "npx")], "[0].name", "only letters"),
            (vec![server("a__b", "npx")], "[0].name", "single '_'"),
            (vec![server("files", " ")], "[0].command", "no command"),
            (vec![bad_env], "[0].env", "environment variable"),
            (
                vec![server("x", "a"), server("x", "b")],
                "[1].name",
                "two servers are named \"x\"",
            ),
        ] {
            let err = with(servers).validate().unwrap_err().to_string();
            assert!(
                err.contains(&format!("tools.mcp_servers{at}")) && err.contains(why),
                "{err}"
            );
        }
    }
}
