//! NotSo-SmolLM3 Bot, the desktop app: a Tauri 2 shell over the chat core (`crates/chat`) and the
//! server's Router (`crates/server`), which answers every page and htmx request.
//!
//! - [`bridge`]: opens the chat core and the server; the `app://` protocol every window loads from
//!   calls the Router as a tower `Service` per request; page events -> Tauri events (`chat-stream`
//!   frames, `app-state` news).
//! - [`shell`]: what the Router asks of the desktop (native dialogs, windows), behind `server::Shell`.
//! - [`windows`]: the main, settings and quick-chat windows, the tray icon, the global shortcut.
//!
//! See `doc/app.md` for the request and stream protocols.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod bridge;
mod shell;
mod startup;
mod windows;

use std::path::PathBuf;

use clap::Parser;
use tauri::Manager;

/// NotSo-SmolLM3 Bot: private chat with SmolLM3 on this computer.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// A GGUF model to load now (overrides the model in the settings for this run).
    #[arg(long, env = "SMOLLM3_MODEL")]
    pub model: Option<PathBuf>,
    /// Where chats are kept (default: the OS data directory).
    #[arg(long, env = "NOTSO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the settings file is kept (default: the OS config directory).
    #[arg(long, env = "NOTSO_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Where downloaded models go (default: `models` in the data directory).
    #[arg(long, env = "NOTSO_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// The model hub (or a mirror) downloads come from.
    #[arg(long, env = "HF_ENDPOINT")]
    pub hf_endpoint: Option<String>,
    /// A Hugging Face token, for gated or private models.
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    pub hf_token: Option<String>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tao=warn,wry=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("notso-smollm3: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let context = tauri::generate_context!();
    let instance = startup::instance_id(&context.config().identifier, &args);
    tauri::Builder::default()
        // First: a second launch on the same data folder hands over its arguments and exits before
        // it opens anything (a second model load, the first's answers marked interrupted).
        .plugin(
            tauri_plugin_single_instance::Builder::new()
                .dbus_id(instance)
                .callback(startup::second_launch)
                .build(),
        )
        .plugin(tauri_plugin_global_shortcut::Builder::new().build())
        .plugin(tauri_plugin_dialog::init())
        .register_asynchronous_uri_scheme_protocol("app", move |ctx, request, responder| {
            let app = ctx.app_handle().clone();
            tauri::async_runtime::spawn(async move {
                responder.respond(bridge::respond(app, request).await)
            });
        })
        .setup(move |app| {
            startup::start(app.handle(), args.clone());
            Ok(())
        })
        .on_window_event(|window, event| {
            // A GGUF file dropped on any window is imported (validated by the engine first).
            if let tauri::WindowEvent::DragDrop(tauri::DragDropEvent::Drop { paths, .. }) = event {
                if let Some(path) = paths
                    .iter()
                    .find(|p| p.extension().is_some_and(|e| e == "gguf"))
                {
                    let server = window
                        .app_handle()
                        .state::<server::Server>()
                        .inner()
                        .clone();
                    let path = path.clone();
                    std::thread::spawn(move || server.import_dropped(&path));
                }
            }
        })
        .build(context)?
        .run(|app, event| {
            if let tauri::RunEvent::Exit = event {
                startup::on_exit(app);
            }
        });
    Ok(())
}
