//! Where a model runs: a device (`cpu`, `cuda[:N]`, `metal`) and the backend on it (`native`:
//! the engine's own CPU kernels; `candle`: the Candle graph of [`crate::candle_model`], on any
//! device, Candle's CPU device included).

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::memory::{self, Available};

/// A device, as the user names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// An NVIDIA GPU by its CUDA ordinal.
    Cuda(usize),
    /// The Mac's GPU.
    Metal,
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal => f.write_str("metal"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = EngineError;

    /// `cpu`, `cuda` (= `cuda:0`), `cuda:N` or `metal`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            EngineError::Device(format!(
                "unknown device '{s}': expected cpu, cuda, cuda:N (N = 0, 1, ...) or metal"
            ))
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "metal" => Ok(DeviceSpec::Metal),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceSpec::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

/// Which implementation of the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// The engine's own CPU kernels (llama.cpp's arithmetic): the CPU default.
    Native,
    /// The Candle tensor graph: the GPUs, and Candle's CPU device.
    Candle,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Native => "native",
            BackendKind::Candle => "candle",
        })
    }
}

impl FromStr for BackendKind {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "native" => Ok(BackendKind::Native),
            "candle" => Ok(BackendKind::Candle),
            _ => Err(EngineError::Device(format!(
                "unknown backend '{s}': expected native or candle"
            ))),
        }
    }
}

/// A device and a backend that can run on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Placement {
    device: DeviceSpec,
    backend: BackendKind,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            device: DeviceSpec::Cpu,
            backend: BackendKind::Native,
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} backend)", self.device, self.backend)
    }
}

impl Placement {
    /// `device` with `backend`, or the device's default backend (native on the CPU, Candle on
    /// a GPU). The native backend runs only on the CPU.
    pub fn new(device: DeviceSpec, backend: Option<BackendKind>) -> Result<Self> {
        let backend = backend.unwrap_or(match device {
            DeviceSpec::Cpu => BackendKind::Native,
            DeviceSpec::Cuda(_) | DeviceSpec::Metal => BackendKind::Candle,
        });
        if backend == BackendKind::Native && device != DeviceSpec::Cpu {
            return Err(EngineError::Device(format!(
                "the native backend runs only on the CPU; {device} needs the candle backend"
            )));
        }
        Ok(Self { device, backend })
    }

    pub fn device(&self) -> DeviceSpec {
        self.device
    }

    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Opens the Candle device. A GPU this build was compiled without, or one that does not
    /// initialise, is an error that says which and why.
    pub fn candle_device(&self) -> Result<Device> {
        match self.device {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(EngineError::Device(no_cuda_in_build()));
                }
                Device::new_cuda(n)
                    .map_err(|e| EngineError::Device(format!("CUDA device {n} did not start: {e}")))
            }
            DeviceSpec::Metal => {
                if !candle_core::utils::metal_is_available() {
                    return Err(EngineError::Device(
                        "this build has no Metal support (Metal builds are made for macOS with \
                         the engine's `metal` feature)"
                            .into(),
                    ));
                }
                Device::new_metal(0).map_err(|e| {
                    EngineError::Device(format!("the Metal device did not start: {e}"))
                })
            }
        }
    }
}

/// Why a CUDA device is unavailable in a build without the `cuda` feature.
pub fn no_cuda_in_build() -> String {
    "this build has no CUDA support (CUDA runs in the CUDA build: `make build-cuda`)".into()
}

/// Why a CUDA device is unavailable when this build has no CUDA and no runner is installed.
pub fn no_cuda_runner(runner: &std::path::Path) -> String {
    format!(
        "this build has no CUDA support and the CUDA runner is not installed (no {}; \
         `make build-cuda` builds it, `make deb-cuda` packages it)",
        runner.display()
    )
}

/// One device as this build and machine see it: what it is, or why it cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// What `--device` takes: `cpu`, `cuda:0`, `metal` (`cuda` when no CUDA device is known).
    pub device: String,
    /// The hardware's name, when known.
    pub name: Option<String>,
    /// The model can be loaded there with this build.
    pub usable: bool,
    pub memory_total: Option<u64>,
    /// Memory a model can use now.
    pub memory_available: Option<u64>,
    /// CUDA's compute capability, `9.0`.
    pub compute_capability: Option<String>,
    /// The backends that run there.
    pub backends: Vec<BackendKind>,
    /// Why it cannot be used (`None` when usable).
    pub reason: Option<String>,
}

