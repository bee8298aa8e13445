//! Full disks, for real: each test mounts a tiny tmpfs (Linux, root; CI runs as root) as the models
//! folder, and another "program" fills it while the download runs.

#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{files_in, gguf_like, test_config, Recorder, TestServer};
use download::{Control, Downloader, Error, Outcome, Source, State};

const MIB: usize = 1024 * 1024;

/// A tmpfs of a fixed size, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (the test is skipped, and says so) only when not running as root.
    fn mount(size_mib: usize) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        if out.status.success() {
            return Some(Tmpfs { dir });
        }
        assert!(
            !is_root(),
            "running as root but `mount -t tmpfs` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            Some(line.split_whitespace().nth(2) == Some("0")) // effective uid
        })
        .unwrap_or(false)
}

fn source() -> Source {
    Source::new("test-org/Tiny-GGUF", "tiny.gguf")
}

/// Writes `bytes` into `filler` once the download has passed `after` bytes: another program using
/// the disk.
fn fill_after(filler: &Path, after: u64, bytes: usize) -> impl FnMut(&download::Progress) + '_ {
    let mut done = false;
    move |p| {
        if !done && p.downloaded >= after {
            done = true;
            fs::write(filler, vec![1u8; bytes]).expect("write the filler");
        }
    }
}

/// Waits (up to 10 s) until `dir` has `bytes` free. Deleting a file does not always free its
/// blocks at once: in about 1 run in 8 of this binary, with its tests in parallel (starting
/// `mount` and `umount` processes meanwhile), the tmpfs still reported 0 bytes free right after
/// the filler's deletion, and the space a moment later; never with one test at a time. A user
/// frees space and then retries; so does the test.
fn wait_for_free_space(dir: &Path, bytes: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while download::available_space(dir).unwrap() < bytes {
        assert!(
            std::time::Instant::now() < deadline,
            "{bytes} bytes never came free in {}",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The partial file holds a correct prefix of the real file: nothing corrupt was left.
fn assert_part_is_a_prefix(part: &Path, data: &[u8]) -> u64 {
    let kept = fs::read(part).expect("the partial file is kept for a resume");
    assert!(
        !kept.is_empty() && kept.len() < data.len(),
        "kept {} bytes",
        kept.len()
    );
    assert!(
        kept == data[..kept.len()],
        "the partial file is not a prefix of the file"
    );
    kept.len() as u64
}

fn models_dir(fs: &Tmpfs) -> PathBuf {
    fs.path().join("models")
}

#[test]
fn disk_full_is_reported_and_nothing_corrupt_is_installed() {
    let Some(tmpfs) = Tmpfs::mount(4) else { return };
    let srv = TestServer::start(gguf_like(3 * MIB));
    let dir = models_dir(&tmpfs);
    let filler = tmpfs.path().join("other-program.bin");
    // No reserve: the only thing that stops the download is the real ENOSPC.
    let d = Downloader::new(test_config(&dir, &srv.endpoint()));
    let err = d
        .download(
            &source(),
            &Control::new(),
            fill_after(&filler, MIB as u64 / 2, 5 * MIB / 2),
        )
        .unwrap_err();

    assert!(matches!(err, Error::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("free some"), "{err}");
    assert!(!dir.join("tiny.gguf").exists(), "nothing may be installed");
    assert_part_is_a_prefix(&dir.join("tiny.gguf.part"), srv.data());

    // The user frees space; the next attempt resumes and finishes.
    fs::remove_file(&filler).unwrap();
    wait_for_free_space(
        &dir,
        (3 * MIB) as u64 - fs::metadata(dir.join("tiny.gguf.part")).unwrap().len(),
    );
    let out = Downloader::new(test_config(&dir, &srv.endpoint()))
        .download(&source(), &Control::new(), |_| {})
        .unwrap();
    let Outcome::Installed(got) = out else {
        panic!("{out:?}")
    };
    assert_eq!(fs::read(&got.path).unwrap(), srv.data());
    assert_eq!(files_in(&dir), ["tiny.gguf"]);
}

#[test]
fn falling_under_the_reserve_pauses_with_low_disk_space() {
    let Some(tmpfs) = Tmpfs::mount(8) else { return };
    let srv = TestServer::start(gguf_like(4 * MIB));
    let dir = models_dir(&tmpfs);
    let filler = tmpfs.path().join("other-program.bin");
    let mut config = test_config(&dir, &srv.endpoint());
    config.free_space_reserve = 3 * MIB as u64;
    let mut rec = Recorder::default();
    let mut fill = fill_after(&filler, MIB as u64 / 2, 3 * MIB);
    let err = Downloader::new(config.clone())
        .download(&source(), &Control::new(), |p| {
            rec.0.push(*p);
            fill(p);
        })
        .unwrap_err();

    match &err {
        Error::LowDiskSpace {
            available, reserve, ..
        } => assert!(available < reserve),
        other => panic!("expected LowDiskSpace, got {other}"),
    }
    assert_eq!(rec.0.last().unwrap().state, State::Paused);
    assert!(!dir.join("tiny.gguf").exists());
    let kept = assert_part_is_a_prefix(&dir.join("tiny.gguf.part"), srv.data());
    assert!(dir.join("tiny.gguf.part.json").exists());

    fs::remove_file(&filler).unwrap();
    let out = Downloader::new(config)
        .download(&source(), &Control::new(), |_| {})
        .unwrap();
    assert!(matches!(out, Outcome::Installed(_)), "{out:?}");
    assert_eq!(fs::read(dir.join("tiny.gguf")).unwrap(), srv.data());
    let resumed_from = srv.blob_requests().last().unwrap().range.clone();
    assert_eq!(resumed_from, Some(format!("bytes={kept}-")));
}

#[test]
fn a_file_larger_than_the_free_space_is_refused_before_writing() {
    let Some(tmpfs) = Tmpfs::mount(1) else { return };
    let srv = TestServer::start(gguf_like(4 * MIB));
    let dir = models_dir(&tmpfs);
    let err = Downloader::new(test_config(&dir, &srv.endpoint()))
        .download(&source(), &Control::new(), |_| {})
        .unwrap_err();
    match &err {
        Error::InsufficientSpace {
            needed, available, ..
        } => {
            assert_eq!(*needed, 4 * MIB as u64);
            assert!(*available <= MIB as u64);
        }
        other => panic!("expected InsufficientSpace, got {other}"),
    }
    assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
}
