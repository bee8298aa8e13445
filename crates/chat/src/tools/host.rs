//! The app's [`ToolHost`]: the built-in tools, then the tools of the user's running MCP
//! servers (started here on first use, see [`McpServers::tools`]).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::builtin::Builtins;
use super::mcp::{McpServers, McpTool};
use super::{ToolCall, ToolError, ToolHost};

pub struct AppTools {
    builtins: Builtins,
    mcp: Arc<McpServers>,
    timeout: Duration,
    /// The MCP tools offered to this answer, taken once (when the worker first asks for the
    /// specs) so that the calls resolve against what the model was shown.
    offered: std::sync::OnceLock<Vec<McpTool>>,
}

impl AppTools {
    pub(crate) fn new(builtins: Builtins, mcp: Arc<McpServers>, timeout: Duration) -> Self {
        AppTools {
            builtins,
            mcp,
            timeout,
            offered: std::sync::OnceLock::new(),
        }
    }

    fn mcp_tools(&self) -> &[McpTool] {
        self.offered.get_or_init(|| self.mcp.tools(self.timeout))
    }
}

impl ToolHost for AppTools {
    fn specs(&self) -> Vec<Value> {
        let mut specs = self.builtins.specs();
        specs.extend(self.mcp_tools().iter().map(McpTool::spec));
        specs
    }

    /// Every MCP tool asks first unless the user trusts it (read live: "Always" during an
    /// answer applies to its later calls).
    fn needs_approval(&self, name: &str) -> bool {
        self.mcp_tools()
            .iter()
            .find(|t| super::mcp::exposed_name(&t.server, &t.name) == name)
            .is_some_and(|t| !self.mcp.is_trusted(&t.server, &t.name))
    }

    fn run(&self, call: &ToolCall, stopped: &Arc<AtomicBool>) -> Result<String, ToolError> {
        let offered = self
            .mcp_tools()
            .iter()
            .find(|t| super::mcp::exposed_name(&t.server, &t.name) == call.name);
        match offered {
            Some(tool) => self.mcp.call_until_stopped(
                &tool.server,
                &tool.name,
                call.arguments.clone(),
                self.timeout,
                stopped,
            ),
            None => self.builtins.run(call, stopped),
        }
    }
}
