//! GPU use for the control panel and `/status`: utilisation and memory of each NVIDIA GPU, read through NVML
//! (`libnvidia-ml.so.1`, which comes with the driver). It is loaded at run time, so the binary builds and runs
//! where there is no NVIDIA driver; there, and where the driver sees no device, the answer is "no GPU", never
//! an error.

use std::sync::OnceLock;

use nvml_wrapper::Nvml;

/// One GPU's use now.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GpuUse {
    pub index: u32,
    pub name: String,
    /// Time over the driver's last sample period (1/6 s to 1 s) during which a kernel ran, %.
    pub util_percent: u32,
    pub memory_used_mib: f64,
    pub memory_total_mib: f64,
}

/// What the panel says where there is none.
pub const NO_GPU: &str = "no GPU";

/// NVML, opened once for the run; `None` without the library or the driver.
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| match Nvml::init() {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::debug!("no GPU use to report (NVML: {e})");
            None
        }
    })
    .as_ref()
}

/// Each NVIDIA GPU's use; empty without one. A driver call or two per device: call it off the async runtime.
pub fn gpu_use() -> Vec<GpuUse> {
    let Some(nvml) = nvml() else { return Vec::new() };
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|index| {
            let d = nvml.device_by_index(index).ok()?;
            let util = d.utilization_rates().ok()?;
            let mem = d.memory_info().ok();
            let mib = |b: u64| b as f64 / 1048576.0;
            Some(GpuUse {
                index,
                name: d.name().unwrap_or_else(|_| format!("GPU {index}")),
                util_percent: util.gpu,
                memory_used_mib: mem.as_ref().map(|m| mib(m.used)).unwrap_or(0.0),
                memory_total_mib: mem.as_ref().map(|m| mib(m.total)).unwrap_or(0.0),
            })
        })
        .collect()
}

/// The GPUs' use as JSON: a list, or the string "no GPU".
pub fn gpu_use_json() -> serde_json::Value {
    let v = gpu_use();
    match v.is_empty() {
        true => serde_json::Value::from(NO_GPU),
        false => serde_json::to_value(v).unwrap_or_else(|_| NO_GPU.into()),
    }
}

#[cfg(test)]
mod tests {
    /// On a machine with an NVIDIA driver: its GPUs, each with a plausible memory size and a utilisation in
    /// 0..=100; without one (CI, the development machines): "no GPU", not an error.
    #[test]
    fn gpu_use_lists_the_nvidia_gpus_or_says_no_gpu() {
        let v = super::gpu_use_json();
        if std::path::Path::new("/dev/nvidiactl").exists() {
            let list = v.as_array().unwrap_or_else(|| panic!("an NVIDIA driver is here but NVML gave {v}"));
            assert!(!list.is_empty(), "{v}");
            for g in list {
                assert!(g["memory_total_mib"].as_f64().unwrap() > 1024.0 && g["util_percent"].as_u64().unwrap() <= 100, "{g}");
            }
            eprintln!("GPU use: {v}");
        } else {
            assert_eq!(v, serde_json::json!(super::NO_GPU));
        }
    }
}
