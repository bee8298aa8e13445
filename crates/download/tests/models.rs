//! The model manager's view of the models folder, and importing a file the user already has.

mod common;

use std::fs;
use std::time::Duration;

use common::{files_in, gguf_like, test_config, TestServer};
use download::{
    delete_model, discard_partial, import, scan, Catalog, Control, Downloader, Error, ImportMode,
    Outcome, Source,
};

const CATALOG: &str = r#"
[[model]]
id = "alpha"
name = "Alpha"
repo = "org/Alpha-GGUF"
file = "a.gguf"
revision = "main"
size = 5
quantization = "Q4_0"
parameters = "1B"
license = "MIT"
recommended = true
description = "test entry"
"#;

#[test]
fn scan_lists_models_and_resumable_partials_and_ignores_the_rest() {
    let srv = TestServer::start(gguf_like(2 * 1024 * 1024));
    srv.faults().throttle = Some(Duration::from_millis(1));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("models");
    let control = Control::new();
    let out = Downloader::new(test_config(&dir, &srv.endpoint()))
        .download(&Source::new("org/Tiny-GGUF", "tiny.gguf"), &control, |p| {
            if p.downloaded >= srv.len() / 4 {
                control.pause();
            }
        })
        .unwrap();
    assert!(matches!(out, Outcome::Paused { .. }));
    fs::write(dir.join("a.gguf"), b"alpha").unwrap();
    fs::write(dir.join("B.GGUF"), b"bravo!").unwrap();
    fs::write(dir.join("notes.txt"), b"not a model").unwrap();
    fs::write(dir.join("orphan.gguf.part"), b"no resume record").unwrap();
    fs::create_dir(dir.join("folder.gguf")).unwrap();

    let catalog = Catalog::from_toml(CATALOG).unwrap();
    let inv = scan(&dir, &catalog).unwrap();
    let names: Vec<_> = inv.installed.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["B.GGUF", "a.gguf"]);
    assert_eq!(inv.installed[1].catalog_id.as_deref(), Some("alpha"));
    assert_eq!(inv.installed[1].size, 5);
    assert_eq!(inv.installed[1].path, dir.join("a.gguf"));
    assert_eq!(inv.installed[0].catalog_id, None);

    assert_eq!(inv.partial.len(), 1, "{:?}", inv.partial);
    let p = &inv.partial[0];
    assert_eq!(p.name, "tiny.gguf");
    assert_eq!(p.total, Some(srv.len()));
    assert_eq!(p.downloaded, fs::metadata(&p.part_path).unwrap().len());
    let pct = p.percent().unwrap();
    assert!((25.0..100.0).contains(&pct), "{pct}");

    delete_model(&dir, "a.gguf").unwrap();
    assert!(!dir.join("a.gguf").exists());
    assert!(matches!(
        delete_model(&dir, "a.gguf"),
        Err(Error::ModelNotFound { .. })
    ));
    assert!(matches!(
        delete_model(&dir, "notes.txt"),
        Err(Error::ModelNotFound { .. })
    ));
    assert!(matches!(
        delete_model(&dir, "../a.gguf"),
        Err(Error::InvalidFileName { .. })
    ));

    discard_partial(&dir, "tiny.gguf").unwrap();
    assert_eq!(
        files_in(&dir),
        ["B.GGUF", "folder.gguf", "notes.txt", "orphan.gguf.part"]
    );
    assert!(scan(&dir, &catalog).unwrap().partial.is_empty());
}

#[test]
fn scan_of_a_missing_folder_is_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = scan(&tmp.path().join("nope"), &Catalog::builtin()).unwrap();
    assert!(inv.installed.is_empty() && inv.partial.is_empty());
}

#[test]
fn import_rejected_by_the_validator_installs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let config = test_config(&tmp.path().join("models"), "http://127.0.0.1:9");
    let src = tmp.path().join("download.gguf");
    fs::write(&src, b"this is not a GGUF file").unwrap();
    // The app passes the engine's loader; this stands in for it.
    let gguf_magic = |p: &std::path::Path| -> std::io::Result<()> {
        match fs::read(p)?.starts_with(b"GGUF") {
            true => Ok(()),
            false => Err(std::io::Error::other("not a GGUF file (bad magic)")),
        }
    };
    let err = import(&config, &src, ImportMode::Copy, gguf_magic).unwrap_err();
    assert!(err.to_string().contains("bad magic"), "{err}");
    assert!(files_in(&config.models_dir).is_empty());

    fs::write(&src, gguf_like(1000)).unwrap();
    let got = import(&config, &src, ImportMode::Copy, gguf_magic).unwrap();
    assert!(got.copied);
    assert_eq!(fs::read(&got.path).unwrap(), gguf_like(1000));
    let inv = scan(&config.models_dir, &Catalog::builtin()).unwrap();
    assert_eq!(inv.installed.len(), 1);
    assert_eq!(inv.installed[0].name, "download.gguf");
}
