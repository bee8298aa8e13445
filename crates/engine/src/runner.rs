//! The runner: a [`Backend`] in another process, spoken to over its stdin and stdout.
//!
//! Candle's `cuda` feature links the NVIDIA driver library and the CUDA runtime libraries
//! (cudarc's `dynamic-linking`; its `dynamic-loading` conflicts with Candle's choice), so a
//! program built with it does not even start (the loader exits with 127) on a machine without
//! the driver. The app and the CLI are therefore never built with it. The CUDA build adds one
//! more program, `smollm3-cuda-runner` (this crate's `src/bin`, built with `--features cuda`),
//! installed next to them; the parent starts it only when a CUDA device is asked for. When it
//! cannot start (not installed, a library missing, the driver's error), the parent says exactly
//! why; when the GPU or its driver crashes, the runner dies and the parent reports it instead of
//! dying with it. See `doc/engine.md` for the design and why not a library opened at run time.
//!
//! The runner holds only the transformer and its KV cache (a [`CandleModel`] on its device).
//! The parent keeps everything above [`Backend`]: tokenizer, template, the [`Session`] (which
//! tokens the cache holds, prefix reuse, commit, rollback), sampler, generation loop, stop and
//! cancel, and the memory check (the runner reports the device's free memory, the parent's one
//! estimate decides).
//!
//! The protocol: frames of a little-endian u32 length, then that many bytes: a tag byte and
//! the fields, integers little-endian, strings as a u32 length and UTF-8, logits as f32.
//! Requests and replies alternate, one reply per request:
//!
//! | request | fields | reply |
//! |---|---|---|
//! | `OPEN` | protocol version u32, device str | `OPENED`: has-memory u8, free bytes u64, place str |
//! | `LOAD` | model path str, context u64, KV type u8 | `LOADED`: vocab u64, context u64, cache bytes u64, scratch bytes u64, n u32, n x (ggml type u32, count u64) |
//! | `FORWARD` | position u64, logits u8, n u32, n x token u32 | `LOGITS`: scratch bytes u64, rows u64, rows x vocab f32 |
//! | `SAVE` | layer u32, positions u64 | `CACHE`: layers u32, then the layer's keys and values: KV type u8, n u64, n values, n values |
//! | `RESTORE` | layer u32, positions u64, KV type u8, n u64, n keys, n values | `RESTORED` |
//!
//! `SAVE` and `RESTORE` copy a conversation's KV cache out to the parent and back
//! ([`crate::Engine::use_cache_of`]), one layer per request so that no frame grows with the
//! model's depth; values are f32 or f16 (bits) as the cache stores them.
//!
//! Any request may be answered by `ERROR`: kind u8 (device or other), message str. The runner
//! exits when its stdin closes. The parent waits for each reply within [`RunnerTimeouts`] (a
//! load's limit grows with the model file, a pass's with its tokens); a runner that stays alive
//! but silent past it (a hung GPU or driver) is killed and the error names the limit. `smollm3-cuda-runner --devices` prints the runner's own
//! device list as JSON instead (what `smollm3 devices` shows for CUDA).
//!
//! The runner built without `cuda` serves Candle's CPU device the same way, so the whole pipe
//! path is tested where there is no GPU (`tests/runner.rs`).
//!
//! [`Session`]: crate::backend::Session

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use half::f16;

use crate::attention::KvType;
use crate::backend::{Backend, HostRows, Logits};
use crate::candle_model::CandleModel;
use crate::device::{self, BackendKind, DeviceReport, DeviceSpec, Placement};
use crate::error::{EngineError, Result};
use crate::gguf::TensorType;
use crate::memory::{Available, MemoryEstimate, PREFILL_CHUNK};

/// The runner program's file name (next to the app's and the CLI's).
pub const RUNNER_NAME: &str = "smollm3-cuda-runner";
/// Names another runner program to use instead of the one next to the executable.
pub const RUNNER_ENV: &str = "SMOLLM3_CUDA_RUNNER";
/// Raised whenever a frame's meaning changes: a runner from another build is refused by name.
pub const PROTOCOL_VERSION: u32 = 2;

const OPEN: u8 = 1;
const LOAD: u8 = 2;
const FORWARD: u8 = 3;
const SAVE: u8 = 4;
const RESTORE: u8 = 5;
const ERROR: u8 = 0x80;
const OPENED: u8 = 0x81;
const LOADED: u8 = 0x82;
const LOGITS: u8 = 0x83;
const CACHE: u8 = 0x84;
const RESTORED: u8 = 0x85;

/// `ERROR` kinds: the device (absent, did not start) or anything else.
const ERR_DEVICE: u8 = 0;
const ERR_OTHER: u8 = 1;

