//! `smollm3 serve`: the app without a window. The chat UI at `http://HOST:PORT/` in any browser (the
//! desktop app's chats, by default) and the OpenAI-compatible API under `/v1`, from one model.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use chat::{AppPaths, ChatApp, ChatError, LocalServer, ModelState, RunOverrides};
use clap::Args;
use server::{Downloads, Hub, Server};

#[derive(Args)]
pub struct ServeArgs {
    /// The GGUF model to serve (for this run; the app's settings keep theirs).
    #[arg(long, env = "SMOLLM3_MODEL")]
    model: PathBuf,
    /// The address to listen on: 127.0.0.1 is this computer only; any other (0.0.0.0: every
    /// network) requires --api-key.
    #[arg(long, default_value = chat::local_server::DEFAULT_HOST)]
    host: String,
    #[arg(long, default_value_t = chat::local_server::DEFAULT_PORT)]
    port: u16,
    /// Clients must send it (`Authorization: Bearer KEY`; a browser asks for it as the password).
    #[arg(long, env = "SMOLLM3_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Context length in tokens (default: the app's setting; capped by the model's own).
    #[arg(long, env = "SMOLLM3_CONTEXT")]
    context: Option<usize>,
    /// Compute threads (default: the app's setting).
    #[arg(long, env = "SMOLLM3_THREADS")]
    threads: Option<usize>,
    /// Where chats are kept (default: the desktop app's, so they are the same chats).
    #[arg(long, env = "NOTSO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where the settings file is (default: the desktop app's).
    #[arg(long, env = "NOTSO_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let config = LocalServer {
        enabled: true,
        host: args.host.clone(),
        port: args.port,
        api_key: args.api_key.clone().unwrap_or_default(),
    };
    config.validate().map_err(|e| match e {
        // The settings' name for the key means nothing on the command line.
        ChatError::InvalidSetting {
            field: "local_server.api_key",
            reason,
        } => anyhow!("--api-key is required: {reason}"),
        e => e.into(),
    })?;
    let defaults = AppPaths::for_user()?;
    let data_dir = args.data_dir.unwrap_or(defaults.data_dir);
    let paths = AppPaths {
        models_dir: data_dir.join("models"),
        config_dir: args.config_dir.unwrap_or(defaults.config_dir),
        data_dir,
    };
    let model = std::path::absolute(&args.model).unwrap_or(args.model);
    let overrides = RunOverrides {
        model_path: Some(model.clone()),
        context_len: args.context,
        threads: args.threads,
    };
    let hub = Hub::new();
    let app = ChatApp::open_with(paths, hub.sink(), overrides).map_err(|e| match e {
        ChatError::DataInUse { .. } => anyhow!(
            "{e}. If that is the desktop app, it serves these chats itself: turn on Settings → \
             Local server there. Or give this server chats of its own with --data-dir"
        ),
        other => other.into(),
    })?;
    let server = Server::new(app.clone(), hub, Downloads::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        let listener = server::http::bind(&config).await?;
        let url = config.url();
        eprintln!("smollm3 serve: the chat at {url}/ and the OpenAI-compatible API at {url}/v1");
        app.set_server_status(chat::ServerStatus::Listening {
            url,
            key_required: config.key().is_some(),
        });
        tokio::task::spawn_blocking({
            let app = app.clone();
            move || report_model(&app)
        });
        server::http::serve(server, listener, &config, stop_signal()).await
    });
    eprintln!("smollm3 serve: stopping");
    app.shutdown();
    Ok(served?)
}

/// Says on stderr when the model is ready, or why it is not.
fn report_model(app: &ChatApp) {
    loop {
        match app.model_state() {
            ModelState::Loading { .. } | ModelState::Connecting { .. } => {
                std::thread::sleep(Duration::from_millis(100))
            }
            ModelState::Ready { .. } | ModelState::Remote { .. } => {
                eprintln!("smollm3 serve: {}", app.model_state().describe());
                return;
            }
            other => {
                eprintln!("smollm3 serve: {}", other.describe());
                return;
            }
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
