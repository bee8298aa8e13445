//! One app per data folder: a second launch hands its `--model` to the running app and exits before
//! it opens anything (it used to start a second full app on the same chat database: a second model
//! load, the first's answers marked interrupted by the second's recovery).
//!
//! Both launches run under Xvfb, on a D-Bus session bus of the test's own (the single-instance
//! plugin meets the other launch there on Linux). The app's end is here too: a signal quits it
//! through the chat core's shutdown.

mod support {
    pub mod launch;
    pub mod process;
}

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::launch::{launch, log, start_session_bus, wait_for};
use support::process::{start_display, Guard, TempDir};

#[test]
fn a_second_launch_hands_its_model_to_the_first_and_exits() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .canonicalize()
        .expect("the test model: run `make model`");
    let (_xvfb, display) = start_display();
    let (_bus, bus) = start_session_bus();
    let root: PathBuf = std::env::temp_dir().join(format!("notso-single-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let _tmp = TempDir(root.clone());
    for d in ["data", "config", "models"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }

    // The first launch, without a model. Its chat database exists once its setup ran, and the
    // plugin, registered first, holds the bus name by then.
    let mut first = Guard(
        launch(&root, &display, &bus, &[], "first.log")
            .spawn()
            .expect("start the app"),
    );
    let database = root.join("data/chats.sqlite3");
    wait_for(
        "the first launch's chat database",
        Duration::from_secs(60),
        || {
            assert!(
                first.0.try_wait().unwrap().is_none(),
                "the first launch ended:\n{}",
                log(&root, "first.log")
            );
            database.exists()
        },
    );

    // The second launch names a model (relative to its own working folder), then exits by itself.
    let mut second = launch(
        &root,
        &display,
        &bus,
        &["--model", model.file_name().unwrap().to_str().unwrap()],
        "second.log",
    )
    .current_dir(model.parent().unwrap())
    .spawn()
    .expect("start the app again");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = second.kill();
            panic!(
                "the second launch kept running (a second app):\n{}",
                log(&root, "second.log")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}:\n{}", log(&root, "second.log"));

    // The first got the model: it loads it, as the user's choice (saved in its settings).
    let settings = root.join("config/settings.json");
    wait_for(
        "the first launch to take the model",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&settings).is_ok_and(|s| {
                s.contains(&serde_json::to_string(&model.display().to_string()).unwrap())
            })
        },
    );
    // Loading and the toast it shows take a moment: the first launch is still there after them.
    std::thread::sleep(Duration::from_secs(2));
    let ended = first.0.try_wait().unwrap();
    assert!(
        ended.is_none(),
        "the first launch keeps running, but it ended ({}):\n{}",
        ended.unwrap(),
        log(&root, "first.log")
    );
}

/// SIGTERM (the session ending) quits the app as Quit does: it exits by itself, successfully,
/// after the chat core's shutdown (it used to die on the spot and leave the answer being written
/// to the next start's crash recovery).
#[cfg(unix)]
#[test]
fn sigterm_quits_through_the_chat_cores_shutdown() {
    let (_xvfb, display) = start_display();
    let (_bus, bus) = start_session_bus();
    let root: PathBuf = std::env::temp_dir().join(format!("notso-sigterm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let _tmp = TempDir(root.clone());
    for d in ["data", "config", "models"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let mut app = Guard(
        launch(&root, &display, &bus, &[], "app.log")
            .spawn()
            .expect("start the app"),
    );
    wait_for("the app to be up", Duration::from_secs(60), || {
        assert!(
            app.0.try_wait().unwrap().is_none(),
            "the app ended:\n{}",
            log(&root, "app.log")
        );
        log(&root, "app.log").contains("the app is up")
    });
    let kill = Command::new("kill")
        .args(["-TERM", &app.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = app.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the app kept running after SIGTERM:\n{}",
            log(&root, "app.log")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = log(&root, "app.log");
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("SIGTERM: quitting"), "{log}");
    assert!(log.contains("the chat core is shut down"), "{log}");
}