/// The largest request besides `RESTORE`: a pass of [`PREFILL_CHUNK`] tokens, or a path.
const MAX_REQUEST: usize = 64 * 1024 + PREFILL_CHUNK * 4;
/// The fields of a `CACHE` or `RESTORE` frame besides the values.
const CACHE_HEAD: usize = 32;
/// How long `--devices` may take (driver initialisation) before it is killed.
const DEVICES_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest reply besides logits: an `ERROR` can carry a long message (Candle's errors
/// include a backtrace when `RUST_BACKTRACE` is set).
const MAX_REPLY: usize = 1 << 20;
/// Lines of the runner's stderr kept for an error message.
const STDERR_LINES: usize = 12;

/// The runner the parent starts: `$SMOLLM3_CUDA_RUNNER`, or `smollm3-cuda-runner` next to the
/// running executable.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os(RUNNER_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let name = format!("{RUNNER_NAME}{}", std::env::consts::EXE_SUFFIX);
    match std::env::current_exe() {
        Ok(exe) => exe.with_file_name(name),
        Err(_) => PathBuf::from(name),
    }
}

/// How long the parent waits for each reply before it takes the runner for hung (alive, but no
/// longer answering: a GPU or driver stuck in a kernel), kills it and says so. A load reads the
/// whole model file, so its limit grows with the file; a pass's grows with its tokens, so a
/// prefill chunk on a slow device is not mistaken for a hang while a single token's step is
/// caught within [`RunnerTimeouts::forward`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunnerTimeouts {
    /// `OPEN`: starting the device (the driver's initialisation).
    pub open: Duration,
    /// `LOAD`, plus [`RunnerTimeouts::load_per_gb`] for every GB of the model file.
    pub load: Duration,
    pub load_per_gb: Duration,
    /// `FORWARD`, plus [`RunnerTimeouts::forward_per_token`] for every token of the pass.
    pub forward: Duration,
    pub forward_per_token: Duration,
}

impl Default for RunnerTimeouts {
    /// Generous for the slowest machine that runs a model at all: a disk at 17 MB/s, a pass of
    /// 512 tokens at 4 tokens/s (Candle's CPU device with a 3B model), a minute for a driver.
    fn default() -> Self {
        Self {
            open: Duration::from_secs(60),
            load: Duration::from_secs(60),
            load_per_gb: Duration::from_secs(60),
            forward: Duration::from_secs(30),
            forward_per_token: Duration::from_millis(250),
        }
    }
}

impl RunnerTimeouts {
    fn load_of(&self, file_bytes: u64) -> Duration {
        self.load + self.load_per_gb.mul_f64(file_bytes as f64 / 1e9)
    }

    /// Copying one layer of a KV cache of `bytes` (`SAVE`, `RESTORE`): a load's limit for as many
    /// bytes, generous for a copy through memory and a pipe.
    fn copy_of(&self, bytes: usize) -> Duration {
        self.load_of(bytes as u64)
    }

    fn forward_of(&self, tokens: usize) -> Duration {
        self.forward + self.forward_per_token * tokens as u32
    }
}

// ---------------------------------------------------------------------------------------------
// Frames

/// A frame being built: tag and fields.
struct Frame(Vec<u8>);

impl Frame {
    fn new(tag: u8) -> Self {
        Frame(vec![tag])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(self, s: &str) -> Self {
        let mut f = self.u32(s.len() as u32);
        f.0.extend_from_slice(s.as_bytes());
        f
    }
    /// A layer's keys and values (of one element type): KV type u8, n u64, n keys, n values.
    fn kv_rows(self, k: &HostRows, v: &HostRows) -> io::Result<Self> {
        let (kv, n) = match (k, v) {
            (HostRows::F32(a), HostRows::F32(b)) if a.len() == b.len() => (KvType::F32, a.len()),
            (HostRows::F16(a), HostRows::F16(b)) if a.len() == b.len() => (KvType::F16, a.len()),
            _ => return Err(bad_data("keys and values of different shapes".into())),
        };
        let mut f = self.u8(kv_code(kv)).u64(n as u64);
        f.0.reserve(2 * n * kv.bytes());
        for rows in [k, v] {
            match rows {
                HostRows::F32(x) => x
                    .iter()
                    .for_each(|e| f.0.extend_from_slice(&e.to_le_bytes())),
                HostRows::F16(x) => x
                    .iter()
                    .for_each(|e| f.0.extend_from_slice(&e.to_bits().to_le_bytes())),
            }
        }
        Ok(f)
    }
    fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let len = u32::try_from(self.0.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(&self.0)?;
        w.flush()
    }
}

fn bad_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one frame of at most `max` bytes; `None` at a clean end of input.
fn read_frame(r: &mut impl Read, max: usize) -> io::Result<Option<Vec<u8>>> {
    read_frame_within(r, &|| max)
}

/// [`read_frame`] with the limit read once the frame's length has arrived: the parent's reader
/// thread waits for a reply before the request that decides its limit is sent.
fn read_frame_within(r: &mut impl Read, max: &dyn Fn() -> usize) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    // A clean end is an end before the first byte of a frame.
    match r.read(&mut len[..1])? {
        0 => return Ok(None),
        _ => r.read_exact(&mut len[1..])?,
    }
    let len = u32::from_le_bytes(len) as usize;
    let max = max();
    if len == 0 || len > max {
        return Err(bad_data(format!(
            "a frame of {len} bytes (expected 1 to {max})"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// Reads the fields of a received frame; every read is bounds-checked.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad_data("a frame ends inside a field".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn usize(&mut self) -> io::Result<usize> {
        let v = self.u64()?;
        usize::try_from(v).map_err(|_| bad_data(format!("{v} does not fit this machine")))
    }
    fn str(&mut self) -> io::Result<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| bad_data("a string is not UTF-8".into()))
    }
    /// `n` little-endian u32s.
    fn u32s(&mut self, n: usize) -> io::Result<Vec<u32>> {
        let bytes = self.take(
            n.checked_mul(4)
                .ok_or_else(|| bad_data("count overflow".into()))?,
        )?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect())
    }
    /// A layer's keys and values: KV type u8, n u64, n keys, n values.
    fn kv_rows(&mut self) -> io::Result<(HostRows, HostRows)> {
        let kv = kv_of(self.u8()?)?;
        let n = self.usize()?;
        let bytes = n
            .checked_mul(kv.bytes())
            .ok_or_else(|| bad_data("count overflow".into()))?;
        let mut rows = || -> io::Result<HostRows> {
            let b = self.take(bytes)?;
            Ok(match kv {
                KvType::F32 => HostRows::F32(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                KvType::F16 => HostRows::F16(
                    b.chunks_exact(2)
                        .map(|c| f16::from_bits(u16::from_le_bytes(c.try_into().unwrap())))
                        .collect(),
                ),
            })
        };
        Ok((rows()?, rows()?))
    }
    fn end(&self) -> io::Result<()> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(bad_data(format!("{n} bytes after a frame's last field"))),
        }
    }
}

