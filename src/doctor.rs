//! `matteflow doctor`: what this machine can do — ONNX Runtime and its providers, GStreamer and the elements
//! each output needs, CUDA driver/NVRTC presence.

use gstreamer as gst;

use crate::config::Format;
use crate::runtime::{self, ProviderOptions};
use crate::sink;

pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check { name: name.into(), ok, detail: detail.into() }
}

/// Runs every check. `model` is opened to show the provider a session really gets.
pub fn run(ort_lib: Option<&std::path::Path>, popts: &ProviderOptions) -> Vec<Check> {
    let mut out = Vec::new();
    match gst::init() {
        Ok(()) => out.push(check("GStreamer", true, gst::version_string().to_string())),
        Err(e) => out.push(check("GStreamer", false, format!("cannot initialise: {e}"))),
    }
    let has = |e: &str| gst::ElementFactory::find(e).is_some();
    let mut decode: Vec<&str> = ["uridecodebin", "videoconvert", "appsink", "appsrc", "qtdemux", "matroskademux"]
        .into_iter()
        .filter(|e| !has(e))
        .collect();
    if !has("avdec_h264") && !has("nvh264dec") {
        decode.push("an H.264 decoder (avdec_h264 from gstreamer1.0-libav, or nvh264dec)");
    }
    out.push(check(
        "decode",
        decode.is_empty(),
        if decode.is_empty() { "uridecodebin, qtdemux, matroskademux and an H.264 decoder present".to_string() } else { format!("missing {}", decode.join(", ")) },
    ));
    for f in [Format::Prores, Format::Ffv1, Format::Png, Format::H264, Format::Vp9] {
        let missing: Vec<String> = sink::required_elements(f)
            .iter()
            .filter(|e| !has(e))
            .map(|e| format!("{e} ({})", sink::package_of(e)))
            .collect();
        out.push(check(
            format!("output {}", f.describe()),
            missing.is_empty(),
            if missing.is_empty() { sink::required_elements(f).join(", ") } else { format!("missing {}", missing.join(", ")) },
        ));
    }
    let rtmp: Vec<&str> = ["flvmux", "rtmp2sink", "rtmp2src"].into_iter().filter(|e| !has(e)).collect();
    out.push(check("output RTMP", rtmp.is_empty(), if rtmp.is_empty() { "flvmux, rtmp2sink".into() } else { format!("missing {}", rtmp.join(", ")) }));
    let nv: Vec<&str> = ["nvh264dec", "cudaupload", "cudadownload"].into_iter().filter(|e| has(e)).collect();
    out.push(check("NVIDIA decode (nvcodec)", !nv.is_empty(), if nv.is_empty() { "not available (no NVIDIA driver or plugin); CPU decode is used".into() } else { nv.join(", ") }));

    match runtime::init(ort_lib) {
        Ok(p) => {
            out.push(check("ONNX Runtime", true, p.display().to_string()));
            let provs: Vec<&str> = runtime::compiled_providers().iter().map(|p| p.name()).collect();
            out.push(check("providers in this build", true, provs.join(", ")));
            match crate::model::resolve(crate::model::DEFAULT_MODEL, None, &Default::default())
                .and_then(|m| crate::infer::OnnxSegmenter::open(m, popts))
            {
                Ok(s) => {
                    use crate::infer::Segmenter;
                    out.push(check("provider used", true, format!("{} (default model {})", s.provider().name(), crate::model::DEFAULT_MODEL)))
                }
                Err(e) => out.push(check("provider used", false, e.to_string())),
            }
        }
        Err(e) => out.push(check("ONNX Runtime", false, e.to_string())),
    }
    // SAFETY: only probes whether the library can be dlopened.
    let cuda = unsafe { cudarc::driver::sys::is_culib_present() };
    out.push(check("CUDA driver", cuda, if cuda { "libcuda found" } else { "not found: CPU is used" }));
    let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    out.push(check("NVRTC", nvrtc, if nvrtc { "libnvrtc found" } else { "not found (only needed for CUDA kernels)" }));
    out
}
