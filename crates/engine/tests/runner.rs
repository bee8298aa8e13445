//! The runner process (`engine::runner`) on Candle's CPU device: the pipe path the CUDA build
//! takes, tested where there is no GPU. Its logits equal the in-process backend's; a runner
//! that is missing, cannot start or dies mid-answer is an error that says why, never a hang.

mod refdata;

use std::path::{Path, PathBuf};
#[cfg(unix)]
use std::time::{Duration, Instant};

#[cfg(unix)]
use engine::runner::RunnerTimeouts;
use engine::{
    BackendKind, DeviceSpec, Engine, EngineError, EngineOptions, GenerationParams, KvType,
    Placement, SamplingParams,
};
use refdata::{reference_dir, smollm2_path};

const RUNNER: &str = env!("CARGO_BIN_EXE_smollm3-cuda-runner");

fn options(runner: Option<PathBuf>) -> EngineOptions {
    EngineOptions {
        context_len: 256,
        kv_type: KvType::F32,
        placement: Placement::new(DeviceSpec::Cpu, Some(BackendKind::Candle)).unwrap(),
        runner,
        ..EngineOptions::default()
    }
}

fn load(model: &Path, runner: Option<PathBuf>) -> engine::Result<Engine> {
    engine::threads::init(0);
    Engine::load(model, &options(runner))
}

/// The error of a load that must fail.
fn load_err(model: &Path, opts: &EngineOptions) -> EngineError {
    match Engine::load(model, opts) {
        Ok(_) => panic!("{} loaded with {opts:?}", model.display()),
        Err(e) => e,
    }
}

/// An executable shell script in `dir` (the stand-in runners are shell scripts: Unix only).
#[cfg(unix)]
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn greedy(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::for_family(engine::ModelFamily::Llama)
        },
        stop_strings: Vec::new(),
        ignore_eos: true,
        start_in_thinking: false,
        max_thinking_tokens: None,
        speculative: engine::Speculative::Off,
    }
}

#[test]
fn logits_through_the_runner_equal_the_in_process_backend() {
    let models = [
        smollm2_path(),
        reference_dir().join("tiny-smollm3-q4km.gguf"),
    ];
    for model in models {
        let mut here = load(&model, None).expect("in process");
        let mut there = load(&model, Some(RUNNER.into())).expect("in the runner");
        assert_eq!(here.info().vocab_size, there.info().vocab_size);
        assert_eq!(here.info().weight_types, there.info().weight_types);
        assert_eq!(here.cache_bytes(), there.cache_bytes());
        let tokens = here
            .encode_prompt("The runner computes what this process computes.")
            .unwrap();
        let (a, b) = (
            here.logits(&tokens).unwrap(),
            there.logits(&tokens).unwrap(),
        );
        assert_eq!(a.len(), tokens.len());
        // The same code on the same device: the same numbers, bit for bit.
        assert_eq!(a, b, "{}", model.display());
        let (a, b) = (
            here.generate(&tokens, &greedy(8), &|| false, &mut |_| {})
                .unwrap(),
            there
                .generate(&tokens, &greedy(8), &|| false, &mut |_| {})
                .unwrap(),
        );
        assert_eq!(a.ids, b.ids, "{}", model.display());
        assert!(there.info().placement.contains("cpu"));
    }
}

/// A conversation's cache kept while another runs, through the runner (`SAVE`/`RESTORE`, layer
/// by layer) with an F16 cache: switching back restores it, and the next pass computes what the
/// in-process backend computes after the same switches, bit for bit.
#[test]
fn kept_caches_go_through_the_runner_and_come_back_as_they_were() {
    let model = reference_dir().join("tiny-smollm3-q4km.gguf");
    let opts = |runner: Option<PathBuf>| EngineOptions {
        kv_type: KvType::F16,
        ..options(runner)
    };
    engine::threads::init(0);
    let mut here = Engine::load(&model, &opts(None)).expect("in process");
    let mut there = Engine::load(&model, &opts(Some(RUNNER.into()))).expect("in the runner");
    let a = here
        .encode_prompt("The first conversation, about rivers.")
        .unwrap();
    let b = here
        .encode_prompt("Another one entirely, on mountains and snow.")
        .unwrap();
    let mut rows = Vec::new();
    for engine in [&mut here, &mut there] {
        engine.set_kept_cache_budget(64 << 20);
        engine.use_cache_of("a").unwrap();
        engine.feed(&a).unwrap();
        // b has nothing kept: it goes on from a's live cache.
        engine.use_cache_of("b").unwrap();
        engine.feed(&b).unwrap();
        let b_len = engine.cached_tokens();
        assert!(engine.kept_cache_bytes() > 0, "a's cache is kept");
        assert_eq!(
            engine.use_cache_of("a").unwrap(),
            a.len(),
            "a's cache restored"
        );
        rows.push(engine.feed(&b[..3]).unwrap());
        assert_eq!(
            engine.use_cache_of("b").unwrap(),
            b_len,
            "b's cache restored"
        );
    }
    assert_eq!(
        rows[0], rows[1],
        "a's next logits after its cache came back"
    );
}