fn logits_code(l: Logits) -> u8 {
    match l {
        Logits::Last => 0,
        Logits::All => 1,
        Logits::None => 2,
        Logits::Verify => 3,
    }
}

fn logits_of(code: u8) -> io::Result<Logits> {
    match code {
        0 => Ok(Logits::Last),
        1 => Ok(Logits::All),
        2 => Ok(Logits::None),
        3 => Ok(Logits::Verify),
        c => Err(bad_data(format!("unknown logits kind {c}"))),
    }
}

fn kv_code(k: KvType) -> u8 {
    match k {
        KvType::F32 => 0,
        KvType::F16 => 1,
    }
}

fn kv_of(code: u8) -> io::Result<KvType> {
    match code {
        0 => Ok(KvType::F32),
        1 => Ok(KvType::F16),
        c => Err(bad_data(format!("unknown KV cache type {c}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// The runner's side

/// What the runner has opened so far.
#[derive(Default)]
struct Served {
    device: Option<candle_core::Device>,
    model: Option<CandleModel>,
}

/// Serves requests from `input` on `output` until `input` ends (the runner's main loop).
/// A request that fails is answered with `ERROR` and the runner goes on; a malformed frame
/// ends it with an error (the parent and the runner disagree on the protocol).
pub fn serve(input: impl Read, output: impl Write) -> io::Result<()> {
    let mut input = BufReader::new(input);
    let mut output = BufWriter::new(output);
    let mut served = Served::default();
    loop {
        // A `RESTORE` carries one layer of the loaded model's cache.
        let max = match &served.model {
            Some(m) => MAX_REQUEST.max(CACHE_HEAD + m.layer_cache_bytes()),
            None => MAX_REQUEST,
        };
        let Some(frame) = read_frame(&mut input, max)? else {
            break;
        };
        let mut f = Fields(&frame[1..]);
        let reply = match frame[0] {
            OPEN => {
                let version = f.u32()?;
                let device = f.str()?;
                f.end()?;
                open(&mut served, version, &device)
            }
            LOAD => {
                let path = PathBuf::from(f.str()?);
                let context_len = f.usize()?;
                let kv_type = kv_of(f.u8()?)?;
                f.end()?;
                load(&mut served, &path, context_len, kv_type)
            }
            FORWARD => {
                let pos = f.usize()?;
                let logits = logits_of(f.u8()?)?;
                let n = f.u32()? as usize;
                let tokens = f.u32s(n)?;
                f.end()?;
                match forward(&mut served, pos, &tokens, logits) {
                    // The logits go straight from the model's buffer to the pipe.
                    Ok(()) => {
                        write_logits(&mut output, served.model.as_ref().expect("loaded"))?;
                        continue;
                    }
                    Err(e) => Err(e),
                }
            }
            SAVE => {
                let layer = f.u32()? as usize;
                let len = f.usize()?;
                f.end()?;
                match save(&served, layer, len) {
                    Ok((n_layers, k, v)) => {
                        Frame::new(CACHE).u32(n_layers).kv_rows(&k, &v).map(Ok)?
                    }
                    Err(e) => Err(e),
                }
            }
            RESTORE => {
                let layer = f.u32()? as usize;
                let len = f.usize()?;
                let (k, v) = f.kv_rows()?;
                f.end()?;
                restore(&served, layer, len, &k, &v)
            }
            tag => return Err(bad_data(format!("unknown request {tag:#x}"))),
        };
        let frame = match reply {
            Ok(frame) => frame,
            Err(e) => {
                let kind = match e {
                    EngineError::Device(_) => ERR_DEVICE,
                    _ => ERR_OTHER,
                };
                let message = match e {
                    EngineError::Device(m) => m,
                    e => e.to_string(),
                };
                Frame::new(ERROR).u8(kind).str(&message)
            }
        };
        frame.write(&mut output)?;
    }
    Ok(())
}

fn open(served: &mut Served, version: u32, device: &str) -> Result<Frame> {
    if version != PROTOCOL_VERSION {
        return Err(EngineError::Device(format!(
            "the runner speaks protocol {PROTOCOL_VERSION}, the program that started it {version}: \
             install the runner of the same build"
        )));
    }
    let spec: DeviceSpec = device.parse()?;
    let d = Placement::new(spec, Some(BackendKind::Candle))?.candle_device()?;
    let frame = match device::available_memory(spec, &d) {
        Some(a) => Frame::new(OPENED).u8(1).u64(a.bytes).str(&a.place),
        None => Frame::new(OPENED).u8(0).u64(0).str(""),
    };
    served.model = None;
    served.device = Some(d);
    Ok(frame)
}

fn load(served: &mut Served, path: &Path, context_len: usize, kv_type: KvType) -> Result<Frame> {
    let device = served
        .device
        .as_ref()
        .ok_or_else(|| EngineError::Device("LOAD before OPEN".into()))?;
    // The previous model's memory is freed before the next one is allocated.
    served.model = None;
    let (map, gguf, cfg) = crate::engine::map_model(path)?;
    let context_len = context_len.clamp(1, cfg.context_length);
    let model = CandleModel::load(&gguf, &map, cfg, context_len, kv_type, device)?;
    let types = model.weight_types();
    let mut frame = Frame::new(LOADED)
        .u64(model.vocab_size() as u64)
        .u64(model.max_len() as u64)
        .u64(model.cache_bytes() as u64)
        .u64(model.scratch_bytes() as u64)
        .u32(types.len() as u32);
    for (t, n) in types {
        frame = frame.u32(t.id()).u64(n as u64);
    }
    served.model = Some(model);
    Ok(frame)
}

/// Runs a pass, after the checks the [`Backend`] contract leaves to its caller: the runner
/// trusts no caller with its GPU's memory.
fn forward(served: &mut Served, pos: usize, tokens: &[u32], logits: Logits) -> Result<()> {
    let model = served
        .model
        .as_mut()
        .ok_or_else(|| EngineError::Device("FORWARD before LOAD".into()))?;
    if tokens.is_empty() || tokens.len() > PREFILL_CHUNK {
        return Err(EngineError::Sampling(format!(
            "a pass of {} tokens (1 to {PREFILL_CHUNK})",
            tokens.len()
        )));
    }
    if pos.saturating_add(tokens.len()) > model.max_len() {
        return Err(EngineError::ContextOverflow {
            prompt_tokens: pos + tokens.len(),
            context_len: model.max_len(),
            max_prompt: model.max_len(),
        });
    }
    let vocab = model.vocab_size();
    if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(EngineError::Tokenizer(format!(
            "token id {id} is outside the vocabulary of {vocab} tokens"
        )));
    }
    model.forward(pos, tokens, logits)?;
    Ok(())
}

fn loaded<'a>(served: &'a Served, what: &str) -> Result<&'a CandleModel> {
    served
        .model
        .as_ref()
        .ok_or_else(|| EngineError::Device(format!("{what} before LOAD")))
}

/// Layer `layer`'s keys and values of positions `0..len`, with the model's number of layers.
fn save(served: &Served, layer: usize, len: usize) -> Result<(u32, HostRows, HostRows)> {
    let model = loaded(served, "SAVE")?;
    let (k, v) = model.save_layer(layer, len)?;
    Ok((model.n_layers() as u32, k, v))
}

fn restore(served: &Served, layer: usize, len: usize, k: &HostRows, v: &HostRows) -> Result<Frame> {
    loaded(served, "RESTORE")?.restore_layer(layer, len, k, v)?;
    Ok(Frame::new(RESTORED))
}

fn write_logits(w: &mut impl Write, model: &CandleModel) -> io::Result<()> {
    let rows = model.last_logits();
    let vocab = model.vocab_size();
    let head = Frame::new(LOGITS)
        .u64(model.scratch_bytes() as u64)
        .u64((rows.len() / vocab.max(1)) as u64);
    let len = u32::try_from(head.0.len() + rows.len() * 4)
        .map_err(|_| bad_data("logits over 4 GiB".into()))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&head.0)?;
    let mut bytes = Vec::with_capacity(rows.len() * 4);
    for x in rows {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    w.write_all(&bytes)?;
    w.flush()
}

// ---------------------------------------------------------------------------------------------
// The parent's side

/// The last lines a child wrote to its stderr, read by a thread until the child closes it.
struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl StderrTail {
    fn new(stderr: impl Read + Send + 'static) -> Self {
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let keep = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                tracing::debug!(target: "runner", "{line}");
                let mut l = keep.lock().unwrap_or_else(|p| p.into_inner());
                if l.len() == STDERR_LINES {
                    l.pop_front();
                }
                l.push_back(line);
            }
        });
        Self {
            lines,
            reader: Some(reader),
        }
    }

    /// Everything kept, once the child has closed its stderr (it exited).
    fn finish(&mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        l.iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

/// Why a runner that exited with `status` and wrote `stderr` stopped, in the user's words.
fn exit_reason(path: &Path, status: Option<ExitStatus>, stderr: &str) -> String {
    let status = match status {
        Some(s) => s.to_string(),
        None => "did not exit".into(),
    };
    let mut msg = format!("the runner {} stopped ({status})", path.display());
    if !stderr.is_empty() {
        msg += &format!(": {stderr}");
    }
    // The dynamic loader's words for a missing library, said as what the user can fix.
    if stderr.contains("libcuda.so") {
        msg += " -- no NVIDIA driver found: its libcuda.so.1 is not installed";
    } else if stderr.contains("error while loading shared libraries") {
        msg += " -- a CUDA library it needs is not installed";
    }
    msg
}

/// How a wait for a child ended.
enum Waited {
    Exited(Option<ExitStatus>),
    /// It was still running at the limit and was killed.
    Killed,
}

/// Waits for `child` to exit, for at most `limit`; kills it after that.
fn wait_or_kill(child: &mut Child, limit: Duration) -> Waited {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Waited::Exited(Some(status)),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                kill(child);
                return Waited::Killed;
            }
            Err(_) => {
                kill(child);
                return Waited::Exited(None);
            }
        }
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A duration as the user reads it: `60 s`, `0.5 s`.
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Why a runner that was alive but silent for `limit` while doing `what` was stopped.
fn hang_reason(path: &Path, what: &str, limit: Duration, stderr: &str) -> String {
    let mut msg = format!(
        "the runner {} did not {what} within {} (its device or driver hung); it was stopped",
        path.display(),
        seconds(limit)
    );
    if !stderr.is_empty() {
        msg += &format!(": {stderr}");
    }
    msg
}

