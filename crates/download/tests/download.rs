//! The downloader against a real HTTP server on 127.0.0.1 (see `common`): whole downloads, resumes after
//! drops, pauses and restarts, servers that ignore Range, bad checksums, HTTP errors, cancellation.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{files_in, gguf_like, test_config, LinkedEtag, Recorder, TestServer};
use download::{Control, Downloader, Error, Outcome, Source, State, Verification};

const LEN: usize = 4 * 1024 * 1024;
const REPO: &str = "test-org/Tiny-GGUF";
const FILE: &str = "tiny.gguf";

fn server() -> TestServer {
    TestServer::start(gguf_like(LEN))
}

fn source() -> Source {
    Source::new(REPO, FILE)
}

fn installed(outcome: Outcome) -> download::Installed {
    match outcome {
        Outcome::Installed(i) => i,
        other => panic!("expected an installed model, got {other:?}"),
    }
}

/// Stops the download (pause or cancel) once it passes `fraction` of the file.
fn stop_at(control: &Control, fraction: f64, cancel: bool) -> impl FnMut(&download::Progress) + '_ {
    move |p| {
        if p.downloaded as f64 >= LEN as f64 * fraction {
            if cancel {
                control.cancel()
            } else {
                control.pause()
            }
        }
    }
}

fn assert_under_1_1x(srv: &TestServer) {
    let served = srv.bytes_served();
    assert!(
        (served as f64) < 1.1 * srv.len() as f64,
        "served {served} bytes for a {} byte file",
        srv.len()
    );
}

fn assert_nothing_installed(dir: &Path) {
    assert!(
        files_in(dir).is_empty(),
        "expected an empty models folder, found {:?}",
        files_in(dir)
    );
}

#[test]
fn complete_download_is_verified_against_the_hub_checksum() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let mut rec = Recorder::default();
    let got = installed(
        d.download(&source(), &Control::new(), |p| rec.0.push(*p))
            .unwrap(),
    );

    assert_eq!(got.verification, Verification::Hub);
    assert_eq!(got.sha256, srv.sha256());
    assert_eq!(got.size, srv.len());
    assert_eq!(got.path, dir.path().join(FILE));
    assert_eq!(fs::read(&got.path).unwrap(), srv.data());
    assert_eq!(
        files_in(dir.path()),
        [FILE],
        "no .part or .part.json may remain"
    );
    assert_eq!(srv.bytes_served(), srv.len());

    assert_eq!(
        rec.states(),
        [
            State::Connecting,
            State::Downloading,
            State::Verifying,
            State::Done
        ]
    );
    let last = rec.0.last().unwrap();
    assert_eq!(
        (last.downloaded, last.total, last.percent),
        (srv.len(), Some(srv.len()), Some(100.0))
    );
    assert!(rec.0.windows(2).all(|w| w[0].downloaded <= w[1].downloaded));
}

#[test]
fn pinned_checksum_is_used_and_a_second_pull_is_a_no_op() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    srv.faults().linked_etag = LinkedEtag::Absent;
    let src = source().with_sha256(srv.sha256()).unwrap();
    let got = installed(d.download(&src, &Control::new(), |_| {}).unwrap());
    assert_eq!(got.verification, Verification::Pinned);

    let requests = srv.seen().len();
    let again = d.download(&src, &Control::new(), |_| {}).unwrap();
    assert_eq!(again, Outcome::AlreadyInstalled(got.path));
    assert_eq!(srv.seen().len(), requests, "nothing is fetched twice");
}

#[test]
fn without_any_checksum_the_file_is_installed_as_unverified() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().linked_etag = LinkedEtag::Absent;
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let got = installed(d.download(&source(), &Control::new(), |_| {}).unwrap());
    assert_eq!(got.verification, Verification::Unverified);
    assert_eq!(got.sha256, srv.sha256(), "the computed hash is reported");
}

#[test]
fn a_checksum_named_by_a_later_hop_is_not_believed() {
    // The hub names none; the CDN names a (wrong) one. Only the endpoint's origin is trusted, so the
    // file is installed unverified rather than checked against, or rejected by, the CDN's word.
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().linked_etag = LinkedEtag::Absent;
    srv.faults().cdn_linked_etag = Some(LinkedEtag::Wrong);
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let got = installed(d.download(&source(), &Control::new(), |_| {}).unwrap());
    assert_eq!(got.verification, Verification::Unverified);
    assert_eq!(fs::read(&got.path).unwrap(), srv.data());

    // Nor does a later hop's checksum override the hub's.
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().cdn_linked_etag = Some(LinkedEtag::Wrong);
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let got = installed(d.download(&source(), &Control::new(), |_| {}).unwrap());
    assert_eq!(got.verification, Verification::Hub);
}

