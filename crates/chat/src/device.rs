//! The devices as the app offers them: the engine's list ([`engine::device::DeviceProbe`]: every
//! device this build and machine can use, every other with the engine's reason), each usable one
//! then checked against the memory the chosen model needs there at the chosen context. A device
//! that cannot be used says why, and is not offered; a load on it anyway fails with the engine's
//! reason (the worker never falls back to another device).

use std::fmt::Display;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::SystemTime;

use engine::device::DeviceReport;
use engine::memory::{Available, MemoryEstimate};
use engine::{BackendKind, DeviceSpec, EngineOptions, KvType, Placement};

/// The model the devices are checked for: its file and the settings that size it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelNeed {
    pub path: PathBuf,
    pub context_len: usize,
    pub kv_type: KvType,
    /// The backend the settings ask for (`None`: each device's default).
    pub backend: Option<BackendKind>,
}

/// The model loaded now: its device, and what it holds there (freed before another load).
#[derive(Clone, Copy, Debug)]
pub struct InUse {
    pub device: DeviceSpec,
    pub bytes: u64,
}

/// Estimates already made, by what they depend on: reading a model's metadata and tokenizer for
/// every render of the settings window would be wasted work.
#[derive(Default)]
pub struct Estimates {
    made: Mutex<Vec<(EstimateKey, MemoryEstimate)>>,
}

#[derive(Clone, Debug, PartialEq)]
struct EstimateKey {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
    context_len: usize,
    kv_type: KvType,
    placement: Placement,
    /// The native backend's scratch grows with the thread count.
    threads: usize,
}

/// Estimates kept at most: a handful of devices times a settings change or two.
const KEEP: usize = 16;

impl Estimates {
    fn get(&self, need: &ModelNeed, placement: Placement) -> Option<MemoryEstimate> {
        let meta = std::fs::metadata(&need.path).ok()?;
        let key = EstimateKey {
            path: need.path.clone(),
            modified: meta.modified().ok(),
            len: meta.len(),
            context_len: need.context_len,
            kv_type: need.kv_type,
            placement,
            threads: engine::threads::current(),
        };
        if let Some((_, e)) = self.made.lock().unwrap().iter().find(|(k, _)| *k == key) {
            return Some(e.clone());
        }
        let opts = EngineOptions {
            context_len: need.context_len,
            kv_type: need.kv_type,
            placement,
            ..EngineOptions::default()
        };
        // A file the engine rejects is reported by its load; the list then shows no estimate.
        let estimate = match engine::engine::estimate_memory(&need.path, &opts) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(path = %need.path.display(), error = %e, "no memory estimate");
                return None;
            }
        };
        let mut made = self.made.lock().unwrap();
        if made.len() >= KEEP {
            made.remove(0);
        }
        made.push((key, estimate.clone()));
        Some(estimate)
    }
}

/// Every device of `list` (the engine's report), each usable one also checked against what
/// `need` requires there (none when no local model is chosen). The device `in_use` has its
/// model's memory counted as free: a load frees the old model first.
pub fn devices(
    mut list: Vec<DeviceReport>,
    need: Option<&ModelNeed>,
    in_use: Option<InUse>,
    estimates: &Estimates,
) -> Vec<DeviceReport> {
    let Some(need) = need else {
        return list;
    };
    for report in list.iter_mut().filter(|r| r.usable) {
        let Ok(device) = report.device.parse::<DeviceSpec>() else {
            continue;
        };
        let Some(estimate) = estimates.get(need, placement_for(device, need.backend)) else {
            continue;
        };
        let freed = in_use.filter(|u| u.device == device).map_or(0, |u| u.bytes);
        refuse_if_short(report, &estimate, freed);
    }
    list
}

/// The placement a device gets with the settings' backend: that backend where it runs there,
/// else the device's own (the native backend runs only on the CPU).
pub fn placement_for(device: DeviceSpec, backend: Option<BackendKind>) -> Placement {
    Placement::new(device, backend)
        .or_else(|_| Placement::new(device, None))
        .expect("every device has a default backend")
}

