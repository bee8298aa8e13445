//! Device selection in the settings window, the model banner and `/status`: every device with
//! what it is or why it cannot be used, a GPU that fails never replaced silently, and "Use the
//! CPU" in one click. The build under test has no CUDA, which stands in for a GPU that fails.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chat::{LoadError, ModelState, Settings};
use common::{fixture, fixture_with, test_model, Fixture};
use engine::{BackendKind, DeviceSpec};

/// Why the engine says CUDA cannot be used here: this build has no CUDA, and no CUDA runner is
/// beside the test binary, so its reason names the CUDA build.
fn no_cuda() -> String {
    let list = engine::device::list_devices();
    let cuda = list
        .iter()
        .find(|d| d.device == "cuda")
        .expect("a CUDA entry");
    assert!(!cuda.usable, "{cuda:?}");
    let why = cuda.reason.clone().unwrap();
    assert!(why.contains("make build-cuda"), "{why}");
    why
}

/// Waits until the model is ready or failed.
async fn settled(f: &Fixture) -> ModelState {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f.server.chat().model_state() {
            s @ (ModelState::Ready { .. } | ModelState::Failed { .. }) => return s,
            other => assert!(Instant::now() < deadline, "{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `<label>` of one device in the settings page.
fn device_row<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("data-device=\"{id}\""))
        .unwrap_or_else(|| panic!("no device {id} in {html}"));
    let end = html[start..].find("</label>").unwrap() + start;
    &html[start..end]
}

#[tokio::test]
async fn the_settings_list_each_device_with_what_it_is_or_why_it_cannot_be_used() {
    let f = fixture();
    let (status, html) = f.htmx("GET", "/settings", "").await;
    assert_eq!(status, StatusCode::OK);
    let cpu = device_row(&html, "cpu");
    assert!(
        cpu.contains("checked") && !cpu.contains("disabled") && cpu.contains("threads"),
        "{cpu}"
    );
    assert!(
        cpu.contains("available") && cpu.contains("backends: native, candle"),
        "{cpu}"
    );
    let cuda = device_row(&html, "cuda");
    assert!(
        cuda.contains("disabled"),
        "unavailable devices are not selectable: {cuda}"
    );
    assert!(
        cuda.contains(&format!("Cannot be used: {}", no_cuda())),
        "{cuda}"
    );
    let metal = device_row(&html, "metal");
    assert!(
        metal.contains("disabled") && metal.contains("no Metal support"),
        "{metal}"
    );
    assert!(!html.contains("device-saved"), "{html}");
    // The same list, in the same words, in `/status`.
    let chat = f.new_chat().await;
    let (_, reply) = f
        .htmx("POST", &format!("/chats/{chat}/messages"), "text=%2Fstatus")
        .await;
    assert!(reply.contains("- Devices:"), "{reply}");
    assert!(
        reply.contains(&format!("cuda: cannot be used: {}", no_cuda())),
        "{reply}"
    );
    assert!(reply.contains("cpu: CPU, "), "{reply}");
}

#[tokio::test]
async fn the_devices_are_probed_once_until_the_settings_ask_again() {
    let f = fixture();
    let probes = || f.server.chat().device_probes();
    let before = probes();
    for _ in 0..3 {
        let (status, html) = f.htmx("GET", "/settings", "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("cannot be used") || html.contains("Cannot be used"));
    }
    f.server.chat().status();
    assert!(probes() <= before + 1, "{before} -> {}", probes());
    let kept = probes();
    let (_, html) = f.htmx("GET", "/settings?probe=again", "").await;
    assert!(html.contains(r#"id="probe-again""#), "{html}");
    assert_eq!(probes(), kept + 1);
    // The CUDA entry says the same after a new probe.
    assert!(
        device_row(&html, "cuda").contains(&format!("Cannot be used: {}", no_cuda())),
        "{html}"
    );
}

#[tokio::test]
async fn device_and_backend_round_trip_through_the_settings_form() {
    let f = fixture();
    let (_, saved) = f
        .htmx("POST", "/settings", "device=cpu&backend=candle")
        .await;
    assert!(saved.contains("Saved."), "{saved}");
    let s = f.server.chat().settings();
    assert_eq!(
        (s.device, s.backend),
        (DeviceSpec::Cpu, Some(BackendKind::Candle))
    );
    let (_, html) = f.htmx("GET", "/settings", "").await;
    assert!(
        html.contains(r#"<option value="candle" selected>"#),
        "{html}"
    );
    // A device this build cannot run is refused by the load, not by the form: but the native
    // backend off the CPU is no setting at all.
    let (_, bad) = f
        .htmx("POST", "/settings", "device=metal&backend=native")
        .await;
    assert!(
        bad.contains("backend") && bad.contains("runs only on the CPU"),
        "{bad}"
    );
    assert_eq!(f.server.chat().settings().device, DeviceSpec::Cpu);
    let (_, bad) = f.htmx("POST", "/settings", "device=tpu").await;
    assert!(bad.contains("Device: unknown device 'tpu'"), "{bad}");
}

#[tokio::test]
async fn a_gpu_that_fails_says_why_and_offers_the_cpu_in_one_click() {
    let f = fixture_with(Some(&Settings {
        device: DeviceSpec::Cuda(0),
        model_path: Some(test_model()),
        context_len: 2048,
        ..Settings::default()
    }));
    let state = settled(&f).await;
    let ModelState::Failed { error, .. } = &state else {
        panic!("never a silent CPU load: {state:?}")
    };
    assert!(
        matches!(error, LoadError::Engine(e) if matches!(**e, engine::EngineError::Device(_))),
        "{error:?}"
    );
    let error = error.to_string();
    assert!(error.contains("make build-cuda"), "{error}");
    let (_, banner) = f.htmx("GET", "/model/banner", "").await;
    assert!(
        banner.contains("could not be loaded on cuda:0 (candle backend)")
            && banner.contains(error.as_str()),
        "{banner}"
    );
    assert!(
        banner.contains(r#"hx-post="/model/use-cpu""#) && banner.contains("Use the CPU"),
        "{banner}"
    );
    let (_, html) = f.htmx("GET", "/settings", "").await;
    assert!(
        html.contains("The saved device, cuda:0, cannot be used here"),
        "{html}"
    );
    // The form, with no device radio checked, keeps the saved device.
    let form = format!("temperature=0.5&model_path={}", test_model().display());
    let (_, saved) = f.htmx("POST", "/settings", &form).await;
    assert!(saved.contains("Saved."), "{saved}");
    assert_eq!(f.server.chat().settings().device, DeviceSpec::Cuda(0));

    let resp = f
        .send(
            axum::http::Request::post("/model/use-cpu")
                .header("hx-request", "true")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert!(resp.status().is_success(), "{}", resp.status());
    assert!(
        resp.headers()["hx-trigger"]
            .to_str()
            .unwrap()
            .contains("model-changed"),
        "{:?}",
        resp.headers()
    );
    let state = settled(&f).await;
    let ModelState::Ready { placement, .. } = &state else {
        panic!("{state:?}")
    };
    assert_eq!(*placement, engine::Placement::default());
    let s = f.server.chat().settings();
    assert_eq!((s.device, s.backend), (DeviceSpec::Cpu, None));
    let (_, banner) = f.htmx("GET", "/model/banner", "").await;
    assert!(!banner.contains("Use the CPU"), "{banner}");
    let (_, status) = f.htmx("GET", "/model/status", "").await;
    assert!(status.contains("· CPU · "), "{status}");
    let chat = f.new_chat().await;
    let (_, reply) = f
        .htmx("POST", &format!("/chats/{chat}/messages"), "text=%2Fstatus")
        .await;
    assert!(reply.contains("- Device: cpu (native backend)"), "{reply}");
}