#[test]
fn a_redirect_within_the_hub_keeps_its_checksum_and_token() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().moved_on_hub = true;
    srv.faults().linked_etag = LinkedEtag::Wrong;
    srv.faults().require_token = Some("hf_secret".into());
    let config = test_config(dir.path(), &srv.endpoint()).with_token(Some("hf_secret".into()));
    let err = Downloader::new(config)
        .download(&source(), &Control::new(), |_| {})
        .unwrap_err();
    assert!(
        matches!(err, Error::ChecksumMismatch { .. }),
        "the hub's second hop names the checksum, which must be checked: {err}"
    );
    let seen = srv.seen();
    assert_eq!(seen[0].status, 307);
    assert!(seen[1].path.starts_with("/moved/"), "{seen:?}");
    assert_eq!(seen[1].authorization.as_deref(), Some("Bearer hf_secret"));
}

#[test]
fn token_goes_to_the_hub_but_not_to_the_cdn() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().require_token = Some("hf_secret".into());
    let config = test_config(dir.path(), &srv.endpoint()).with_token(Some("hf_secret".into()));
    installed(
        Downloader::new(config)
            .download(&source(), &Control::new(), |_| {})
            .unwrap(),
    );

    let seen = srv.seen();
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer hf_secret"));
    let blobs = srv.blob_requests();
    assert!(!blobs.is_empty());
    assert!(blobs.iter().all(|s| s.authorization.is_none()), "{blobs:?}");
}

#[test]
fn connection_dropped_at_30_percent_resumes_with_range() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().drop_at = Some(srv.len() * 3 / 10);
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let mut rec = Recorder::default();
    let got = installed(
        d.download(&source(), &Control::new(), |p| rec.0.push(*p))
            .unwrap(),
    );

    assert_eq!(fs::read(&got.path).unwrap(), srv.data());
    assert_under_1_1x(&srv);
    let blobs = srv.blob_requests();
    assert_eq!(blobs.len(), 2, "{blobs:?}");
    assert_eq!(
        blobs[1].range,
        Some(format!("bytes={}-", srv.len() * 3 / 10))
    );
    assert_eq!(blobs[1].status, 206);
    assert!(
        blobs[1].if_range.is_some(),
        "resumes are guarded by If-Range"
    );
    assert!(rec.states().contains(&State::Retrying));
}

#[test]
fn restart_mid_download_resumes_from_the_part_file_and_its_record() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().throttle = Some(Duration::from_millis(1));
    {
        // The first "run of the app": paused at 40%, then the downloader is dropped.
        let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
        let control = Control::new();
        let out = d
            .download(&source(), &control, stop_at(&control, 0.4, false))
            .unwrap();
        assert!(matches!(out, Outcome::Paused { .. }), "{out:?}");
    }
    assert_eq!(
        files_in(dir.path()),
        ["tiny.gguf.part", "tiny.gguf.part.json"]
    );
    let kept = fs::metadata(dir.path().join("tiny.gguf.part"))
        .unwrap()
        .len();
    assert!(
        kept >= srv.len() * 4 / 10 && kept < srv.len(),
        "kept {kept}"
    );

    // A fresh downloader, as after restarting the app.
    srv.faults().throttle = None;
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let got = installed(d.download(&source(), &Control::new(), |_| {}).unwrap());
    assert_eq!(fs::read(&got.path).unwrap(), srv.data());
    assert_under_1_1x(&srv);
    let last = srv.blob_requests().pop().unwrap();
    assert_eq!(last.range, Some(format!("bytes={kept}-")));
    assert_eq!(files_in(dir.path()), [FILE]);
}

