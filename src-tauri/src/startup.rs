//! Starting and stopping the app: the chat core and server come up in Tauri's setup; a chat database
//! the app cannot use is explained in a native dialog that offers a fresh start or quitting (it used
//! to panic in setup with nothing shown); a second launch hands its arguments to the first
//! ([`second_launch`]); quitting shuts the chat core down ([`on_exit`]), also when the system asks
//! the app to end (SIGTERM at logout or shutdown, SIGINT: [`quit_on_signal`]).

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::CommandFactory;
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
    quit_on_signal(handle);
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
    tracing::info!("the app is up");
}

/// Another launch of the app (same data folder) handed over its command line: show the main window,
/// and load the model it names. Runs in the first instance.
pub fn second_launch(handle: &AppHandle, argv: Vec<String>, cwd: String) {
    windows::open_main(handle);
    let Some(model) = model_argument(&argv) else {
        return;
    };
    let Some(server) = handle.try_state::<Server>() else {
        tracing::warn!(model = %model.display(), "a second launch named a model before this app had started; not loaded");
        return;
    };
    let model = Path::new(&cwd).join(model);
    tracing::info!(model = %model.display(), "a second launch asks for a model");
    match server.chat().load_model(model.clone()) {
        Ok(()) => server.toast(
            format!("Loading {} (from a second launch)", model.display()),
            false,
        ),
        Err(e) => server.toast(format!("Could not load {}: {e}", model.display()), true),
    }
}

/// The `--model` on a second launch's command line. Only the command line counts: clap would fill
/// the field from this process's own `SMOLLM3_MODEL` (`make run` sets it), and a second launch
/// without `--model` would reload the model in use.
fn model_argument(argv: &[String]) -> Option<PathBuf> {
    let matches = match Args::command().try_get_matches_from(argv) {
        Ok(matches) => matches,
        Err(e) => {
            tracing::warn!(error = %e, ?argv, "a second launch's arguments do not parse");
            return None;
        }
    };
    (matches.value_source("model") == Some(ValueSource::CommandLine))
        .then(|| matches.get_one::<PathBuf>("model").cloned())
        .flatten()
}

/// The D-Bus name (Linux) that makes launches on one data folder one app: another data folder (a
/// test, a second profile) is another app.
pub fn instance_id(identifier: &str, args: &Args) -> String {
    let folder = bridge::paths(args)
        .map(|p| p.data_dir.display().to_string())
        .unwrap_or_default();
    // FNV-1a: stable across builds and platforms, and D-Bus names allow only [A-Za-z0-9_-].
    let hash = folder.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{identifier}.i{hash:016x}")
}

/// The app is quitting (Quit in the tray, the last window closed, a signal): the chat core stops
/// its answers (kept as interrupted) and its threads, so nothing relies on crash recovery.
pub fn on_exit(handle: &AppHandle) {
    if let Some(server) = handle.try_state::<Server>() {
        server.chat().shutdown();
        tracing::info!("the chat core is shut down");
    }
}

/// SIGTERM (the session ending, `kill`) and SIGINT (Ctrl+C in a terminal) quit the app as Quit in
/// the tray does, through [`on_exit`]; by default they ended the process on the spot, and the
/// answer being written was left to the next start's crash recovery.
#[cfg(unix)]
fn quit_on_signal(handle: &AppHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    // Registered before setup goes on, so a signal from now on is ours.
    let signals = tauri::async_runtime::block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    });
    let (mut term, mut int) = match signals {
        Ok(signals) => signals,
        Err(e) => {
            tracing::warn!(error = %e, "SIGTERM and SIGINT will end the app without its shutdown");
            return;
        }
    };
    let handle = handle.clone();
    tauri::async_runtime::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name}: quitting");
        handle.exit(0);
    });
}

#[cfg(not(unix))]
fn quit_on_signal(_handle: &AppHandle) {}

#[cfg(test)]
mod tests {
    use clap::Parser;

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

    #[test]
    fn one_data_folder_is_one_instance() {
        let args = |dir: &str| Args::parse_from(["app", "--data-dir", dir]);
        let id = |dir| instance_id("org.example.app", &args(dir));
        assert_eq!(id("/a"), id("/a"));
        assert_ne!(id("/a"), id("/b"));
        assert!(id("/a").starts_with("org.example.app."));
        assert!(id("/a")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_'));
    }

    #[test]
    fn a_second_launch_passes_on_only_the_model_on_its_command_line() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            model_argument(&argv(&["app", "--model", "m.gguf"])),
            Some(PathBuf::from("m.gguf"))
        );
        // `make run` starts the first instance with SMOLLM3_MODEL set: a plain second launch (the
        // desktop icon) must not reload that model.
        std::env::set_var("SMOLLM3_MODEL", "/from/the/environment.gguf");
        assert_eq!(model_argument(&argv(&["app"])), None);
        assert_eq!(model_argument(&argv(&["app", "--no-such-flag"])), None);
    }
}
