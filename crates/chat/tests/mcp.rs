//! MCP round trips against a small MCP server the test starts (`mcp_demo_server.py`, speaking
//! the protocol over stdio): tools listed, a call, the tool's errors, a server that cannot
//! start and one that dies, and both started again on a later use.

use std::time::{Duration, Instant};

use chat::tools::mcp::{McpServerConfig, McpServers, McpState};
use chat::tools::ToolError;
use serde_json::{json, Map, Value};

const TIMEOUT: Duration = Duration::from_secs(20);

fn demo(name: &str, extra: &[&str]) -> McpServerConfig {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp_demo_server.py");
    let mut args = vec![script.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    McpServerConfig {
        name: name.into(),
        command: "python3".into(),
        args,
        env: [("DEMO_GREETING".to_string(), "Add a and b.".to_string())].into(),
        enabled: true,
        trusted: Vec::new(),
    }
}

fn args(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn state(servers: &McpServers, name: &str) -> McpState {
    let all = servers.statuses();
    all.into_iter().find(|s| s.name == name).unwrap().state
}

#[test]
fn tools_are_listed_and_called_and_errors_say_why() {
    let servers = McpServers::new(&[demo("demo", &[])]).unwrap();
    assert_eq!(state(&servers, "demo"), McpState::Stopped);
    let tools = servers.tools(TIMEOUT);
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["add", "fail", "reject", "crash", "sleep"]);
    // The configured environment reaches the server.
    assert_eq!(tools[0].description, "Add a and b.");
    assert_eq!(
        tools[0].spec(),
        json!({"name": "demo__add", "description": "Add a and b.", "parameters": {
            "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"]}})
    );
    assert!(matches!(state(&servers, "demo"), McpState::Running { .. }));

    let sum = servers.call("demo", "add", args(json!({"a": 2, "b": 40})), TIMEOUT);
    assert_eq!(sum.unwrap(), "42");
    // A result flagged as an error, and a protocol error: the tool's own words.
    assert_eq!(
        servers.call("demo", "fail", Map::new(), TIMEOUT),
        Err(ToolError::Failed("the demo tool failed on purpose".into()))
    );
    assert_eq!(
        servers.call("demo", "reject", Map::new(), TIMEOUT),
        Err(ToolError::Failed("reject is refused".into()))
    );
    assert_eq!(
        servers.call("demo", "nope", Map::new(), TIMEOUT),
        Err(ToolError::Unknown("demo__nope".into()))
    );
    // A call that takes too long ends at the timeout; the server still answers afterwards.
    let start = Instant::now();
    let slow = servers.call(
        "demo",
        "sleep",
        args(json!({"seconds": 5})),
        Duration::from_millis(300),
    );
    assert_eq!(slow, Err(ToolError::Failed("timed out after 0.3 s".into())));
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_server_that_dies_or_cannot_start_says_why() {
    let servers =
        McpServers::new(&[demo("demo", &[]), demo("broken", &["--exit-at-start"])]).unwrap();
    // The broken one fails to start; the other's tools are still offered.
    let tools = servers.tools(TIMEOUT);
    assert!(tools.iter().all(|t| t.server == "demo") && !tools.is_empty());
    let McpState::Failed { why, .. } = state(&servers, "broken") else {
        panic!("{:?}", servers.statuses())
    };
    assert!(why.contains("demo server: no configuration found"), "{why}");

    let Err(ToolError::Failed(why)) = servers.call("demo", "crash", Map::new(), TIMEOUT) else {
        panic!("the crash did not fail")
    };
    assert!(
        why.starts_with("the MCP server \"demo\" stopped") && why.contains("crashing on purpose"),
        "{why}"
    );
    assert!(matches!(state(&servers, "demo"), McpState::Failed { .. }));
    // Its tools are no longer offered, and a later call says why.
    assert!(servers.tools(TIMEOUT).is_empty());
    let Err(ToolError::Failed(later)) =
        servers.call("demo", "add", args(json!({"a": 1, "b": 1})), TIMEOUT)
    else {
        panic!("a dead server answered")
    };
    assert!(
        later.contains("is not running")
            && later.contains("crashing on purpose")
            && later.contains("started again on its next use after"),
        "{later}"
    );
    // Started again by the user, it works.
    let status = servers.restart("demo", TIMEOUT).unwrap();
    assert!(
        matches!(status.state, McpState::Running { .. }),
        "{status:?}"
    );
    let sum = servers.call("demo", "add", args(json!({"a": 1, "b": 1})), TIMEOUT);
    assert_eq!(sum.unwrap(), "2");
}

#[test]
fn a_missing_program_and_settings_changes() {
    let mut missing = demo("gone", &[]);
    missing.command = "/nonexistent/mcp-server".into();
    let servers = McpServers::new(&[missing.clone()]).unwrap();
    assert!(servers.tools(TIMEOUT).is_empty());
    let McpState::Failed { why, .. } = state(&servers, "gone") else {
        panic!()
    };
    assert!(
        why.starts_with("cannot run \"/nonexistent/mcp-server\""),
        "{why}"
    );
    // Changing the command clears the failure: the server starts again on its next use.
    let fixed = demo("gone", &[]);
    servers.configure(std::slice::from_ref(&fixed));
    assert_eq!(state(&servers, "gone"), McpState::Stopped);
    assert_eq!(servers.tools(TIMEOUT).len(), 5);
    // Trusting a tool does not restart the server; switching it off stops it.
    let trusting = McpServerConfig {
        trusted: vec!["add".into()],
        ..fixed.clone()
    };
    servers.configure(&[trusting]);
    assert!(matches!(state(&servers, "gone"), McpState::Running { .. }));
    servers.configure(&[McpServerConfig {
        enabled: false,
        ..fixed
    }]);
    assert_eq!(state(&servers, "gone"), McpState::Disabled);
    assert!(servers.tools(TIMEOUT).is_empty());
}

/// Waits until `server`'s wait before its next try is over (its status says 0 s).
fn until_retry_is_due(servers: &McpServers, name: &str) {
    let start = Instant::now();
    loop {
        match state(servers, name) {
            McpState::Failed { retry_in_s: 0, .. } => return,
            McpState::Failed { .. } => {}
            other => panic!("{other:?}"),
        }
        assert!(start.elapsed() < TIMEOUT, "the wait never ends");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_server_that_failed_is_started_again_on_a_use_after_its_wait() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started-once");
    let flaky = demo("flaky", &["--fail-first", marker.to_str().unwrap()]);
    let first_wait = Duration::from_millis(1500);
    let servers = McpServers::new(&[flaky])
        .unwrap()
        .with_first_retry_after(first_wait);
    let failed_at = Instant::now();
    assert!(servers.tools(TIMEOUT).is_empty());
    let McpState::Failed { why, retry_in_s } = state(&servers, "flaky") else {
        panic!("{:?}", servers.statuses())
    };
    assert!(why.contains("failing the first start on purpose"), "{why}");
    assert_eq!(retry_in_s, 2, "1.5 s, rounded up");
    // Used again at once: not started again (a server that always fails would slow every
    // answer by its start-up time).
    assert!(servers.tools(TIMEOUT).is_empty());
    if failed_at.elapsed() < first_wait {
        assert!(matches!(state(&servers, "flaky"), McpState::Failed { .. }));
    }
    until_retry_is_due(&servers, "flaky");
    assert_eq!(servers.tools(TIMEOUT).len(), 5, "{:?}", servers.statuses());
    assert!(matches!(state(&servers, "flaky"), McpState::Running { .. }));

    // Dying counts as a failure: the next use after the wait starts it again (the marker is
    // there now, so it starts well).
    assert!(servers.call("flaky", "crash", Map::new(), TIMEOUT).is_err());
    assert!(matches!(state(&servers, "flaky"), McpState::Failed { .. }));
    until_retry_is_due(&servers, "flaky");
    assert_eq!(servers.tools(TIMEOUT).len(), 5);
    let sum = servers.call("flaky", "add", args(json!({"a": 2, "b": 3})), TIMEOUT);
    assert_eq!(sum.unwrap(), "5");
}

#[test]
fn each_failure_in_a_row_doubles_the_wait_and_retry_skips_it() {
    let broken = demo("broken", &["--exit-at-start"]);
    let servers = McpServers::new(&[broken])
        .unwrap()
        .with_first_retry_after(Duration::from_secs(10));
    servers.tools(TIMEOUT);
    let McpState::Failed { retry_in_s, .. } = state(&servers, "broken") else {
        panic!()
    };
    assert_eq!(retry_in_s, 10);
    // The user's "Retry" starts it at once; failing again, it waits twice as long.
    let status = servers.restart("broken", TIMEOUT).unwrap();
    let McpState::Failed { retry_in_s, why } = status.state else {
        panic!("{status:?}")
    };
    assert_eq!(retry_in_s, 20, "{why}");
}