#[test]
fn a_complete_part_left_before_the_rename_is_installed_without_refetching() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let control = Control::new();
    // Paused after the last byte: the state a crash between download and rename leaves.
    let out = d
        .download(&source(), &control, stop_at(&control, 1.0, false))
        .unwrap();
    assert_eq!(
        out,
        Outcome::Paused {
            downloaded: srv.len(),
            total: Some(srv.len())
        }
    );
    let requests = srv.seen().len();

    let got = installed(d.download(&source(), &Control::new(), |_| {}).unwrap());
    assert_eq!(got.verification, Verification::Hub);
    assert_eq!(fs::read(&got.path).unwrap(), srv.data());
    assert_eq!(
        srv.seen().len(),
        requests,
        "no request for a file already complete"
    );
}

#[test]
fn a_download_that_failed_outright_resumes_in_a_later_run() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().drop_at = Some(srv.len() / 2);
    let mut config = test_config(dir.path(), &srv.endpoint());
    config.max_retries = 0;
    let err = Downloader::new(config)
        .download(&source(), &Control::new(), |_| {})
        .unwrap_err();
    assert!(matches!(err, Error::Network { .. }), "{err}");
    assert_eq!(
        fs::metadata(dir.path().join("tiny.gguf.part"))
            .unwrap()
            .len(),
        srv.len() / 2
    );

    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let got = installed(d.download(&source(), &Control::new(), |_| {}).unwrap());
    assert_eq!(fs::read(&got.path).unwrap(), srv.data());
    assert_under_1_1x(&srv);
}

#[test]
fn server_ignoring_range_restarts_cleanly() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    {
        let mut f = srv.faults();
        f.drop_at = Some(srv.len() * 3 / 10);
        f.ignore_range = true;
    }
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let got = installed(d.download(&source(), &Control::new(), |_| {}).unwrap());

    assert_eq!(fs::read(&got.path).unwrap(), srv.data());
    assert_eq!(got.sha256, srv.sha256());
    let blobs = srv.blob_requests();
    assert_eq!(blobs.len(), 2);
    assert!(blobs[1].range.is_some(), "the client asked for the rest");
    assert_eq!(blobs[1].status, 200, "and got the whole file");
    assert_eq!(files_in(dir.path()), [FILE]);
}

#[test]
fn wrong_pinned_sha256_is_rejected_and_the_partial_removed() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let src = source().with_sha256(&"ab".repeat(32)).unwrap();
    let err = d.download(&src, &Control::new(), |_| {}).unwrap_err();
    match &err {
        Error::ChecksumMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &"ab".repeat(32));
            assert_eq!(actual, srv.sha256());
        }
        other => panic!("expected a checksum mismatch, got {other}"),
    }
    assert_nothing_installed(dir.path());
}

#[test]
fn wrong_hub_checksum_is_rejected_and_the_partial_removed() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().linked_etag = LinkedEtag::Wrong;
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let err = d.download(&source(), &Control::new(), |_| {}).unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert_nothing_installed(dir.path());
}

#[test]
fn http_errors_map_to_their_variants_without_retrying() {
    for status in [404u16, 403, 401] {
        let srv = server();
        let dir = tempfile::tempdir().unwrap();
        srv.faults().resolve_status = Some(status);
        let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
        let err = d.download(&source(), &Control::new(), |_| {}).unwrap_err();
        let ok = match status {
            404 => matches!(err, Error::NotFound { .. }),
            403 => matches!(err, Error::Forbidden { .. }),
            _ => matches!(err, Error::Unauthorized { .. }),
        };
        assert!(ok, "HTTP {status} gave: {err}");
        assert_eq!(srv.seen().len(), 1, "HTTP {status} must not be retried");
        assert_nothing_installed(dir.path());
    }
}

#[test]
fn gated_repository_message_tells_the_user_what_to_do() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().resolve_status = Some(403);
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let msg = d
        .download(&source(), &Control::new(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("licence") && msg.contains("HF_TOKEN"), "{msg}");
}

#[test]
fn server_errors_are_retried_then_reported() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().fail_first = 2;
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    installed(d.download(&source(), &Control::new(), |_| {}).unwrap());
    let statuses: Vec<u16> = srv.seen().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [500, 500, 302, 200]);

    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().resolve_status = Some(503);
    let mut config = test_config(dir.path(), &srv.endpoint());
    config.max_retries = 2;
    let err = Downloader::new(config)
        .download(&source(), &Control::new(), |_| {})
        .unwrap_err();
    assert!(matches!(err, Error::Server { status: 503, .. }), "{err}");
    assert_eq!(srv.seen().len(), 3, "one attempt and two retries");
}

