//! [`TauriShell`]: what the Router asks of the desktop shell (see `server::Shell`): windows and
//! native dialogs.

use std::path::PathBuf;

use server::Server;
use tauri::AppHandle;
use tauri_plugin_dialog::DialogExt;

use crate::windows;

pub struct TauriShell {
    app: AppHandle,
    server: Server,
}

impl TauriShell {
    pub fn new(app: AppHandle, server: Server) -> Self {
        TauriShell { app, server }
    }
}

impl server::Shell for TauriShell {
    fn open_settings(&self) {
        windows::open_settings(&self.app);
    }

    fn show_chat(&self, chat_id: chat::ChatId) {
        windows::show_chat_in_main(&self.app, chat_id);
    }

    fn pick_model_file(&self) -> Option<PathBuf> {
        self.app
            .dialog()
            .file()
            .set_title("Choose a GGUF model")
            .add_filter("GGUF model", &["gguf"])
            .blocking_pick_file()
            .and_then(|p| p.into_path().ok())
    }

    fn open_url(&self, url: &str) -> Result<(), String> {
        open_in_browser(url)
    }

    /// `/export`: the Markdown is in the reply; a native save dialog offers to write it to a file too.
    fn offer_to_save(&self, file_name: String, markdown: String) {
        let (app, server) = (self.app.clone(), self.server.clone());
        std::thread::spawn(move || {
            let picked = app
                .dialog()
                .file()
                .set_title("Save the chat as Markdown")
                .set_file_name(&file_name)
                .add_filter("Markdown", &["md"])
                .blocking_save_file();
            let Some(path) = picked.and_then(|p| p.into_path().ok()) else {
                return;
            };
            match std::fs::write(&path, markdown) {
                Ok(()) => server.toast(format!("Saved {}", path.display()), false),
                Err(e) => server.toast(format!("Could not save {}: {e}", path.display()), true),
            }
        });
    }
}

/// Opens `url` with the system's handler for it (a browser, a mail program), as a separate process
/// given the URL as one argument: no shell parses it. For answers' links and for any navigation
/// that would leave the app ([`crate::windows::navigation`]).
pub fn open_in_browser(url: &str) -> Result<(), String> {
    let mut command = if cfg!(target_os = "macos") {
        std::process::Command::new("open")
    } else if cfg!(windows) {
        let mut c = std::process::Command::new("rundll32");
        c.arg("url.dll,FileProtocolHandler");
        c
    } else {
        std::process::Command::new("xdg-open")
    };
    let mut child = command
        .arg(url)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("could not open {url} in the browser: {e}"))?;
    // Reaped in the background: xdg-open may wait for the browser it starts.
    std::thread::spawn(move || child.wait());
    Ok(())
}