#[test]
#[cfg(unix)]
fn a_killed_runner_is_an_error_that_says_so_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // The runner, started through a script that records its process id.
    let runner = script(
        dir.path(),
        "runner",
        &format!("echo $$ > {}\nexec {RUNNER} \"$@\"", pid_file.display()),
    );
    let mut engine = load(&smollm2_path(), Some(runner)).expect("loads in the runner");
    let tokens = engine.encode_prompt("Hello there").unwrap();
    engine
        .generate(&tokens, &greedy(2), &|| false, &mut |_| {})
        .expect("the runner answers");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    let err = engine
        .generate(&tokens, &greedy(2), &|| false, &mut |_| {})
        .expect_err("the runner is gone");
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Runner(_)), "{err:?}");
    assert!(msg.contains("stopped") && msg.contains("SIGKILL"), "{msg}");
    // Every later call says the same at once.
    let again = engine.logits(&tokens).unwrap_err().to_string();
    assert_eq!(again, msg);
}

#[test]
#[cfg(unix)]
fn a_runner_that_cannot_start_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let model = smollm2_path();
    // Not installed: where it was looked for, in the same words as the device list's.
    let missing = dir.path().join("smollm3-cuda-runner");
    let err = load_err(&model, &options(Some(missing.clone()))).to_string();
    let said = engine::device::no_cuda_runner(&missing);
    assert_eq!(err, format!("device: {said}"));
    assert!(said.contains("is not installed"), "{said}");
    assert!(said.contains(&missing.display().to_string()), "{said}");
    let listed = engine::device::runner_cuda_devices(&missing);
    assert_eq!(listed[0].reason.as_deref(), Some(said.as_str()));

    // What the dynamic loader does on a machine without the NVIDIA driver.
    let no_driver = script(
        dir.path(),
        "no-driver",
        "echo 'smollm3-cuda-runner: error while loading shared libraries: libcuda.so.1: \
         cannot open shared object file: No such file or directory' >&2\nexit 127",
    );
    let err = load_err(&model, &options(Some(no_driver.clone()))).to_string();
    assert!(err.contains("exit status: 127"), "{err}");
    assert!(err.contains("no NVIDIA driver found"), "{err}");
    let listed = engine::device::runner_cuda_devices(&no_driver);
    let reason = listed[0].reason.as_deref().unwrap();
    assert!(
        !listed[0].usable && reason.contains("no NVIDIA driver found"),
        "{reason}"
    );

    // A long error (Candle's carry a backtrace when RUST_BACKTRACE is set) comes through whole:
    // ERROR, kind device, a message of 5000 bytes.
    let long = script(
        dir.path(),
        "long-error",
        r"printf '\216\023\000\000\200\000\210\023\000\000'
head -c 5000 /dev/zero | tr '\0' x
exec sleep 5",
    );
    let err = load_err(&model, &options(Some(long.clone())));
    assert!(matches!(err, EngineError::Device(_)), "{err:?}");
    assert!(err.to_string().ends_with(&"x".repeat(5000)), "{err}");

    // A program that answers outside the protocol.
    let chatty = script(dir.path(), "chatty", "echo hello; exec sleep 5");
    let err = load_err(&model, &options(Some(chatty))).to_string();
    assert!(err.contains("outside the protocol"), "{err}");

    // The native backend does not run in a runner.
    let opts = EngineOptions {
        placement: Placement::default(),
        ..options(Some(RUNNER.into()))
    };
    let err = load_err(&model, &opts).to_string();
    assert!(err.contains("candle backend only"), "{err}");
}