#[test]
fn pause_then_resume_in_the_same_run() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().throttle = Some(Duration::from_millis(1));
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let control = Control::new();
    let mut rec = Recorder::default();
    let out = d
        .download(&source(), &control, |p| {
            rec.0.push(*p);
            if p.downloaded >= srv.len() * 3 / 10 {
                control.pause();
            }
        })
        .unwrap();
    let Outcome::Paused { downloaded, total } = out else {
        panic!("expected a pause, got {out:?}")
    };
    assert_eq!(total, Some(srv.len()));
    assert!(downloaded >= srv.len() * 3 / 10 && downloaded < srv.len());
    assert_eq!(rec.0.last().unwrap().state, State::Paused);

    control.resume();
    let got = installed(d.download(&source(), &control, |_| {}).unwrap());
    assert_eq!(fs::read(&got.path).unwrap(), srv.data());
    assert_under_1_1x(&srv);
}

#[test]
fn cancel_deletes_the_partial_download() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().throttle = Some(Duration::from_millis(1));
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let control = Control::new();
    let out = d
        .download(&source(), &control, stop_at(&control, 0.3, true))
        .unwrap();
    assert_eq!(out, Outcome::Cancelled);
    assert_nothing_installed(dir.path());
}

#[test]
fn cancel_from_another_thread_stops_a_running_download() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().throttle = Some(Duration::from_millis(5));
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let control = Control::new();
    let ui = control.clone();
    let worker = std::thread::spawn(move || d.download(&source(), &control, |_| {}));
    std::thread::sleep(Duration::from_millis(100));
    ui.cancel();
    assert_eq!(worker.join().unwrap().unwrap(), Outcome::Cancelled);
    assert_nothing_installed(dir.path());
}

#[test]
fn a_partial_file_from_another_revision_is_discarded_not_stitched() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().throttle = Some(Duration::from_millis(1));
    let d = Downloader::new(test_config(dir.path(), &srv.endpoint()));
    let control = Control::new();
    let other = source().with_revision("v2");
    let out = d
        .download(&other, &control, stop_at(&control, 0.3, false))
        .unwrap();
    assert!(matches!(out, Outcome::Paused { .. }));
    // Make the stale bytes wrong, so stitching onto them would fail the checksum.
    fs::write(dir.path().join("tiny.gguf.part"), vec![0u8; 1000]).unwrap();

    srv.faults().throttle = None;
    let got = installed(d.download(&source(), &Control::new(), |_| {}).unwrap());
    assert_eq!(fs::read(&got.path).unwrap(), srv.data());
    assert_eq!(srv.blob_requests().last().unwrap().range, None);
}

#[test]
fn free_space_is_checked_before_connecting() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &srv.endpoint());
    config.free_space_reserve = u64::MAX / 4;
    let d = Downloader::new(config);

    let mut known = source();
    known.size = Some(srv.len());
    let err = d.download(&known, &Control::new(), |_| {}).unwrap_err();
    assert!(matches!(err, Error::InsufficientSpace { .. }), "{err}");
    assert!(
        srv.seen().is_empty(),
        "no request when the size is known beforehand"
    );

    // Size unknown until the server answers: still nothing is written.
    let err = d.download(&source(), &Control::new(), |_| {}).unwrap_err();
    assert!(matches!(err, Error::InsufficientSpace { .. }), "{err}");
    assert!(err.to_string().contains("Free some space"), "{err}");
    assert_nothing_installed(dir.path());
}

#[test]
fn connection_refused_is_reported_as_offline() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = test_config(dir.path(), &format!("http://127.0.0.1:{port}"));
    config.max_retries = 1;
    let mut rec = Recorder::default();
    let err = Downloader::new(config)
        .download(&source(), &Control::new(), |p| rec.0.push(*p))
        .unwrap_err();
    assert!(matches!(err, Error::Offline { .. }), "{err}");
    assert!(
        rec.states().contains(&State::Retrying),
        "offline is retried first"
    );
}

#[test]
fn a_stalled_connection_times_out() {
    let srv = server();
    let dir = tempfile::tempdir().unwrap();
    srv.faults().stall = Some(Duration::from_secs(2));
    let mut config = test_config(dir.path(), &srv.endpoint());
    config.read_timeout = Duration::from_millis(200);
    config.max_retries = 0;
    let err = Downloader::new(config)
        .download(&source(), &Control::new(), |_| {})
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}
