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
    /// A capability the CPU path does without (NVIDIA decode/encode, CUDA): its absence is not a failure.
    pub optional: bool,
}

impl Check {
    /// "ok", "FAIL", or "-" for an optional capability this machine lacks.
    pub fn mark(&self) -> &'static str {
        match (self.ok, self.optional) {
            (true, _) => "ok  ",
            (false, true) => "-   ",
            (false, false) => "FAIL",
        }
    }
}

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check { name: name.into(), ok, detail: detail.into(), optional: false }
}

fn optional(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check { optional: true, ..check(name, ok, detail) }
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
    out.push(optional("NVIDIA decode (nvcodec)", !nv.is_empty(), if nv.is_empty() { "not available (no NVIDIA driver or plugin); CPU decode is used".into() } else { nv.join(", ") }));
    // Decoded frames can only stay in CUDA memory with GStreamer's CUDA library (1.22+) beside nvcodec.
    // SAFETY: only probes whether the library can be opened.
    let gstcuda = unsafe { libloading::Library::new("libgstcuda-1.0.so.0") }.is_ok();
    let nvenc = has("nvh264enc");
    out.push(optional(
        "decoded frames on the GPU",
        !nv.is_empty() && gstcuda,
        match (nv.is_empty(), gstcuda) {
            (false, true) => "yes: nvcodec + libgstcuda-1.0 (`convert --cuda-stages` keeps NV12 in CUDA memory)".into(),
            (_, false) => "no: libgstcuda-1.0.so.0 not found (gstreamer1.0-plugins-bad ≥ 1.22); frames are uploaded".to_string(),
            (true, true) => "no: nvcodec has no decoder here; frames are uploaded".into(),
        },
    ));
    out.push(optional(
        "NVIDIA encode (NVENC)",
        nvenc,
        if nvenc { "nvh264enc: H.264 output of GPU runs is encoded on the GPU".into() } else { "not available (no NVENC unit or plugin); x264 encodes".to_string() },
    ));

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
    out.push(optional("CUDA driver", cuda, if cuda { "libcuda found" } else { "not found: CPU is used" }));
    let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    out.push(optional("NVRTC", nvrtc, if nvrtc { "libnvrtc found" } else { "not found (only needed for CUDA kernels: the GPU stages and the operators of `prepare --fp16` files)" }));
    out
}
