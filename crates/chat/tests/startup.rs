//! Starting safely: a chat database the app cannot use is reported with its path and can be moved
//! aside for a fresh start; a data folder another app has open is refused; a model load that ended
//! the app is not repeated by itself at the next start (a child process, this test binary running
//! an ignored "child" test, is killed mid-load).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat::{ChatApp, ChatError, LoadError, MessageStatus, ModelState, SendOutcome, Settings};
use common::{final_status, paths, tokens, Recorder};

fn open(dir: &std::path::Path) -> Result<(ChatApp, Arc<Recorder>), ChatError> {
    let rec = Arc::new(Recorder::default());
    ChatApp::open(paths(dir), rec.sink()).map(|app| (app, rec))
}

#[test]
fn a_damaged_database_names_its_file_and_can_be_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths(dir.path());
    std::fs::create_dir_all(&paths.data_dir).unwrap();
    let garbage = b"this is not a SQLite database, just bytes that happen to be here".repeat(100);
    std::fs::write(paths.database(), &garbage).unwrap();
    let err = open(dir.path())
        .err()
        .expect("a damaged database is refused");
    assert_eq!(
        err.unusable_database(),
        Some(paths.database().as_path()),
        "{err}"
    );
    assert!(err.to_string().contains("chats.sqlite3"), "{err}");

    // A log beside it moves with it (SQLite may have removed an unusable one while trying).
    std::fs::write(paths.data_dir.join("chats.sqlite3-wal"), b"log").unwrap();
    let rec = Arc::new(Recorder::default());
    let app = ChatApp::open_fresh(paths.clone(), rec.sink(), Default::default())
        .expect("a fresh database");
    assert!(app.list_chats().unwrap().is_empty());
    let kept = std::fs::read_dir(&paths.data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("chats.sqlite3.broken-") && !name.ends_with("-wal")
        })
        .expect("the old database is kept");
    assert_eq!(std::fs::read(&kept).unwrap(), garbage, "kept as it was");
    let mut wal = kept.clone().into_os_string();
    wal.push("-wal");
    assert_eq!(std::fs::read(wal).unwrap(), b"log", "with its log");
    let notice = app.notices().join("\n");
    assert!(notice.contains(&kept.display().to_string()), "{notice}");
}

#[test]
fn a_database_from_a_newer_version_is_refused_and_can_be_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths(dir.path());
    drop(open(dir.path()).unwrap());
    let conn = rusqlite::Connection::open(paths.database()).unwrap();
    conn.pragma_update(None, "user_version", 9999).unwrap();
    drop(conn);
    let err = open(dir.path()).err().expect("a newer schema is refused");
    assert!(matches!(err, ChatError::NewerSchema { .. }), "{err}");
    assert_eq!(err.unusable_database(), Some(paths.database().as_path()));
    paths.move_database_aside().unwrap();
    open(dir.path()).expect("a fresh database");
}

/// A second app on the same data folder (`smollm3 serve` beside the desktop app) is refused before
/// it opens anything: its store's recovery marked the first app's live answers interrupted. The
/// first keeps answering; once it is gone, the folder opens again.
#[test]
fn a_second_app_on_one_data_folder_is_refused_and_the_first_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths(dir.path());
    let (app, rec) = open(dir.path()).unwrap();
    let chat = app.create_chat().unwrap();
    let SendOutcome::Command {
        reply_message_id: id,
        streaming: true,
        ..
    } = app.send(chat.id, "/quote").unwrap()
    else {
        panic!("/quote streams")
    };

    let err = open(dir.path()).err().expect("a second opener is refused");
    assert!(
        matches!(&err, ChatError::DataInUse { dir, pid }
            if *dir == paths.data_dir && *pid == Some(std::process::id())),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the chat data in {} is in use by another NotSo-SmolLM3 process (pid {}); quit that one first",
            paths.data_dir.display(),
            std::process::id()
        )
    );
    assert_eq!(
        err.unusable_database(),
        None,
        "a database in use is not offered to be moved aside"
    );
    let fresh = ChatApp::open_fresh(paths.clone(), rec.sink(), Default::default());
    assert!(matches!(fresh, Err(ChatError::DataInUse { .. })));
    assert!(paths.database().exists(), "and not moved aside");
    // The refused opener left the answer alone (it is streaming, or done by now).
    let status: String = rusqlite::Connection::open(paths.database())
        .unwrap()
        .query_row("SELECT status FROM messages WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_ne!(status, "interrupted");
    let events = rec.wait_done(id, Duration::from_secs(60));
    assert_eq!(final_status(&events), Some(MessageStatus::Complete));
    assert_eq!(tokens(&events), chat::quote::PASSAGE);

    drop(app);
    let (app, _rec) = open(dir.path()).expect("the folder is free once the app is gone");
    let view = app.chat(chat.id).unwrap();
    assert_eq!(view.messages.last().unwrap().content, chat::quote::PASSAGE);
}