fn spawn(path: &Path, args: &[&str]) -> Result<Child> {
    if !path.is_file() {
        return Err(EngineError::Device(device::no_cuda_runner(path)));
    }
    Command::new(path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            EngineError::Device(format!("cannot start the runner {}: {e}", path.display()))
        })
}

/// The runner's own device list (`--devices`), or why it could not say.
pub fn runner_devices(path: &Path) -> std::result::Result<Vec<DeviceReport>, String> {
    let mut child = spawn(path, &["--devices"]).map_err(|e| match e {
        EngineError::Device(m) => m,
        e => e.to_string(),
    })?;
    let mut stdout = child.stdout.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let mut err = StderrTail::new(child.stderr.take().expect("piped"));
    let waited = wait_or_kill(&mut child, DEVICES_TIMEOUT);
    let stderr = err.finish();
    let out = out.join().ok().and_then(|r| r.ok()).unwrap_or_default();
    match waited {
        Waited::Exited(Some(s)) if s.success() => serde_json::from_str(&out).map_err(|e| {
            format!(
                "the runner {} answered no device list ({e}): {out:.200}",
                path.display()
            )
        }),
        Waited::Exited(status) => Err(exit_reason(path, status, &stderr)),
        Waited::Killed => Err(hang_reason(
            path,
            "list its devices",
            DEVICES_TIMEOUT,
            &stderr,
        )),
    }
}

