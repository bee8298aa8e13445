//! Compute devices: what the user can choose and, for each, whether this build can use it and
//! why not. Nothing falls back silently: loading on a device that is not usable fails with the
//! explanation given here.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
    Metal,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Metal => "metal",
        }
    }
}

/// One device as the settings window shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub device: Device,
    /// The model can run there with this build.
    pub usable: bool,
    /// What the user should know: what it is, or why it cannot be used.
    pub explanation: String,
}

fn gpu_explanation(name: &str, compiled: bool, feature: &str, platform_note: &str) -> String {
    match compiled {
        // Honest about the state of the engine: Candle's backend is linked in, but the engine's
        // quantized kernels only have a CPU path.
        true => format!(
            "{name}: this build includes Candle's {name} backend (feature `{feature}`), but the \
             engine runs only on the CPU today, so {name} is not used"
        ),
        false => format!(
            "{name}: not supported by this build (compiled without the engine's `{feature}` \
             feature){platform_note}"
        ),
    }
}

/// Every device, usable or not, each with its explanation.
pub fn devices() -> Vec<DeviceInfo> {
    let cores = engine::threads::available();
    let metal_note = if cfg!(target_os = "macos") {
        ""
    } else {
        "; Metal exists only on macOS"
    };
    vec![
        DeviceInfo {
            device: Device::Cpu,
            usable: true,
            explanation: format!(
                "CPU: always available ({cores} cores here); quantized weights, SIMD kernels"
            ),
        },
        DeviceInfo {
            device: Device::Cuda,
            usable: false,
            explanation: gpu_explanation(
                "CUDA",
                candle_core::utils::cuda_is_available(),
                "cuda",
                "",
            ),
        },
        DeviceInfo {
            device: Device::Metal,
            usable: false,
            explanation: gpu_explanation(
                "Metal",
                candle_core::utils::metal_is_available(),
                "metal",
                metal_note,
            ),
        },
    ]
}

/// `Ok` when `device` can run the model; otherwise the reason, for the user.
pub fn check(device: Device) -> Result<(), String> {
    let info = devices()
        .into_iter()
        .find(|d| d.device == device)
        .expect("every device is listed");
    match info.usable {
        true => Ok(()),
        false => Err(format!(
            "cannot run the model on {}: {}. Choose CPU in Settings.",
            device.name(),
            info.explanation
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_usable_and_gpus_say_why_not() {
        let all = devices();
        assert_eq!(all.len(), 3);
        assert!(check(Device::Cpu).is_ok());
        for d in [Device::Cuda, Device::Metal] {
            let why = check(d).unwrap_err();
            assert!(why.contains("CPU"), "{why}");
        }
        assert!(all.iter().all(|d| !d.explanation.is_empty()));
    }
}