impl DeviceReport {
    fn unusable(device: &str, reason: String) -> Self {
        Self {
            device: device.into(),
            name: None,
            usable: false,
            memory_total: None,
            memory_available: None,
            compute_capability: None,
            backends: Vec::new(),
            reason: Some(reason),
        }
    }
}

impl Serialize for BackendKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// As it is written: `native`, `candle` (a runner's device list is read back).
impl<'de> Deserialize<'de> for BackendKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Every device kind, each usable one with its hardware, each other with the reason: the CPU,
/// every CUDA device the driver reports (or why there is none), the Metal GPU. In a build
/// without CUDA the CUDA entries are the CUDA runner's ([`crate::runner::default_path`]), or
/// why it is missing or did not start.
pub fn list_devices() -> Vec<DeviceReport> {
    local_devices_with(cuda_devices_via_runner)
}

/// [`list_devices`] for a caller that asks often (the settings page, `/status`): the CUDA entries
/// are probed once (a runner process started, or every CUDA context opened) and kept until
/// [`DeviceProbe::forget`]; the CPU entry, cheap to read, is fresh on every call. A kept CUDA
/// entry's free memory is as of its probe: a load checks the device's memory again anyway.
#[derive(Debug, Default)]
pub struct DeviceProbe {
    cuda: std::sync::Mutex<Option<Vec<DeviceReport>>>,
    /// Probes made, for the tests of callers that must not probe on every call.
    probes: std::sync::atomic::AtomicUsize,
}

impl DeviceProbe {
    /// Every device, as [`list_devices`], with the CUDA entries of the last probe.
    pub fn list(&self) -> Vec<DeviceReport> {
        self.list_with(cuda_devices_via_runner)
    }

    fn list_with(&self, probe: fn() -> Vec<DeviceReport>) -> Vec<DeviceReport> {
        let cuda = {
            let mut kept = self.cuda.lock().unwrap_or_else(|p| p.into_inner());
            kept.get_or_insert_with(|| {
                self.probes
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                probe()
            })
            .clone()
        };
        let mut list = local_devices_with(Vec::new);
        list.splice(1..1, cuda);
        list
    }

