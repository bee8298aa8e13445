//! The settings window: the form (the settings as fields, and back), saving it, and opening it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use chat::tools::mcp::{McpServerConfig, McpServerStatus, McpState};
use chat::{ChatError, ModelSource, ModelState, Settings};
use engine::device::DeviceReport;
use serde_json::json;

use super::model::manager_ctx;
use super::{run, Fields, RouteError};
use crate::reply::Reply;
use crate::shell::MaybeShell;
use crate::Server;

pub(super) fn routes() -> Router<Server> {
    Router::new()
        .route("/settings", get(page).post(save))
        .route("/settings/mcp", get(mcp_list))
        .route("/settings/mcp/new", get(new_mcp))
        .route("/settings/mcp/{name}/start", post(start_mcp))
}

/// The MCP fields each server has in the form (`mcp_{i}_{field}`), each with its error slot.
const MCP_FIELDS: [&str; 4] = ["name", "command", "args", "env"];

/// Starts an MCP server (or starts it again) and shows where it stands: its tools (to trust, as
/// the fields of its form entry `?index=i`), or why it could not start.
async fn start_mcp(
    State(s): State<Server>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    run(s, move |s| {
        let status = s.chat().start_mcp_server(&name)?;
        let settings = s.chat().settings();
        let config = settings.tools.mcp_servers.iter().find(|c| c.name == name);
        let index = q.get("index").map(|i| {
            i.parse::<usize>()
                .map_err(|_| RouteError::BadRequest(format!("index: “{i}” is not a number")))
        });
        let ctx = match (config, index) {
            (Some(config), Some(index)) => mcp_card(index?, config, &status),
            _ => json!({"server": status}),
        };
        Ok(Reply::html(s.views().render("mcp_server.html", ctx)))
    })
    .await
}

/// The MCP servers' entries as saved, with their cards (after a save).
async fn mcp_list(State(s): State<Server>) -> Response {
    run(s, move |s| {
        let settings = s.chat().settings();
        let servers = &settings.tools.mcp_servers;
        let ctx = json!({
            "mcp": mcp_entries(servers, &s.chat().mcp_servers()),
            "next": servers.len(),
        });
        Ok(Reply::html(s.views().render("mcp_list.html", ctx)))
    })
    .await
}

/// "Add a server": an empty entry `?index=i` for the form's list, and the button again for
/// the entry after it.
async fn new_mcp(State(s): State<Server>, Query(q): Query<HashMap<String, String>>) -> Response {
    run(s, move |s| {
        let raw = q.get("index").map_or("", String::as_str);
        let index: usize = raw
            .parse()
            .map_err(|_| RouteError::BadRequest(format!("index: “{raw}” is not a number")))?;
        let entry = json!({"index": index, "name": "", "command": "", "args": "", "env": "",
            "enabled": true, "card": null});
        let views = s.views();
        let html = views.render("mcp_entry.html", json!({"e": entry}))
            + &views.render("mcp_add.html", json!({"next": index + 1, "oob": true}));
        Ok(Reply::html(html))
    })
    .await
}

/// The MCP servers as the settings form lists them (`index`: their place in the settings, the
/// `i` of their fields), each with where it stands when it has a status.
fn mcp_entries(
    servers: &[McpServerConfig],
    statuses: &[McpServerStatus],
) -> Vec<serde_json::Value> {
    servers
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let card = statuses
                .iter()
                .find(|st| st.name == c.name)
                .map(|st| mcp_card(index, c, st));
            json!({
                "index": index,
                "name": c.name,
                "command": c.command,
                "args": c.args.join("\n"),
                "env": c.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect::<String>(),
                "enabled": c.enabled,
                "card": card,
            })
        })
        .collect()
}