/// A reply as the parent's reader thread passes it on: a frame, the end of the runner's
/// output, or a read that failed.
type Reply = io::Result<Option<Vec<u8>>>;

/// Reads the runner's replies on a thread of their own, so the parent can stop waiting for one
/// (a hung runner never answers, and a blocking read cannot be given a deadline portably).
/// Each frame is refused beyond `max`, as the parent sets it before each request.
fn read_replies(stdout: ChildStdout, max: Arc<AtomicUsize>) -> Receiver<Reply> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let reply = read_frame_within(&mut r, &|| max.load(Ordering::SeqCst));
            let last = !matches!(reply, Ok(Some(_)));
            if tx.send(reply).is_err() || last {
                break;
            }
        }
    });
    rx
}

/// A model served by a runner process: the [`Backend`] the parent's session drives.
pub struct RunnerBackend {
    path: PathBuf,
    child: Child,
    stdin: BufWriter<ChildStdin>,
    replies: Receiver<Reply>,
    /// The largest reply the request in flight may get (see [`read_replies`]).
    max_reply: Arc<AtomicUsize>,
    stderr: StderrTail,
    timeouts: RunnerTimeouts,
    vocab: usize,
    max_len: usize,
    cache_bytes: usize,
    scratch_bytes: usize,
    weight_types: Vec<(TensorType, usize)>,
    logits: Vec<f32>,
    /// Why the runner stopped: every later call fails with it.
    dead: Option<String>,
}