/// Marks `report` unusable, with the engine's refusal verbatim, when `estimate` exceeds the
/// memory available there (plus `freed` bytes a load releases first). Unknown memory is no
/// refusal: the load checks again where the device can tell.
fn refuse_if_short(report: &mut DeviceReport, estimate: &MemoryEstimate, freed: u64) {
    let Some(bytes) = report.memory_available else {
        return;
    };
    let place = match (report.device.as_str(), &report.name) {
        // The engine's own name for the host's memory, so the two messages read alike.
        ("cpu", _) => "RAM".to_string(),
        (device, Some(name)) => format!("{device} ({name})"),
        (device, None) => device.to_string(),
    };
    let available = Available {
        bytes: bytes.saturating_add(freed),
        place,
    };
    if let Err(e) = estimate.check(&available) {
        report.usable = false;
        report.reason = Some(e.to_string());
    }
}

/// The words of a device or backend error without the engine's `device:` prefix, for a message
/// that names the setting itself.
pub fn reason(e: engine::EngineError) -> String {
    match e {
        engine::EngineError::Device(why) => why,
        other => other.to_string(),
    }
}

/// One line about `d` for a text reply (`/status`): what it is, or why it cannot be used.
pub fn describe(d: &DeviceReport) -> String {
    let mut parts = Vec::new();
    if let Some(name) = &d.name {
        parts.push(name.clone());
    }
    if let Some(total) = d.memory_total {
        parts.push(format!("{} memory", engine::memory::gb(total)));
    }
    if let Some(free) = d.memory_available {
        parts.push(format!("{} available", engine::memory::gb(free)));
    }
    if let Some(cc) = &d.compute_capability {
        parts.push(format!("compute capability {cc}"));
    }
    match (&d.reason, d.usable) {
        (Some(why), _) => format!("{}: cannot be used: {why}", d.device),
        (None, false) => format!("{}: cannot be used", d.device),
        (None, true) => format!("{}: {}", d.device, parts.join(", ")),
    }
}

/// `serde(with)` for a value written as its text (`cuda:0`, `candle`).
pub(crate) mod as_text {
    use super::*;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// `serde(with)` for an optional value written as its text, `null` when unset.
pub(crate) mod opt_text {
    use super::*;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(D::Error::custom))
            .transpose()
    }
}

/// Serializes a placement as `{"device": "cuda:0", "backend": "candle"}`.
pub(crate) fn serialize_placement<S: serde::Serializer>(
    p: &Placement,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(2))?;
    m.serialize_entry("device", &p.device().to_string())?;
    m.serialize_entry("backend", &p.backend().to_string())?;
    m.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(available: u64) -> DeviceReport {
        DeviceReport {
            device: "cuda:0".into(),
            name: Some("NVIDIA Test".into()),
            usable: true,
            memory_total: Some(available),
            memory_available: Some(available),
            compute_capability: Some("9.0".into()),
            backends: vec![BackendKind::Candle],
            reason: None,
        }
    }

    fn need(gb: u64) -> MemoryEstimate {
        MemoryEstimate {
            context_len: 8192,
            weights: gb * 1_000_000_000,
            kv_cache: 0,
            buffers: 0,
            context_buffers: 0,
        }
    }

    #[test]
    fn a_device_without_room_for_the_model_says_needs_and_has() {
        let mut d = gpu(2_000_000_000);
        refuse_if_short(&mut d, &need(3), 0);
        assert!(!d.usable);
        let why = d.reason.unwrap();
        assert!(
            why.contains("cuda:0 (NVIDIA Test)")
                && why.contains("needs 3.0 GB")
                && why.contains("2.0 GB available"),
            "{why}"
        );
        let mut d = gpu(4_000_000_000);
        refuse_if_short(&mut d, &need(3), 0);
        assert!(d.usable && d.reason.is_none());
    }

    #[test]
    fn the_model_loaded_there_counts_as_free() {
        let mut d = gpu(1_000_000_000);
        refuse_if_short(&mut d, &need(3), 2_500_000_000);
        assert!(d.usable, "{:?}", d.reason);
    }

    #[test]
    fn unknown_memory_is_no_refusal() {
        let mut d = DeviceReport {
            memory_available: None,
            ..gpu(0)
        };
        refuse_if_short(&mut d, &need(3), 0);
        assert!(d.usable);
    }

    #[test]
    fn a_device_gets_the_settings_backend_where_it_runs_there() {
        let p = placement_for(DeviceSpec::Cpu, Some(BackendKind::Candle));
        assert_eq!(p.backend(), BackendKind::Candle);
        let p = placement_for(DeviceSpec::Cuda(0), Some(BackendKind::Native));
        assert_eq!(p.backend(), BackendKind::Candle);
        let p = placement_for(DeviceSpec::Cpu, None);
        assert_eq!(p.backend(), BackendKind::Native);
    }
}