/// A server's card in its form entry `index`: where it stands, and its tools with a "trusted"
/// box each (the tools it lists now, and those trusted before that it does not list now, so
/// that saving keeps them).
fn mcp_card(index: usize, config: &McpServerConfig, status: &McpServerStatus) -> serde_json::Value {
    let listed: &[chat::tools::mcp::McpTool] = match &status.state {
        McpState::Running { tools } => tools,
        _ => &[],
    };
    let mut trust: Vec<serde_json::Value> = listed
        .iter()
        .map(|t| {
            json!({"name": t.name, "description": t.description,
                "trusted": config.trusted.contains(&t.name)})
        })
        .collect();
    for t in &config.trusted {
        if !listed.iter().any(|l| &l.name == t) {
            trust.push(json!({"name": t, "description": "(not listed now)", "trusted": true}));
        }
    }
    json!({"server": status, "index": index, "trust": trust})
}

/// "Settings": the desktop app opens its settings window; a browser goes to the page.
pub(super) async fn open_window(
    State(s): State<Server>,
    MaybeShell(shell): MaybeShell,
) -> Response {
    run(s, move |_| match shell {
        Some(shell) => {
            shell.open_settings();
            Ok(Reply::empty())
        }
        None => Ok(Reply::redirect("/settings")),
    })
    .await
}

/// The settings page; `?probe=again` ("Check the devices again") asks the driver or the CUDA
/// runner anew instead of showing the devices probed before.
async fn page(State(s): State<Server>, Query(q): Query<HashMap<String, String>>) -> Response {
    run(s, move |s| {
        if q.get("probe").map(String::as_str) == Some("again") {
            s.chat().probe_devices_again();
        }
        let settings = s.chat().settings();
        let devices = s.chat().devices();
        let saved = settings.device.to_string();
        // A saved device this machine cannot use has no radio to show it checked: say so, and the
        // form (without a device field) keeps it until another is chosen.
        let saved_unusable = !devices.iter().any(|d| d.usable && d.device == saved);
        let ctx = json!({
            "manager": manager_ctx(s),
            "s": settings_form(&settings),
            "defaults": match settings.model_source {
                ModelSource::Local => sampling_defaults(&s.chat().model_state()),
                // An empty field is not sent: the endpoint's server decides, not our families.
                ModelSource::Endpoint => json!({
                    "temperature": "server's",
                    "top_p": "server's",
                    "top_k": "server's",
                    "repeat_penalty": "server's",
                }),
            },
            "devices": devices.iter().map(device_view).collect::<Vec<_>>(),
            "saved_unusable": saved_unusable,
            "max_threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) * 2,
            "server_status": s.chat().server_status().describe(),
            "mcp": mcp_entries(&settings.tools.mcp_servers, &s.chat().mcp_servers()),
        });
        Ok(Reply::html(s.views().render("settings.html", ctx)))
    })
    .await
}

async fn save(State(s): State<Server>, axum::Form(form): Fields) -> Response {
    run(s, move |s| {
        let current = s.chat().settings();
        // The MCP entries' errors show beside their fields: each save says them all anew.
        let entries = mcp_form_indices(&form);
        let refused = |at: String, message: String| -> std::result::Result<Reply, RouteError> {
            Ok(Reply::html(format!(
                "<span class=\"hint warn\">{}</span>{}",
                minijinja::HtmlEscape(&message),
                mcp_error_slots(&entries, Some((&at, &message)))
            )))
        };
        let new = match settings_from_form(&current, &form) {
            Ok(new) => new,
            Err(FormError {
                message,
                at: Some(at),
            }) => return refused(at, message),
            Err(FormError { message, at: None }) => return Err(RouteError::BadRequest(message)),
        };
        let diff = match s.chat().update_settings(new) {
            Ok(diff) => diff,
            Err(ChatError::InvalidMcpServer {
                index,
                field,
                reason,
            }) if index < entries.len() => {
                return refused(format!("mcp-{}-{field}-error", entries[index]), reason)
            }
            Err(e) => return Err(e.into()),
        };
        let text = if diff.is_empty() {
            "Nothing changed."
        } else if diff.needs_restart() {
            "Saved. The thread count applies after a restart."
        } else if diff.needs_reload() {
            "Saved. The model is reloading with the new settings."
        } else {
            "Saved. The next answer uses the new settings."
        };
        let reply = Reply::html(format!(
            "<span class=\"hint\">{}</span>",
            minijinja::HtmlEscape(text)
        ));
        // The MCP entries are fetched again, numbered as saved (a new server's card starts it).
        Ok(match form.contains_key("tools_max_steps") {
            true => reply.trigger("mcp-servers-saved"),
            false => reply,
        })
    })
    .await
}