impl RunnerBackend {
    /// Starts the runner at `path`, opens `device` there, checks `memory` against what it has
    /// free ([`check_fits`]: the same refusal as in-process), and loads `model` with a KV cache
    /// of `context_len` positions. Every reply is waited for within `timeouts`.
    pub fn start(
        path: &Path,
        model: &Path,
        device: DeviceSpec,
        context_len: usize,
        kv_type: KvType,
        memory: &MemoryEstimate,
        timeouts: RunnerTimeouts,
    ) -> Result<Self> {
        let mut child = spawn(path, &[])?;
        let stdin = BufWriter::new(child.stdin.take().expect("piped"));
        let max_reply = Arc::new(AtomicUsize::new(MAX_REPLY));
        let replies = read_replies(child.stdout.take().expect("piped"), max_reply.clone());
        let stderr = StderrTail::new(child.stderr.take().expect("piped"));
        let mut r = Self {
            path: path.to_owned(),
            child,
            stdin,
            replies,
            max_reply,
            stderr,
            timeouts,
            vocab: 0,
            max_len: 0,
            cache_bytes: 0,
            scratch_bytes: 0,
            weight_types: Vec::new(),
            logits: Vec::new(),
            dead: None,
        };
        let opened = r.call(
            Frame::new(OPEN)
                .u32(PROTOCOL_VERSION)
                .str(&device.to_string()),
            OPENED,
            1024,
            ("open the device", timeouts.open),
        )?;
        let mut f = Fields(&opened);
        let has = f.u8().map_err(|e| r.protocol(e))?;
        let bytes = f.u64().map_err(|e| r.protocol(e))?;
        let place = f.str().map_err(|e| r.protocol(e))?;
        f.end().map_err(|e| r.protocol(e))?;
        let available = (has == 1).then_some(Available { bytes, place });
        crate::engine::check_fits(memory, available, device)?;
        let file_bytes = std::fs::metadata(model).map_or(0, |m| m.len());
        let model = model.to_str().ok_or_else(|| {
            EngineError::Device(format!("the path {} is not UTF-8", model.display()))
        })?;
        let loaded = r.call(
            Frame::new(LOAD)
                .str(model)
                .u64(context_len as u64)
                .u8(kv_code(kv_type)),
            LOADED,
            MAX_REPLY,
            ("load the model", timeouts.load_of(file_bytes)),
        )?;
        let parse = |f: &mut Fields| -> io::Result<_> {
            let vocab = f.usize()?;
            let max_len = f.usize()?;
            let cache = f.usize()?;
            let scratch = f.usize()?;
            let mut types = Vec::new();
            for _ in 0..f.u32()? {
                let id = f.u32()?;
                let t = TensorType::from_id(id)
                    .ok_or_else(|| bad_data(format!("unknown ggml type {id}")))?;
                types.push((t, f.usize()?));
            }
            f.end()?;
            Ok((vocab, max_len, cache, scratch, types))
        };
        let (vocab, max_len, cache, scratch, types) =
            parse(&mut Fields(&loaded)).map_err(|e| r.protocol(e))?;
        r.vocab = vocab;
        r.max_len = max_len;
        r.cache_bytes = cache;
        r.scratch_bytes = scratch;
        r.weight_types = types;
        Ok(r)
    }

    /// A reply that breaks the protocol: the runner is of another build, or broken.
    fn protocol(&mut self, e: io::Error) -> EngineError {
        let msg = format!(
            "the runner {} answered outside the protocol ({e}); is it from another build?",
            self.path.display()
        );
        kill(&mut self.child);
        self.dead = Some(msg.clone());
        EngineError::Runner(msg)
    }

    /// The runner's stdin or stdout broke: it died. Its exit status and last words say why.
    fn died(&mut self) -> EngineError {
        let status = match wait_or_kill(&mut self.child, Duration::from_secs(2)) {
            Waited::Exited(status) => status,
            Waited::Killed => None,
        };
        let msg = exit_reason(&self.path, status, &self.stderr.finish());
        self.dead = Some(msg.clone());
        EngineError::Runner(msg)
    }

    /// The runner gave no reply within `limit`: it is killed (it may hold the GPU's memory),
    /// and every later call says why.
    fn hung(&mut self, what: &str, limit: Duration) -> EngineError {
        kill(&mut self.child);
        let msg = hang_reason(&self.path, what, limit, &self.stderr.finish());
        self.dead = Some(msg.clone());
        EngineError::Runner(msg)
    }