#[test]
fn the_runner_refuses_a_device_its_build_lacks_and_reports_its_devices() {
    // This runner is built without CUDA: it says so, through the parent.
    let opts = EngineOptions {
        placement: Placement::new(DeviceSpec::Cuda(0), None).unwrap(),
        ..options(Some(RUNNER.into()))
    };
    let err = load_err(&smollm2_path(), &opts);
    assert!(matches!(err, EngineError::Device(_)), "{err:?}");
    assert!(
        err.to_string().contains("this build has no CUDA support"),
        "{err}"
    );
    let listed = engine::device::runner_cuda_devices(Path::new(RUNNER));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].device, "cuda");
    assert_eq!(
        listed[0].reason,
        Some(format!(
            "the CUDA runner {RUNNER}: {}",
            engine::device::no_cuda_in_build()
        ))
    );
}

#[test]
#[cfg(unix)]
fn the_memory_check_refuses_what_the_runners_device_cannot_hold() {
    // A runner whose device has 1000 bytes free: the parent's one estimate against the memory
    // the runner reports, refused before the runner is asked to load anything.
    let dir = tempfile::tempdir().unwrap();
    // OPENED: frame length 22, tag 0x81, has-memory 1, 1000 bytes, place "fake GPU".
    let tiny = script(
        dir.path(),
        "tiny",
        r"printf '\026\000\000\000\201\001\350\003\000\000\000\000\000\000\010\000\000\000fake GPU'
exec sleep 5",
    );
    match load(&smollm2_path(), Some(tiny)) {
        Err(EngineError::InsufficientMemory {
            place, available, ..
        }) => assert_eq!((place.as_str(), available), ("fake GPU", 1000)),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a model loaded into 1000 bytes"),
    }
}

/// Timeouts short enough for a test, long enough for a pass of the test model on a busy CI
/// machine.
#[cfg(unix)]
fn short_timeouts(open: Duration, forward: Duration) -> RunnerTimeouts {
    RunnerTimeouts {
        open,
        load: Duration::from_secs(60),
        load_per_gb: Duration::ZERO,
        forward,
        forward_per_token: Duration::ZERO,
    }
}

#[test]
#[cfg(unix)]
fn a_runner_that_hangs_is_stopped_at_its_deadline_not_waited_for_forever() {
    let dir = tempfile::tempdir().unwrap();
    // Alive and silent from the start: the device "hangs" while opening.
    let silent = script(dir.path(), "silent", "exec sleep 60");
    let opts = EngineOptions {
        runner_timeouts: short_timeouts(Duration::from_millis(300), Duration::from_secs(60)),
        ..options(Some(silent.clone()))
    };
    let start = Instant::now();
    let err = load_err(&smollm2_path(), &opts);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(err, EngineError::Runner(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("did not open the device within 0.3 s") && msg.contains("it was stopped"),
        "{msg}"
    );

    // Hangs in the middle of a chat: the real runner, stopped (SIGSTOP) after its first answer.
    let pid_file = dir.path().join("pid");
    let runner = script(
        dir.path(),
        "runner",
        &format!("echo $$ > {}\nexec {RUNNER} \"$@\"", pid_file.display()),
    );
    let opts = EngineOptions {
        runner_timeouts: short_timeouts(Duration::from_secs(60), Duration::from_secs(5)),
        ..options(Some(runner))
    };
    let mut engine = Engine::load(&smollm2_path(), &opts).expect("loads in the runner");
    let tokens = engine.encode_prompt("Hello there").unwrap();
    engine
        .generate(&tokens, &greedy(2), &|| false, &mut |_| {})
        .expect("the runner answers");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid = pid.trim();
    let stop = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, pid])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(stop("-STOP"));
    let err = engine
        .generate(&tokens, &greedy(2), &|| false, &mut |_| {})
        .expect_err("a hung runner");
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Runner(_)), "{err:?}");
    assert!(
        msg.contains("did not answer a pass of") && msg.contains("within 5 s"),
        "{msg}"
    );
    // It was killed, not left stopped: signalling it fails once it is gone.
    assert!(!stop("-0"), "the hung runner {pid} is still there");
    assert_eq!(engine.logits(&tokens).unwrap_err().to_string(), msg);
}