/// The error slot of every MCP field of the `entries`, as out-of-band swaps: empty, or
/// `error` = (slot id, message) in its slot.
fn mcp_error_slots(entries: &[usize], error: Option<(&str, &str)>) -> String {
    let mut html = String::new();
    for i in entries {
        for field in MCP_FIELDS {
            let id = format!("mcp-{i}-{field}-error");
            let text = match error {
                Some((at, message)) if at == id => message,
                _ => "",
            };
            html += &format!(
                "<span class=\"field-error\" id=\"{id}\" hx-swap-oob=\"true\">{}</span>",
                minijinja::HtmlEscape(text)
            );
        }
    }
    html
}

/// One device as the settings window lists it: what it is (name, memory, compute capability), or
/// the reason it cannot be used, as the engine (or the memory check) words it.
pub fn device_view(d: &DeviceReport) -> serde_json::Value {
    let gb = engine::memory::gb;
    let mut facts = Vec::new();
    if let Some(total) = d.memory_total {
        facts.push(format!("{} memory", gb(total)));
    }
    if let Some(free) = d.memory_available {
        facts.push(format!("{} available", gb(free)));
    }
    if let Some(cc) = &d.compute_capability {
        facts.push(format!("compute capability {cc}"));
    }
    if !d.backends.is_empty() {
        let names: Vec<String> = d.backends.iter().map(|b| b.to_string()).collect();
        facts.push(format!("backends: {}", names.join(", ")));
    }
    json!({
        "id": d.device,
        "name": d.name,
        "available": d.usable,
        "facts": facts.join(" · "),
        "reason": d.reason,
    })
}

/// The model family's sampling defaults, shown as placeholders in the settings form.
fn sampling_defaults(state: &ModelState) -> serde_json::Value {
    let family = match state {
        ModelState::Ready { info, .. } if info.config.arch == engine::Arch::Llama => {
            engine::ModelFamily::Llama
        }
        _ => engine::ModelFamily::SmolLM3,
    };
    let d = engine::SamplingParams::for_family(family);
    // As text: an f32 widened to a JSON number shows its binary noise (0.800000011920929).
    json!({
        "temperature": d.temperature.to_string(),
        "top_p": d.top_p.to_string(),
        "top_k": d.top_k,
        "repeat_penalty": d.repeat_penalty.to_string(),
    })
}

/// The settings as the form shows them (`None` = empty field = the model's default).
pub fn settings_form(s: &Settings) -> serde_json::Value {
    let opt = |v: Option<String>| v.unwrap_or_default();
    json!({
        "model_source": match s.model_source {
            ModelSource::Local => "local",
            ModelSource::Endpoint => "endpoint",
        },
        "model_path": s.model_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        "endpoint_url": s.endpoint.base_url,
        "endpoint_model": s.endpoint.model,
        "endpoint_api_key": s.endpoint.api_key,
        "endpoint_timeout": s.endpoint.timeout_secs,
        "context_len": s.context_len,
        "kv_cache": s.kv_cache.name(),
        "kept_caches_mb": s.kept_caches_mb,
        "device": s.device.to_string(),
        "backend": s.backend.map(|b| b.to_string()).unwrap_or_default(),
        "threads": s.threads,
        "temperature": opt(s.temperature.map(|v| v.to_string())),
        "top_p": opt(s.top_p.map(|v| v.to_string())),
        "top_k": opt(s.top_k.map(|v| v.to_string())),
        "repeat_penalty": opt(s.repeat_penalty.map(|v| v.to_string())),
        "speculative": s.speculative,
        "thinking": s.thinking_default,
        "follow_ups": s.follow_ups.enabled,
        "max_thinking_tokens": opt(s.max_thinking_tokens.map(|v| v.to_string())),
        "system_prompt": s.system_prompt,
        "shortcut": s.quick_chat_shortcut,
        "server_enabled": s.local_server.enabled,
        "server_host": s.local_server.host,
        "server_port": s.local_server.port,
        "server_api_key": s.local_server.api_key,
        "tools_enabled": s.tools.enabled,
        "tools_max_steps": s.tools.max_steps,
        "tools_timeout": s.tools.timeout_secs,
    })
}