    /// Sends `request` and waits for its reply, expected to be `tag` of at most `max` bytes (or
    /// an `ERROR` of at most [`MAX_REPLY`]), for at most `deadline`'s limit (what it names the
    /// request by, and how long). Returns the reply's fields.
    fn call(
        &mut self,
        request: Frame,
        tag: u8,
        max: usize,
        deadline: (&str, Duration),
    ) -> Result<Vec<u8>> {
        if let Some(msg) = &self.dead {
            return Err(EngineError::Runner(msg.clone()));
        }
        self.max_reply.store(max.max(MAX_REPLY), Ordering::SeqCst);
        if request.write(&mut self.stdin).is_err() {
            return Err(self.died());
        }
        let (what, limit) = deadline;
        let frame = match self.replies.recv_timeout(limit) {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) | Err(RecvTimeoutError::Disconnected) => return Err(self.died()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => return Err(self.protocol(e)),
            Ok(Err(_)) => return Err(self.died()),
            Err(RecvTimeoutError::Timeout) => return Err(self.hung(what, limit)),
        };
        match frame[0] {
            t if t == tag && frame.len() <= max => Ok(frame[1..].to_vec()),
            ERROR => {
                let mut f = Fields(&frame[1..]);
                let kind = f.u8().map_err(|e| self.protocol(e))?;
                let msg = f.str().map_err(|e| self.protocol(e))?;
                // The runner's words are about its build and its device: say whose they are.
                let msg = format!("the runner {}: {msg}", self.path.display());
                Err(match kind {
                    ERR_DEVICE => EngineError::Device(msg),
                    _ => EngineError::Runner(msg),
                })
            }
            t => Err(self.protocol(bad_data(format!("reply {t:#x} where {tag:#x} was due")))),
        }
    }
}

impl Backend for RunnerBackend {
    fn forward(&mut self, pos: usize, tokens: &[u32], logits: Logits) -> Result<&[f32]> {
        let mut req = Frame::new(FORWARD)
            .u64(pos as u64)
            .u8(logits_code(logits))
            .u32(tokens.len() as u32);
        for &t in tokens {
            req = req.u32(t);
        }
        let rows = match logits {
            Logits::Last => 1,
            Logits::All | Logits::Verify => tokens.len(),
            Logits::None => 0,
        };
        let limit = self.timeouts.forward_of(tokens.len());
        let what = match tokens.len() {
            1 => "answer a pass of 1 token".to_string(),
            n => format!("answer a pass of {n} tokens"),
        };
        let reply = self.call(req, LOGITS, 17 + rows * self.vocab * 4, (&what, limit))?;
        let mut f = Fields(&reply);
        let scratch = f.usize().map_err(|e| self.protocol(e))?;
        let got = f.usize().map_err(|e| self.protocol(e))?;
        if got != rows {
            return Err(self.protocol(bad_data(format!("{got} rows of logits, {rows} asked"))));
        }
        let data = f
            .take(rows * self.vocab * 4)
            .map_err(|e| self.protocol(e))?;
        f.end().map_err(|e| self.protocol(e))?;
        self.scratch_bytes = scratch;
        self.logits.clear();
        self.logits.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap())),
        );
        Ok(&self.logits)
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn max_len(&self) -> usize {
        self.max_len
    }

    fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    fn scratch_bytes(&self) -> usize {
        self.scratch_bytes
    }

    fn weight_types(&self) -> Vec<(TensorType, usize)> {
        self.weight_types.clone()
    }

    /// Copies the runner's cache layer by layer (`SAVE`), into this process's memory.
    fn save_cache(&mut self, len: usize) -> Result<Option<Vec<(HostRows, HostRows)>>> {
        let limit = self.timeouts.copy_of(self.cache_bytes);
        let max = CACHE_HEAD + self.cache_bytes;
        let mut layers = Vec::new();
        loop {
            let il = layers.len();
            let req = Frame::new(SAVE).u32(il as u32).u64(len as u64);
            let reply = self.call(req, CACHE, max, ("copy out a KV cache", limit))?;
            let mut f = Fields(&reply);
            let parse = |f: &mut Fields| -> io::Result<_> {
                let n_layers = f.u32()? as usize;
                let rows = f.kv_rows()?;
                f.end()?;
                Ok((n_layers, rows))
            };
            let (n_layers, rows) = parse(&mut f).map_err(|e| self.protocol(e))?;
            layers.push(rows);
            if layers.len() >= n_layers {
                return Ok(Some(layers));
            }
        }
    }

    /// Writes a cache [`RunnerBackend::save_cache`] copied back into the runner (`RESTORE`).
    fn restore_cache(&mut self, tokens: &[u32], layers: &[(HostRows, HostRows)]) -> Result<()> {
        let limit = self.timeouts.copy_of(self.cache_bytes);
        for (il, (k, v)) in layers.iter().enumerate() {
            let req = Frame::new(RESTORE)
                .u32(il as u32)
                .u64(tokens.len() as u64)
                .kv_rows(k, v)
                .map_err(|e| EngineError::InvalidModel(format!("a saved KV cache: {e}")))?;
            self.call(req, RESTORED, 1, ("restore a KV cache", limit))?;
        }
        Ok(())
    }
}

