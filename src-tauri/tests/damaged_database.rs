//! A chat database the app cannot open, with the real binary: it used to panic in Tauri's setup
//! (exit 101) with nothing shown. Now it stays up with a native dialog that says what happened and
//! where the file is, and leaves the file alone until the user chooses. The screen with the dialog
//! is saved as `target/e2e/damaged-database.png`.

mod support {
    pub mod launch;
    pub mod process;
}

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::launch::{launch, log, start_session_bus, wait_for};
use support::process::{require, start_display, Guard, TempDir};

/// The dialog's window title (`startup::ask_about_database`).
const DIALOG_TITLE: &str = "NotSo-SmolLM3 Bot cannot open its chats";

/// The names of the windows on `display`, as `xwininfo -tree` lists them.
fn window_tree(display: &str) -> String {
    let out = Command::new("xwininfo")
        .args(["-root", "-tree", "-display", display])
        .stderr(Stdio::null())
        .output()
        .expect("run xwininfo");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn a_damaged_database_shows_a_dialog_instead_of_a_panic() {
    require("xwininfo");
    require("import");
    let (_xvfb, display) = start_display();
    let (_bus, bus) = start_session_bus();
    let root: PathBuf = std::env::temp_dir().join(format!("notso-damaged-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let _tmp = TempDir(root.clone());
    for d in ["data", "config", "models"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let database = root.join("data/chats.sqlite3");
    let garbage = b"these bytes are not an SQLite database. ".repeat(200);
    std::fs::write(&database, &garbage).unwrap();

    let mut app = Guard(
        launch(&root, &display, &bus, &[], "app.log")
            .spawn()
            .expect("start the app"),
    );
    let mut alive = || {
        if let Some(status) = app.0.try_wait().unwrap() {
            panic!("the app ended ({status}):\n{}", log(&root, "app.log"));
        }
    };
    wait_for("the dialog", Duration::from_secs(60), || {
        alive();
        window_tree(&display).contains(DIALOG_TITLE)
    });
    // It stays up with the dialog: no panic a moment later either.
    std::thread::sleep(Duration::from_millis(500));
    alive();

    let log = log(&root, "app.log");
    assert!(
        log.contains("the chat database cannot be used") && log.contains("not a database"),
        "the log does not name the database problem:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    // Nothing is moved or replaced before the user chooses.
    assert_eq!(std::fs::read(&database).unwrap(), garbage);

    let dir = workspace_root().join("target/e2e");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("damaged-database.png");
    let status = Command::new("import")
        .args(["-display", &display, "-window", "root"])
        .arg(&shot)
        .status()
        .expect("run import");
    assert!(status.success(), "import failed: {status}");
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 0));
}
