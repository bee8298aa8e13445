//! Starting and stopping the app: the chat core and server come up in Tauri's setup; a chat database
//! the app cannot use is explained in a native dialog that offers a fresh start or quitting (it used
//! to panic in setup with nothing shown); quitting shuts the chat core down ([`on_exit`]).

use std::path::Path;

use server::Server;
use tauri::{AppHandle, Manager};
use tauri_plugin_dialog::{DialogExt, MessageDialogButtons, MessageDialogKind};

use crate::bridge::{self, Database};
use crate::{windows, Args};

pub const FRESH_START: &str = "Back up and start fresh";
pub const QUIT: &str = "Quit";

/// Brings the app up. When the chat database cannot be used, a dialog asks what to do; any other
/// failure is shown in a dialog before the app quits (a panic in setup showed nothing).
pub fn start(handle: &AppHandle, args: Args) {
    match bridge::start(handle, &args, Database::Existing) {
        Ok(server) => serve(handle, server),
        Err(e) => match e.unusable_database() {
            Some(path) => {
                tracing::error!(error = %e, "the chat database cannot be used");
                ask_about_database(handle.clone(), args, database_problem(path, &e.to_string()));
            }
            None => cannot_start(handle, &e),
        },
    }
}

fn cannot_start(handle: &AppHandle, e: &chat::ChatError) {
    tracing::error!(error = %e, "the app cannot start");
    let quit = handle.clone();
    handle
        .dialog()
        .message(format!("The app cannot start:\n\n{e}"))
        .title("NotSo-SmolLM3 Bot cannot start")
        .kind(MessageDialogKind::Error)
        .buttons(MessageDialogButtons::OkCustom(QUIT.into()))
        .show(move |_| quit.exit(1));
}

/// The dialog's text: what happened, where the file is, what each button does.
pub fn database_problem(path: &Path, error: &str) -> String {
    format!(
        "The chat database cannot be used:\n\n{error}\n\nThe file is {}.\n\n\
         “{FRESH_START}” keeps that file (renamed, next to it) and starts with no chats; \
         “{QUIT}” leaves everything as it is.",
        path.display()
    )
}

/// The native dialog runs on the main thread once setup has returned; its answer arrives on another.
fn ask_about_database(handle: AppHandle, args: Args, text: String) {
    let dialog = handle
        .dialog()
        .message(text)
        .title("NotSo-SmolLM3 Bot cannot open its chats")
        .kind(MessageDialogKind::Error)
        .buttons(MessageDialogButtons::OkCancelCustom(
            FRESH_START.into(),
            QUIT.into(),
        ));
    dialog.show(move |fresh| {
        if !fresh {
            handle.exit(0);
            return;
        }
        match bridge::start(&handle, &args, Database::Fresh) {
            Ok(server) => serve(&handle, server),
            Err(e) => cannot_start(&handle, &e),
        }
    });
}

/// The server answers the windows from now on: the pages, the shortcut, the tray.
fn serve(handle: &AppHandle, server: Server) {
    bridge::apply_shortcut(handle, &server);
    handle.manage(server.router());
    handle.manage(server);
    windows::open_main(handle);
    if let Err(e) = windows::build_tray(handle) {
        tracing::warn!(error = %e, "no tray icon (is a StatusNotifier host running?)");
    }
}

/// The app is quitting (Quit in the tray, the last window closed): the chat core stops its answers
/// (kept as interrupted) and its threads, so nothing relies on crash recovery.
pub fn on_exit(handle: &AppHandle) {
    if let Some(server) = handle.try_state::<Server>() {
        server.chat().shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_dialog_says_what_happened_where_and_what_each_choice_does() {
        let text = database_problem(
            Path::new("/home/u/.local/share/notso-smollm3/chats.sqlite3"),
            "file is not a database",
        );
        assert!(text.contains("file is not a database"), "{text}");
        assert!(
            text.contains("/home/u/.local/share/notso-smollm3/chats.sqlite3"),
            "{text}"
        );
        assert!(text.contains(FRESH_START) && text.contains(QUIT), "{text}");
    }
}