impl Drop for RunnerBackend {
    /// The runner holds the device's memory until it exits: it goes with the model.
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_what_is_malformed() {
        let mut buf = Vec::new();
        Frame::new(OPEN)
            .u32(7)
            .str("cuda:1")
            .write(&mut buf)
            .unwrap();
        let mut r = &buf[..];
        let frame = read_frame(&mut r, 100).unwrap().unwrap();
        assert_eq!(frame[0], OPEN);
        let mut f = Fields(&frame[1..]);
        assert_eq!((f.u32().unwrap(), f.str().unwrap()), (7, "cuda:1".into()));
        f.end().unwrap();
        assert!(read_frame(&mut r, 100).unwrap().is_none(), "a clean end");
        // Too long for the limit, empty, cut short, fields missing or left over.
        assert!(read_frame(&mut &buf[..], 5).is_err());
        assert!(read_frame(&mut &[0u8, 0, 0, 0][..], 5).is_err());
        assert!(read_frame(&mut &buf[..buf.len() - 1], 100).is_err());
        assert!(Fields(&[1, 0]).u32().is_err());
        assert!(Fields(&[5, 0, 0, 0, b'a']).str().is_err());
        assert!(Fields(&[1]).end().is_err());
        assert!(logits_of(4).is_err() && kv_of(2).is_err());
        for l in [Logits::Last, Logits::All, Logits::None, Logits::Verify] {
            assert_eq!(logits_of(logits_code(l)).unwrap(), l);
        }
    }

    #[test]
    fn the_runner_answers_each_bad_request_and_stops_at_a_broken_frame() {
        let mut input = Vec::new();
        Frame::new(FORWARD)
            .u64(0)
            .u8(0)
            .u32(1)
            .u32(5)
            .write(&mut input)
            .unwrap();
        Frame::new(SAVE).u32(0).u64(4).write(&mut input).unwrap();
        Frame::new(RESTORE)
            .u32(0)
            .u64(1)
            .kv_rows(
                &HostRows::F16(vec![f16::ONE; 2]),
                &HostRows::F16(vec![f16::ZERO; 2]),
            )
            .unwrap()
            .write(&mut input)
            .unwrap();
        Frame::new(OPEN)
            .u32(PROTOCOL_VERSION + 1)
            .str("cpu")
            .write(&mut input)
            .unwrap();
        Frame::new(OPEN)
            .u32(PROTOCOL_VERSION)
            .str("gpu")
            .write(&mut input)
            .unwrap();
        Frame::new(OPEN)
            .u32(PROTOCOL_VERSION)
            .str("cpu")
            .write(&mut input)
            .unwrap();
        Frame::new(LOAD)
            .str("/no/such/model.gguf")
            .u64(64)
            .u8(0)
            .write(&mut input)
            .unwrap();
        let mut output = Vec::new();
        serve(&input[..], &mut output).unwrap();
        let mut r = &output[..];
        let mut reply = || read_frame(&mut r, 1 << 20).unwrap().expect("a reply");
        let error = |f: Vec<u8>| {
            assert_eq!(f[0], ERROR, "{f:?}");
            Fields(&f[2..]).str().unwrap()
        };
        assert!(error(reply()).contains("FORWARD before LOAD"));
        assert!(error(reply()).contains("SAVE before LOAD"));
        assert!(error(reply()).contains("RESTORE before LOAD"));
        assert!(error(reply()).contains("the runner speaks protocol"));
        assert!(error(reply()).contains("unknown device 'gpu'"));
        assert_eq!(reply()[0], OPENED);
        assert!(error(reply()).contains("/no/such/model.gguf"));
        assert!(read_frame(&mut r, 1 << 20).unwrap().is_none());

        let mut broken = Vec::new();
        Frame::new(0x42).write(&mut broken).unwrap();
        let err = serve(&broken[..], &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("unknown request 0x42"), "{err}");

        // Keys and values round-trip through a frame as the cache stores them.
        let (k, v) = (
            HostRows::F32(vec![1.5, -0.0, f32::MAX]),
            HostRows::F32(vec![0.25, 7.0, -3.0]),
        );
        let f = Frame::new(CACHE).kv_rows(&k, &v).unwrap();
        assert_eq!(Fields(&f.0[1..]).kv_rows().unwrap(), (k.clone(), v));
        let odd = HostRows::F16(vec![f16::ONE]);
        assert!(Frame::new(CACHE).kv_rows(&k, &odd).is_err());
    }

    #[test]
    fn a_missing_library_is_said_as_what_to_install() {
        let p = Path::new("/opt/x/smollm3-cuda-runner");
        let msg = exit_reason(
            p,
            None,
            "smollm3-cuda-runner: error while loading shared libraries: libcuda.so.1: cannot open shared object file: No such file or directory",
        );
        assert!(msg.contains("no NVIDIA driver found"), "{msg}");
        assert!(msg.contains("libcuda.so.1: cannot open"), "{msg}");
        let msg = exit_reason(
            p,
            None,
            "error while loading shared libraries: libcublas.so.13",
        );
        assert!(msg.contains("a CUDA library it needs"), "{msg}");
    }
}
