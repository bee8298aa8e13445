//! The settings window: the form (the settings as fields, and back), saving it, and opening it.

use std::collections::HashMap;
use std::path::PathBuf;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use chat::{ModelSource, ModelState, Settings};
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
        .route("/settings/mcp/{name}/start", post(start_mcp))
}

/// Starts an MCP server (or starts it again) and shows where it stands: its tools, or why it
/// could not start.
async fn start_mcp(State(s): State<Server>, Path(name): Path<String>) -> Response {
    run(s, move |s| {
        let status = s.chat().start_mcp_server(&name)?;
        Ok(Reply::html(
            s.views()
                .render("mcp_server.html", json!({"server": status})),
        ))
    })
    .await
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
            "mcp": s.chat().mcp_servers(),
        });
        Ok(Reply::html(s.views().render("settings.html", ctx)))
    })
    .await
}

async fn save(State(s): State<Server>, axum::Form(form): Fields) -> Response {
    run(s, move |s| {
        let current = s.chat().settings();
        let new = settings_from_form(&current, &form).map_err(RouteError::BadRequest)?;
        let diff = s.chat().update_settings(new)?;
        let text = if diff.is_empty() {
            "Nothing changed."
        } else if diff.needs_restart() {
            "Saved. The thread count applies after a restart."
        } else if diff.needs_reload() {
            "Saved. The model is reloading with the new settings."
        } else {
            "Saved. The next answer uses the new settings."
        };
        Ok(Reply::html(format!(
            "<span class=\"hint\">{}</span>",
            minijinja::HtmlEscape(text)
        )))
    })
    .await
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
        "mcp_servers": mcp_servers_text(&s.tools.mcp_servers),
    })
}

/// The MCP servers as the form's text: a JSON list, empty when there are none.
fn mcp_servers_text(servers: &[chat::tools::mcp::McpServerConfig]) -> String {
    match servers.is_empty() {
        true => String::new(),
        false => serde_json::to_string_pretty(servers).expect("settings serialize"),
    }
}

/// The submitted form over `current`; a field that does not parse is an error naming it.
pub fn settings_from_form(
    current: &Settings,
    form: &HashMap<String, String>,
) -> Result<Settings, String> {
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
                return Err(format!(
                    "Model source: “{other}” is neither local nor endpoint"
                ))
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
        let text = form.get("mcp_servers").map_or("", |v| v.trim());
        s.tools.mcp_servers = match text {
            "" => Vec::new(),
            text => serde_json::from_str(text).map_err(|e| {
                format!("MCP servers: not a JSON list of servers as the hint shows ({e})")
            })?,
        };
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
        let err =
            settings_from_form(&Settings::default(), &form(&[("top_p", "lots")])).unwrap_err();
        assert!(err.contains("Top-p"), "{err}");
        let err =
            settings_from_form(&Settings::default(), &form(&[("kv_cache", "q4")])).unwrap_err();
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
        // What the browser submits: every text field, checkboxes only when checked.
        let f: HashMap<String, String> = settings_form(&s)
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
        let err = settings_from_form(&s, &form(&[("device", "gpu")])).unwrap_err();
        assert!(
            err.contains("Device: ") && err.contains("unknown device"),
            "{err}"
        );
        let err = settings_from_form(&s, &form(&[("backend", "vulkan")])).unwrap_err();
        assert!(err.contains("Backend: "), "{err}");
        // Tools off (the box unchecked), and the MCP list emptied.
        let mut tools = f.clone();
        tools.remove("tools_enabled");
        tools.insert("mcp_servers".into(), " ".into());
        let saved = settings_from_form(&s, &tools).unwrap();
        assert!(!saved.tools.enabled && saved.tools.mcp_servers.is_empty());
        let err = settings_from_form(
            &s,
            &form(&[("tools_max_steps", "3"), ("mcp_servers", "{\"name\": 1}")]),
        )
        .unwrap_err();
        assert!(err.starts_with("MCP servers: not a JSON list"), "{err}");
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