/// A form field that does not parse: why, and the id of the slot beside the field that shows
/// it (`None`: the form as a whole).
#[derive(Debug)]
pub struct FormError {
    pub message: String,
    pub at: Option<String>,
}

impl From<String> for FormError {
    fn from(message: String) -> Self {
        FormError { message, at: None }
    }
}

/// The `i` of the MCP entries in the form (`mcp_{i}_name` present), in order; an entry left
/// blank (added, nothing typed) is not one.
fn mcp_form_indices(form: &HashMap<String, String>) -> Vec<usize> {
    let mut indices: Vec<usize> = form
        .keys()
        .filter_map(|k| k.strip_prefix("mcp_")?.strip_suffix("_name")?.parse().ok())
        .filter(|i| {
            MCP_FIELDS.iter().any(|f| {
                form.get(&format!("mcp_{i}_{f}"))
                    .is_some_and(|v| !v.trim().is_empty())
            })
        })
        .collect();
    indices.sort_unstable();
    indices
}

/// The MCP servers of the form's entries, in order. Arguments are one per line and
/// environment variables `KEY=VALUE` lines (blank lines skipped, spaces around each trimmed);
/// a box `mcp_{i}_trust_{tool}` checked trusts that tool. The fields' rules are the chat core's
/// (checked when the settings are saved).
fn mcp_servers_from_form(
    form: &HashMap<String, String>,
) -> Result<Vec<McpServerConfig>, FormError> {
    let lines = |v: Option<&String>| -> Vec<String> {
        v.map_or("", |v| v.as_str())
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    mcp_form_indices(form)
        .into_iter()
        .map(|i| {
            let text = |f: &str| form.get(&format!("mcp_{i}_{f}")).map_or("", |v| v.trim());
            let mut env = BTreeMap::new();
            for line in lines(form.get(&format!("mcp_{i}_env"))) {
                let at = Some(format!("mcp-{i}-env-error"));
                let Some((key, value)) = line.split_once('=') else {
                    return Err(FormError {
                        message: format!("“{line}” is not KEY=VALUE"),
                        at,
                    });
                };
                if env
                    .insert(key.trim().to_string(), value.trim().to_string())
                    .is_some()
                {
                    return Err(FormError {
                        message: format!("{} is set twice", key.trim()),
                        at,
                    });
                }
            }
            let trust_prefix = format!("mcp_{i}_trust_");
            let mut trusted: Vec<String> = form
                .iter()
                .filter(|(_, v)| v.as_str() == "on")
                .filter_map(|(k, _)| k.strip_prefix(&trust_prefix).map(str::to_string))
                .collect();
            trusted.sort();
            Ok(McpServerConfig {
                name: text("name").to_string(),
                command: text("command").to_string(),
                args: lines(form.get(&format!("mcp_{i}_args"))),
                env,
                enabled: form
                    .get(&format!("mcp_{i}_enabled"))
                    .is_some_and(|v| v == "on"),
                trusted,
            })
        })
        .collect()
}

/// The submitted form over `current`; a field that does not parse is an error naming it.
pub fn settings_from_form(
    current: &Settings,
    form: &HashMap<String, String>,
) -> Result<Settings, FormError> {
    fn field<T: std::str::FromStr>(
        form: &HashMap<String, String>,
        name: &str,
        label: &str,
    ) -> Result<Option<T>, String> {
        match form.get(name).map(|v| v.trim()) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{label}: “{v}” is not a valid number")),
        }
    }
    let mut s = current.clone();
    s.model_path = form
        .get("model_path")
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    // The radio is absent from forms without the section: read it only from one that has it.
    if let Some(source) = form.get("model_source") {
        s.model_source = match source.as_str() {
            "local" => ModelSource::Local,
            "endpoint" => ModelSource::Endpoint,
            other => {
                return Err(format!("Model source: “{other}” is neither local nor endpoint").into())
            }
        };
        s.endpoint.base_url = form.get("endpoint_url").map_or("", |v| v.trim()).into();
        s.endpoint.model = form.get("endpoint_model").map_or("", |v| v.trim()).into();
        s.endpoint.api_key = form.get("endpoint_api_key").map_or("", |v| v.trim()).into();
        if let Some(t) = field(form, "endpoint_timeout", "Endpoint timeout")? {
            s.endpoint.timeout_secs = t;
        }
    }
    if let Some(n) = field(form, "context_len", "Context length")? {
        s.context_len = n;
    }
    if let Some(v) = form.get("kv_cache") {
        s.kv_cache = v.parse().map_err(|e| format!("KV cache: {e}"))?;
    }
    if let Some(n) = field(form, "kept_caches_mb", "Caches of recent chats")? {
        s.kept_caches_mb = n;
    }
    if let Some(n) = field(form, "threads", "Threads")? {
        s.threads = n;
    }
    // No device chosen (the saved one cannot be used here, so no radio is checked): keep it.
    if let Some(d) = form.get("device") {
        s.device = d
            .parse()
            .map_err(|e| format!("Device: {}", chat::device::reason(e)))?;
    }
    if let Some(b) = form.get("backend") {
        s.backend = match b.trim() {
            "" => None,
            b => Some(
                b.parse()
                    .map_err(|e| format!("Backend: {}", chat::device::reason(e)))?,
            ),
        };
    }
    s.temperature = field(form, "temperature", "Temperature")?;
    s.top_p = field(form, "top_p", "Top-p")?;
    s.top_k = field(form, "top_k", "Top-k")?;
    s.repeat_penalty = field(form, "repeat_penalty", "Repetition penalty")?;
    s.speculative = form.get("speculative").is_some_and(|v| v == "on");
    s.thinking_default = form.get("thinking").is_some_and(|v| v == "on");
    s.follow_ups.enabled = form.get("follow_ups").is_some_and(|v| v == "on");
    s.max_thinking_tokens = field(form, "max_thinking_tokens", "Thinking budget")?;
    if let Some(p) = form.get("system_prompt") {
        s.system_prompt = p.trim().to_string();
    }
    if let Some(k) = form.get("shortcut") {
        s.quick_chat_shortcut = k.trim().to_string();
    }
    // The checkbox is absent when off: read the section only from a form that has it.
    if let Some(host) = form.get("server_host") {
        s.local_server.enabled = form.get("server_enabled").is_some_and(|v| v == "on");
        s.local_server.host = host.trim().to_string();
        if let Some(port) = field(form, "server_port", "Local server port")? {
            s.local_server.port = port;
        }
        if let Some(key) = form.get("server_api_key") {
            s.local_server.api_key = key.trim().to_string();
        }
    }
    // The checkbox is absent when off: read the section only from a form that has it.
    if form.contains_key("tools_max_steps") {
        s.tools.enabled = form.get("tools_enabled").is_some_and(|v| v == "on");
        if let Some(n) = field(form, "tools_max_steps", "Tool steps")? {
            s.tools.max_steps = n;
        }
        if let Some(t) = field(form, "tools_timeout", "Tool timeout")? {
            s.tools.timeout_secs = t;
        }
        s.tools.mcp_servers = mcp_servers_from_form(form)?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_sampling_fields_mean_the_model_default() {
        let current = Settings {
            temperature: Some(0.9),
            ..Settings::default()
        };
        let s = settings_from_form(
            &current,
            &form(&[
                ("temperature", ""),
                ("top_k", "40"),
                ("thinking", "on"),
                ("max_thinking_tokens", "300"),
            ]),
        )
        .unwrap();
        assert_eq!(s.temperature, None);
        assert_eq!(s.top_k, Some(40));
        assert!(s.thinking_default);
        assert_eq!(s.max_thinking_tokens, Some(300));
        let no_limit = settings_from_form(&s, &form(&[("max_thinking_tokens", " ")])).unwrap();
        assert_eq!(no_limit.max_thinking_tokens, None, "empty = no limit");
    }

    #[test]
    fn a_bad_number_names_its_field() {
        let err = settings_from_form(&Settings::default(), &form(&[("top_p", "lots")]))
            .unwrap_err()
            .message;
        assert!(err.contains("Top-p"), "{err}");
        let err = settings_from_form(&Settings::default(), &form(&[("kv_cache", "q4")]))
            .unwrap_err()
            .message;
        assert!(err.contains("KV cache") && err.contains("f16"), "{err}");
    }

    #[test]
    fn form_round_trips_the_settings() {
        let s = Settings {
            top_p: Some(0.5),
            kv_cache: engine::KvType::F32,
            device: engine::DeviceSpec::Cuda(1),
            backend: Some(engine::BackendKind::Candle),
            system_prompt: "Be brief.".into(),
            // Unchecked, so absent from the form: the default (on) must turn off.
            speculative: false,
            model_source: ModelSource::Endpoint,
            endpoint: chat::Endpoint {
                base_url: "http://gpu-box:8080/v1".into(),
                api_key: "sk-1".into(),
                model: "smollm3".into(),
                timeout_secs: 30,
            },
            local_server: chat::LocalServer {
                enabled: true,
                host: "0.0.0.0".into(),
                port: 9000,
                api_key: "k".into(),
            },
            tools: chat::tools::ToolSettings {
                max_steps: 3,
                mcp_servers: vec![chat::tools::mcp::McpServerConfig {
                    name: "files".into(),
                    command: "npx".into(),
                    args: vec!["-y".into(), "server-filesystem".into()],
                    env: [("ROOT".to_string(), "/tmp".to_string())].into(),
                    enabled: true,
                    trusted: vec!["read_file".into()],
                }],
                ..Default::default()
            },
            ..Settings::default()
        };
        // What the browser submits: every text field, checkboxes only when checked; the MCP
        // server's entry as its fields (mcp_entry.html, the card's trust boxes).
        let mut f: HashMap<String, String> = settings_form(&s)
            .as_object()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(t) => Some((k.clone(), t.clone())),
                serde_json::Value::Bool(true) => Some((k.clone(), "on".into())),
                serde_json::Value::Bool(false) => None,
                other => Some((k.clone(), other.to_string())),
            })
            .collect();
        let entry = &mcp_entries(&s.tools.mcp_servers, &[])[0];
        assert_eq!(entry["args"], "-y\nserver-filesystem");
        assert_eq!(entry["env"], "ROOT=/tmp\n");
        f.extend(form(&[
            ("mcp_0_name", "files"),
            ("mcp_0_command", "npx"),
            ("mcp_0_args", "-y\r\n server-filesystem \r\n\r\n"),
            ("mcp_0_env", "ROOT=/tmp\n"),
            ("mcp_0_enabled", "on"),
            ("mcp_0_trust_read_file", "on"),
            // Unchecked boxes are not sent; an added entry left blank is no server.
            ("mcp_3_name", " "),
            ("mcp_3_args", ""),
        ]));
        assert_eq!(settings_from_form(&Settings::default(), &f).unwrap(), s);
        let mut off = f.clone();
        off.remove("server_enabled");
        let saved = settings_from_form(&s, &off).unwrap();
        assert!(!saved.local_server.enabled, "an unchecked box turns it off");
        let mut on = f.clone();
        on.insert("speculative".into(), "on".into());
        assert!(settings_from_form(&s, &on).unwrap().speculative);
        // No device radio checked (the saved one is not offered here): the device stays.
        off.remove("device");
        assert_eq!(settings_from_form(&s, &off).unwrap().device, s.device);
        let err = settings_from_form(&s, &form(&[("device", "gpu")]))
            .unwrap_err()
            .message;
        assert!(
            err.contains("Device: ") && err.contains("unknown device"),
            "{err}"
        );
        let err = settings_from_form(&s, &form(&[("backend", "vulkan")]))
            .unwrap_err()
            .message;
        assert!(err.contains("Backend: "), "{err}");
        // Tools off (the box unchecked), and the MCP server removed (its entry gone).
        let mut tools = f.clone();
        tools.remove("tools_enabled");
        tools.retain(|k, _| !k.starts_with("mcp_"));
        let saved = settings_from_form(&s, &tools).unwrap();
        assert!(!saved.tools.enabled && saved.tools.mcp_servers.is_empty());
    }

    #[test]
    fn mcp_entries_in_the_form_become_servers_in_their_order() {
        let f = form(&[
            ("tools_max_steps", "3"),
            ("mcp_10_name", "second"),
            ("mcp_10_command", "uvx"),
            ("mcp_2_name", "first"),
            ("mcp_2_command", "npx"),
            ("mcp_2_enabled", "on"),
            ("mcp_2_env", "A = 1\n\nB=x=y\n"),
            ("mcp_2_trust_write", "on"),
            ("mcp_2_trust_read", "on"),
        ]);
        let servers = settings_from_form(&Settings::default(), &f)
            .unwrap()
            .tools
            .mcp_servers;
        let names: Vec<&str> = servers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["first", "second"], "by i, as numbers");
        assert_eq!(servers[0].env["A"], "1");
        assert_eq!(servers[0].env["B"], "x=y");
        assert_eq!(servers[0].trusted, ["read", "write"]);
        assert!(servers[0].enabled && !servers[1].enabled);
        assert_eq!(mcp_form_indices(&f), [2, 10]);
    }

    #[test]
    fn a_bad_environment_line_is_shown_beside_its_field() {
        for (env, why) in [
            ("PATH", "“PATH” is not KEY=VALUE"),
            ("A=1\nA=2", "A is set twice"),
        ] {
            let err = settings_from_form(
                &Settings::default(),
                &form(&[
                    ("tools_max_steps", "3"),
                    ("mcp_4_name", "x"),
                    ("mcp_4_env", env),
                ]),
            )
            .unwrap_err();
            assert_eq!(err.message, why);
            assert_eq!(err.at.as_deref(), Some("mcp-4-env-error"));
        }
        let slots = mcp_error_slots(&[4, 7], Some(("mcp-7-command-error", "no <command>")));
        assert_eq!(slots.matches("hx-swap-oob=\"true\"").count(), 8);
        assert!(
            slots.contains(
                "id=\"mcp-7-command-error\" hx-swap-oob=\"true\">no &lt;command&gt;</span>"
            ),
            "{slots}"
        );
        assert!(slots.contains("id=\"mcp-4-name-error\" hx-swap-oob=\"true\"></span>"));
    }

    #[test]
    fn sampling_defaults_show_as_written_not_as_widened_floats() {
        let d = sampling_defaults(&ModelState::NoModel {
            why: String::new(),
            how_to_get_one: String::new(),
        });
        let want = engine::SamplingParams::for_family(engine::ModelFamily::SmolLM3);
        assert_eq!(d["temperature"], want.temperature.to_string());
        assert_eq!(d["top_p"], want.top_p.to_string());
        for key in ["temperature", "top_p", "repeat_penalty"] {
            let shown = d[key].as_str().unwrap();
            assert!(shown.len() <= 5, "{key} shown as {shown}");
        }
    }
}