const CHILD_ENV: &str = "CHAT_STARTUP_TEST_DIR";

/// Child: opens the app with a model whose load never ends (a FIFO with no writer), and waits to
/// be killed, as a process would that a model aborts while it loads.
#[test]
#[ignore = "run by a_load_that_ended_the_app_is_not_repeated_at_the_next_start as its child"]
fn child_app_loading_forever() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let (app, _rec) = open(std::path::Path::new(&dir)).unwrap();
    println!("CHILD opened {:?}", app.model_state());
    std::thread::sleep(Duration::from_secs(600));
}

#[cfg(unix)]
#[test]
fn a_load_that_ended_the_app_is_not_repeated_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths(dir.path());
    let fifo = dir.path().join("model.gguf");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    Settings {
        model_path: Some(fifo.clone()),
        ..Settings::default()
    }
    .save(&paths.settings_file())
    .unwrap();

    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_app_loading_forever",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let child = Killed(child);
    let opened = stdout
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("CHILD opened"))
        .expect("the child opens the app");
    assert!(opened.contains("Loading"), "{opened}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !paths.loading_marker().exists() {
        assert!(
            Instant::now() < deadline,
            "no loading marker while the model loads"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child); // SIGKILL, mid-load

    // The next start does not load the model by itself: it says why, and waits for a retry.
    let (app, _rec) = open(dir.path()).unwrap();
    let state = app.model_state();
    if matches!(state, ModelState::Loading { .. }) {
        // Unblock the load so the app can shut down before the test fails.
        drop(std::fs::OpenOptions::new().write(true).open(&fifo));
    }
    let ModelState::Failed { path, error, .. } = state else {
        panic!("loaded again by itself: {state:?}")
    };
    assert_eq!(path, fifo);
    assert!(matches!(error, LoadError::ClosedWhileLoading), "{error:?}");
    assert!(
        app.notices()
            .iter()
            .any(|n| n.contains("closed while loading")),
        "{:?}",
        app.notices()
    );
    drop(app);

    // A start that names the model itself (`--model`) loads it: here a file that fails cleanly,
    // and a load that ends, either way, clears the marker.
    std::fs::remove_file(&fifo).unwrap();
    std::fs::write(&fifo, b"not a model").unwrap();
    let rec = Arc::new(Recorder::default());
    let overrides = chat::RunOverrides {
        model_path: Some(fifo.clone()),
        ..Default::default()
    };
    let app = ChatApp::open_with(paths.clone(), rec.sink(), overrides).unwrap();
    let state = rec.wait_model(Duration::from_secs(30));
    assert!(matches!(state, ModelState::Failed { .. }), "{state:?}");
    assert!(
        !paths.loading_marker().exists(),
        "the load ended: no marker"
    );
    drop(app);
    let (app, _rec) = open(dir.path()).unwrap();
    assert!(
        !matches!(
            &app.model_state(),
            ModelState::Failed {
                error: LoadError::ClosedWhileLoading,
                ..
            }
        ),
        "{:?}",
        app.model_state()
    );
}