    /// Forgets the kept probe: the next [`DeviceProbe::list`] asks again (a driver installed,
    /// a GPU's memory taken or freed by a load).
    pub fn forget(&self) {
        *self.cuda.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// How many times the CUDA devices were probed.
    pub fn probes(&self) -> usize {
        self.probes.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// [`list_devices`] as this process sees them, without asking a runner: what the runner
/// itself reports.
pub fn local_devices() -> Vec<DeviceReport> {
    local_devices_with(cuda_devices)
}

/// In a build with CUDA, this process's own CUDA devices; without, the runner's (or why not).
fn cuda_devices_via_runner() -> Vec<DeviceReport> {
    if cfg!(feature = "cuda") {
        cuda_devices()
    } else {
        runner_cuda_devices(&crate::runner::default_path())
    }
}

/// The CUDA entries of the runner at `runner`, or one entry saying why there are none.
pub fn runner_cuda_devices(runner: &std::path::Path) -> Vec<DeviceReport> {
    if !runner.is_file() {
        return vec![DeviceReport::unusable("cuda", no_cuda_runner(runner))];
    }
    match crate::runner::runner_devices(runner) {
        Ok(list) => {
            let cuda: Vec<_> = list
                .into_iter()
                .filter(|d| d.device.starts_with("cuda"))
                .collect();
            if cuda.is_empty() {
                let msg = format!("the runner {} reported no CUDA entry", runner.display());
                return vec![DeviceReport::unusable("cuda", msg)];
            }
            // Its reasons are about itself (its build, its driver): say whose they are.
            cuda.into_iter()
                .map(|mut d| {
                    d.reason = d
                        .reason
                        .map(|r| format!("the CUDA runner {}: {r}", runner.display()));
                    d
                })
                .collect()
        }
        Err(reason) => vec![DeviceReport::unusable("cuda", reason)],
    }
}

/// The CPU, then `cuda`'s entries, then Metal.
fn local_devices_with(cuda: impl FnOnce() -> Vec<DeviceReport>) -> Vec<DeviceReport> {
    let host = memory::host_available();
    let mut out = vec![DeviceReport {
        device: "cpu".into(),
        name: Some(format!(
            "CPU, {} threads, {} kernels",
            crate::threads::available(),
            crate::kernels::Isa::detect().label()
        )),
        usable: true,
        memory_total: None,
        memory_available: host.map(|a| a.bytes),
        compute_capability: None,
        backends: vec![BackendKind::Native, BackendKind::Candle],
        reason: None,
    }];
    out.extend(cuda());
    out.push(metal_device());
    out
}

#[cfg(not(feature = "cuda"))]
fn cuda_devices() -> Vec<DeviceReport> {
    vec![DeviceReport::unusable("cuda", no_cuda_in_build())]
}

#[cfg(feature = "cuda")]
fn cuda_devices() -> Vec<DeviceReport> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    let count = match CudaContext::device_count() {
        Ok(n) if n > 0 => n as usize,
        Ok(_) => {
            return vec![DeviceReport::unusable(
                "cuda",
                "no CUDA device: the NVIDIA driver reports none".into(),
            )]
        }
        Err(e) => {
            use candle_core::cuda_backend::cudarc::driver::sys::CUresult;
            // A driver without a GPU (or the toolkit's stub library) answers "no device";
            // anything else is the driver failing.
            let why = match e.0 {
                CUresult::CUDA_ERROR_NO_DEVICE => "the NVIDIA driver finds no GPU",
                _ => "the NVIDIA driver did not start",
            };
            return vec![DeviceReport::unusable(
                "cuda",
                format!("no CUDA device: {why} ({e})"),
            )];
        }
    };
    (0..count)
        .map(|n| {
            let id = format!("cuda:{n}");
            match cuda_info(n) {
                Ok(i) => DeviceReport {
                    device: id,
                    name: Some(i.name),
                    usable: true,
                    memory_total: Some(i.total),
                    memory_available: Some(i.free),
                    compute_capability: Some(format!("{}.{}", i.cc.0, i.cc.1)),
                    backends: vec![BackendKind::Candle],
                    reason: None,
                },
                Err(e) => DeviceReport::unusable(&id, format!("the device did not start: {e}")),
            }
        })
        .collect()
}

#[cfg(feature = "cuda")]
struct CudaInfo {
    name: String,
    total: u64,
    free: u64,
    cc: (i32, i32),
}

#[cfg(feature = "cuda")]
fn cuda_info(n: usize) -> std::result::Result<CudaInfo, String> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    let e = |e: candle_core::cuda_backend::cudarc::driver::DriverError| e.to_string();
    let ctx = CudaContext::new(n).map_err(e)?;
    let (free, total) = ctx.mem_get_info().map_err(e)?;
    Ok(CudaInfo {
        name: ctx.name().map_err(e)?,
        total: total as u64,
        free: free as u64,
        cc: ctx.compute_capability().map_err(e)?,
    })
}

#[cfg(not(feature = "metal"))]
fn metal_device() -> DeviceReport {
    let platform = if cfg!(target_os = "macos") {
        ""
    } else {
        "; Metal exists only on macOS"
    };
    DeviceReport::unusable(
        "metal",
        format!("this build has no Metal support (the engine's `metal` feature){platform}"),
    )
}

#[cfg(feature = "metal")]
fn metal_device() -> DeviceReport {
    match Device::new_metal(0) {
        Ok(Device::Metal(m)) => {
            let d = m.device();
            let total = d.recommended_max_working_set_size() as u64;
            DeviceReport {
                device: "metal".into(),
                name: Some("Apple GPU".into()),
                usable: true,
                memory_total: Some(total),
                memory_available: Some(total.saturating_sub(d.current_allocated_size() as u64)),
                compute_capability: None,
                backends: vec![BackendKind::Candle],
                reason: None,
            }
        }
        Ok(_) => unreachable!("new_metal opens a Metal device"),
        Err(e) => DeviceReport::unusable("metal", format!("the Metal device did not start: {e}")),
    }
}

/// Memory a model can use on the opened `device` (`spec` names it), where it can be told.
pub fn available_memory(spec: DeviceSpec, device: &Device) -> Option<Available> {
    match (spec, device) {
        (_, Device::Cpu) => memory::host_available(),
        #[cfg(feature = "cuda")]
        (DeviceSpec::Cuda(n), Device::Cuda(_)) => cuda_info(n).ok().map(|i| Available {
            bytes: i.free,
            place: format!("CUDA device {n} ({})", i.name),
        }),
        #[cfg(feature = "metal")]
        (_, Device::Metal(m)) => {
            let d = m.device();
            let total = d.recommended_max_working_set_size() as u64;
            Some(Available {
                bytes: total.saturating_sub(d.current_allocated_size() as u64),
                place: "the Metal GPU".into(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_as_the_user_writes_them() {
        for (s, d) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda:1", DeviceSpec::Cuda(1)),
            ("metal", DeviceSpec::Metal),
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), d);
            assert_eq!(d.to_string(), s);
        }
        assert_eq!("CUDA".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(err.contains("expected cpu, cuda"), "{bad}: {err}");
        }
        assert!("tpu".parse::<BackendKind>().is_err());
    }

    #[test]
    fn each_device_gets_a_backend_that_runs_there() {
        let p = Placement::new(DeviceSpec::Cuda(0), None).unwrap();
        assert_eq!(p.backend(), BackendKind::Candle);
        let p = Placement::new(DeviceSpec::Cpu, None).unwrap();
        assert_eq!(p.backend(), BackendKind::Native);
        let err = Placement::new(DeviceSpec::Metal, Some(BackendKind::Native)).unwrap_err();
        assert!(err.to_string().contains("runs only on the CPU"), "{err}");
    }

    #[test]
    fn the_probe_asks_for_cuda_devices_once_until_told_to_forget() {
        fn fake_cuda() -> Vec<DeviceReport> {
            vec![DeviceReport::unusable("cuda", "probed".into())]
        }
        let probe = DeviceProbe::default();
        for _ in 0..3 {
            let list = probe.list_with(fake_cuda);
            let ids: Vec<_> = list.iter().map(|d| d.device.as_str()).collect();
            assert_eq!(ids, ["cpu", "cuda", "metal"]);
            assert_eq!(list[1].reason.as_deref(), Some("probed"));
            // The CPU's line names its instruction set as people write it ("AVX-512 kernels").
            let cpu = list[0].name.as_deref().unwrap();
            let isa = crate::kernels::Isa::detect().label();
            assert!(cpu.ends_with(&format!(", {isa} kernels")), "{cpu}");
        }
        assert_eq!(probe.probes(), 1);
        probe.forget();
        probe.list_with(fake_cuda);
        assert_eq!(probe.probes(), 2);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_build_without_cuda_says_so_rather_than_falling_back() {
        let p = Placement::new(DeviceSpec::Cuda(0), None).unwrap();
        let err = p.candle_device().unwrap_err().to_string();
        assert!(err.contains("this build has no CUDA support"), "{err}");
        let list = local_devices();
        let cuda = list
            .iter()
            .find(|d| d.device == "cuda")
            .expect("a CUDA entry");
        assert!(!cuda.usable);
        assert_eq!(cuda.reason.as_deref(), Some(no_cuda_in_build().as_str()));
        assert!(list[0].usable && list[0].device == "cpu");
        // Without a runner, the list says where it was looked for.
        let missing = std::path::Path::new("/nonexistent/smollm3-cuda-runner");
        let reason = runner_cuda_devices(missing)[0].reason.clone().unwrap();
        assert!(
            reason.contains("the CUDA runner is not installed"),
            "{reason}"
        );
        assert!(
            reason.contains("/nonexistent/smollm3-cuda-runner"),
            "{reason}"
        );
    }
}
