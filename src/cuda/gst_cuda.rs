//! Decoded frames that stay on the GPU: GStreamer's CUDA memory (the nvcodec decoders, `cudaupload`) meeting
//! our CUDA context.
//!
//! ```text
//! uridecodebin ─ nvh264dec ─ video/x-raw(memory:CUDAMemory),NV12 ─ appsink ──▶ CudaFrame (device pointer)
//!             └─ (a software decoder) ─ videoconvert ─ NV12 ─ cudaupload ─┘
//! ```
//!
//! The decoder must allocate in *our* context (a kernel cannot read memory of another context), so the pipeline
//! is given a `GstCudaContext` that wraps the context the kernels run in (`gst_cuda_context_new_wrapped`, 1.22).
//! libgstcuda-1.0 is opened at run time: without it (or without nvcodec) the frames are decoded to system
//! memory and uploaded, as before, and the log says why.

use std::ffi::c_void;

use gstreamer as gst;
use gstreamer::glib::translate::from_glib_full;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::Gpu;
use crate::error::{Error, Result};

/// `GST_MAP_CUDA` (gstcudamemory.h): map for CUDA device access; the mapped data is a `CUdeviceptr`.
const GST_MAP_CUDA: u32 = gst::ffi::GST_MAP_FLAG_LAST << 1;
/// `GST_CUDA_MEMORY_TYPE_NAME`.
const CUDA_MEMORY_TYPE: &str = "gst.cuda.memory";
/// The caps feature of CUDA memory.
pub const CAPS_FEATURE_CUDA: &str = "memory:CUDAMemory";

type LoadLibrary = unsafe extern "C" fn() -> i32;
type NewWrapped = unsafe extern "C" fn(ctx: *mut c_void, device: i32) -> *mut gst::ffi::GstObject;
type NewContext = unsafe extern "C" fn(cuda_ctx: *mut gst::ffi::GstObject) -> *mut gst::ffi::GstContext;

/// Our CUDA context, as a GStreamer context the nvcodec elements accept.
pub struct GstCuda {
    context: gst::Context,
    _lib: libloading::Library,
}

impl GstCuda {
    /// Wraps `gpu`'s context. Errors (never panics) where libgstcuda-1.0 (gstreamer1.0-plugins-bad ≥ 1.22) or
    /// the nvcodec plugin is missing.
    pub fn new(gpu: &Gpu) -> Result<GstCuda> {
        let why = |m: String| Error::Cuda(format!("decoded frames cannot stay on the GPU: {m}"));
        if gst::ElementFactory::find("cudaupload").is_none() {
            return Err(why("GStreamer's nvcodec plugin (cudaupload, nvh264dec) is not installed".into()));
        }
        // SAFETY: opening a shared library by name; its initialisers are GStreamer's own.
        let lib = unsafe { libloading::Library::new("libgstcuda-1.0.so.0") }
            .map_err(|e| why(format!("libgstcuda-1.0.so.0 cannot be loaded ({e}); install gstreamer1.0-plugins-bad ≥ 1.22")))?;
        // SAFETY: the signatures are those of gstcudaloader.h / gstcudacontext.h / gstcudacontext.h (1.22).
        let context = unsafe {
            let load: libloading::Symbol<LoadLibrary> = lib.get(b"gst_cuda_load_library\0").map_err(|e| why(e.to_string()))?;
            let wrap: libloading::Symbol<NewWrapped> = lib.get(b"gst_cuda_context_new_wrapped\0").map_err(|e| why(format!("{e} (GStreamer older than 1.22?)")))?;
            let mk: libloading::Symbol<NewContext> = lib.get(b"gst_context_new_cuda_context\0").map_err(|e| why(e.to_string()))?;
            if load() == 0 {
                return Err(why("GStreamer could not load the CUDA driver library".into()));
            }
            let cctx = wrap(gpu.ctx.cu_ctx() as *mut c_void, gpu.ctx.cu_device());
            if cctx.is_null() {
                return Err(why("gst_cuda_context_new_wrapped failed".into()));
            }
            let c = mk(cctx);
            gst::ffi::gst_object_unref(cctx as *mut _);
            if c.is_null() {
                return Err(why("gst_context_new_cuda_context failed".into()));
            }
            from_glib_full::<_, gst::Context>(c)
        };
        Ok(GstCuda { context, _lib: lib })
    }

    /// The context itself, for an element that answers its neighbours' context queries with it.
    pub fn context(&self) -> &gst::Context {
        &self.context
    }

    /// Gives the pipeline (and every element added to it later, decodebin's decoders included) our context.
    pub fn attach(&self, pipeline: &gst::Pipeline) {
        pipeline.set_context(&self.context);
        // Elements that ask rather than wait to be told get the same answer.
        let ctx = self.context.clone();
        let _ = pipeline.bus().unwrap().connect_sync_message(None, move |_, msg| {
            if let gst::MessageView::NeedContext(nc) = msg.view() {
                if nc.context_type() == "gst.cuda.context" {
                    if let Some(el) = msg.src().and_then(|s| s.downcast_ref::<gst::Element>()) {
                        el.set_context(&ctx);
                    }
                }
            }
        });
        pipeline.bus().unwrap().enable_sync_message_emission();
    }
}

/// The caps the device branch's appsink takes.
pub fn device_caps() -> gst::Caps {
    gst::Caps::builder("video/x-raw").features([CAPS_FEATURE_CUDA]).field("format", "NV12").build()
}

/// An appsink for NV12 frames in CUDA memory (and with `access_units`, H.264/HEVC access units for
/// [`super::nvdec`]). It tells the decoder it reads `GstVideoMeta` (the plane offsets and pitch of the
/// decoder's buffers are only known from it).
pub fn device_appsink(max_buffers: u32, access_units: bool) -> gst_app::AppSink {
    let mut caps = device_caps();
    if access_units {
        caps.make_mut().append(super::nvdec::au_caps());
    }
    let sink = gst_app::AppSink::builder().caps(&caps).max_buffers(max_buffers).drop(false).sync(false).build();
    sink.static_pad("sink").unwrap().add_probe(gst::PadProbeType::QUERY_DOWNSTREAM, |_, info| {
        if let Some(gst::PadProbeData::Query(q)) = info.data.as_mut() {
            if let gst::QueryViewMut::Allocation(a) = q.view_mut() {
                a.add_allocation_meta::<gstreamer_video::VideoMeta>(None);
            }
        }
        gst::PadProbeReturn::Ok
    });
    sink
}

/// Whether a decoder pad can hand out CUDA memory (then it is linked to the device appsink directly; else
/// through videoconvert ! cudaupload).
pub fn pad_offers_cuda(pad: &gst::Pad) -> bool {
    let caps = pad.query_caps(None);
    caps.iter_with_features().any(|(s, f)| f.contains(CAPS_FEATURE_CUDA) && s.name() == "video/x-raw")
        && caps.can_intersect(&device_caps())
}

/// The upload branch for decoders that give system memory: videoconvert ! NV12 ! cudaupload, added to the
/// pipeline, linked to `sink`, and returned at its head.
pub fn upload_branch(pipeline: &gst::Pipeline, sink: &gst::Element) -> Result<gst::Element> {
    let convert = gst::ElementFactory::make("videoconvert").property("n-threads", 2u32).build()?;
    let filter = gst::ElementFactory::make("capsfilter")
        .property("caps", gst::Caps::builder("video/x-raw").field("format", "NV12").build())
        .build()?;
    let upload = gst::ElementFactory::make("cudaupload").build()?;
    pipeline.add_many([&convert, &filter, &upload])?;
    gst::Element::link_many([&convert, &filter, &upload, sink])?;
    for e in [&convert, &filter, &upload] {
        e.sync_state_with_parent()?;
    }
    Ok(convert)
}

/// Tells the video decoders that `uridecodebin`/`decodebin` plugs that CUDA memory is wanted. A decoder
/// negotiates its output before decodebin exposes (and we link) its pad; unanswered, its caps query sees ANY
/// and nvcodec decoders then settle on system memory (and fail when relinked to a CUDA-only sink). As playbin
/// does for its video sinks, we answer those queries: CUDA NV12 first, any system-memory raw video after (for
/// software decoders, which go through the upload branch), and GstVideoMeta for the allocation.
pub fn prefer_cuda_output(decodebin: &gst::Element) {
    decodebin.connect("autoplug-query", false, |args| {
        let no = Some(false.to_value());
        let (Ok(pad), Ok(el)) = (args[1].get::<gst::Pad>(), args[2].get::<gst::Element>()) else { return no };
        let video_decoder = el.factory().is_some_and(|f| {
            let k = f.metadata("klass").unwrap_or_default();
            k.contains("Decoder") && k.contains("Video")
        });
        if !video_decoder || pad.direction() != gst::PadDirection::Src {
            return no;
        }
        // SAFETY: the signal's last argument is the GstQuery being asked, writable by the handler for the
        // duration of the call (decodebin answers it on the querying element's behalf).
        let q = unsafe {
            use gstreamer::glib::translate::ToGlibPtr;
            let ptr = gstreamer::glib::gobject_ffi::g_value_get_boxed(args[3].to_glib_none().0) as *mut gst::ffi::GstQuery;
            if ptr.is_null() {
                return no;
            }
            gst::QueryRef::from_mut_ptr(ptr)
        };
        match q.view_mut() {
            gst::QueryViewMut::Caps(c) => {
                let mut ours = device_caps();
                ours.make_mut().append(gst::Caps::builder("video/x-raw").build());
                let result = match c.filter() {
                    Some(f) => f.intersect_with_mode(&ours, gst::CapsIntersectMode::First),
                    None => ours,
                };
                c.set_result(&result);
                Some(true.to_value())
            }
            gst::QueryViewMut::Allocation(a) => {
                a.add_allocation_meta::<gstreamer_video::VideoMeta>(None);
                Some(true.to_value())
            }
            _ => no,
        }
    });
}

/// The sink pad a decoder's video pad links to on the device path: `sink`'s own when the decoder can give CUDA
/// memory, else the head of a new upload branch in front of `sink`.
pub fn device_sink_pad(pipeline: &gst::Pipeline, pad: &gst::Pad, sink: &gst::Element) -> Result<gst::Pad> {
    let head = if pad_offers_cuda(pad) { sink.clone() } else { upload_branch(pipeline, sink)? };
    Ok(head.static_pad("sink").unwrap())
}

/// A pipeline that decodes `uri` into CUDA memory in our context, for checks and benchmarks: returns it (not
/// started) with its device appsink.
pub fn decode_pipeline(cuda: &GstCuda, uri: &str, max_buffers: u32) -> Result<(gst::Pipeline, gst_app::AppSink)> {
    let pipeline = gst::Pipeline::new();
    cuda.attach(&pipeline);
    let dec = gst::ElementFactory::make("uridecodebin").property("uri", uri).build()?;
    prefer_cuda_output(&dec);
    let sink = device_appsink(max_buffers, false);
    pipeline.add_many([&dec, sink.upcast_ref()])?;
    let weak = pipeline.downgrade();
    let s = sink.clone().upcast::<gst::Element>();
    dec.connect_pad_added(move |_, pad| {
        let video = crate::source::pad_media_type(pad).is_some_and(|t| t.starts_with("video/"));
        if let (true, Some(p)) = (video, weak.upgrade()) {
            if !s.static_pad("sink").unwrap().is_linked() {
                match device_sink_pad(&p, pad, &s) {
                    Ok(sp) => {
                        let _ = pad.link(&sp);
                    }
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
    });
    Ok((pipeline, sink))
}

/// The public head of `GstCudaMemory` (gstcudamemory.h, unchanged from 1.22 to 1.26).
#[repr(C)]
struct CudaMemoryHead {
    mem: gst::ffi::GstMemory,
    context: *mut c_void,
    info: gstreamer_video::ffi::GstVideoInfo,
}

/// One decoded NV12 frame in CUDA memory, mapped for device access until dropped.
pub struct CudaFrame {
    hold: Hold,
    /// Device address of the Y plane's first byte.
    pub ptr: u64,
    /// Bytes per row of both planes.
    pub pitch: usize,
    /// Offset of the interleaved UV plane from `ptr`.
    pub uv_offset: usize,
    /// Matrix, range and chroma siting, from the caps.
    pub color: super::nv12::YuvColor,
    pub width: u32,
    pub height: u32,
}

/// What keeps a frame's device memory valid: a GStreamer buffer mapped for CUDA, or a decoder's mapped picture
/// (`cuda::nvdec`), unmapped when dropped.
enum Hold {
    Gst(gst::Buffer, gst::ffi::GstMapInfo),
    Surface(#[allow(dead_code)] Box<dyn std::any::Any + Send + Sync>),
}

// SAFETY: the mapping belongs to the buffer we hold a reference to; GstBuffer is thread-safe to move.
unsafe impl Send for CudaFrame {}
// SAFETY: nothing changes a mapped frame (its fields are read-only after `map`, the device memory is only read
// by kernels), and the unmap in Drop runs once, after the last reference is gone: the budgeted policy shares a
// frame between the model thread and the frame loop (`Arc<CudaFrame>`), each of which waits for its own reads.
unsafe impl Sync for CudaFrame {}

impl CudaFrame {
    /// Maps a sample's buffer for CUDA. Errors name what is wrong (not CUDA memory, not NV12, no layout).
    pub fn map(sample: &gst::Sample) -> Result<CudaFrame> {
        let bad = |m: &str| Error::Gst(format!("decoded frame on the GPU: {m}"));
        let caps = sample.caps().ok_or_else(|| bad("no caps"))?;
        let info = gstreamer_video::VideoInfo::from_caps(caps).map_err(|e| bad(&format!("bad caps ({e})")))?;
        if info.format() != gstreamer_video::VideoFormat::Nv12 {
            return Err(bad(&format!("format {:?}, expected NV12", info.format())));
        }
        let buffer = sample.buffer_owned().ok_or_else(|| bad("no buffer"))?;
        if buffer.n_memory() != 1 || !buffer.peek_memory(0).is_type(CUDA_MEMORY_TYPE) {
            return Err(bad("the buffer is not one block of CUDA memory"));
        }
        // The plane layout: GstVideoMeta when the decoder attached one (asked for in the allocation query),
        // else the layout the CUDA allocator recorded in the memory itself (GstCudaMemory.info, public since
        // 1.22: its pitch is what cuMemAllocPitch chose).
        let (offsets, strides) = match buffer.meta::<gstreamer_video::VideoMeta>() {
            Some(m) => (m.offset().to_vec(), m.stride().to_vec()),
            None => {
                // SAFETY: the memory is a GstCudaMemory (checked above), whose public head is this struct.
                let head = unsafe { &*(buffer.peek_memory(0).as_ptr() as *const CudaMemoryHead) };
                (head.info.offset[..2].to_vec(), head.info.stride[..2].to_vec())
            }
        };
        if strides.len() < 2 || strides[0] != strides[1] || strides[0] < info.width() as i32 {
            return Err(bad(&format!("unexpected plane layout (strides {strides:?})")));
        }
        // SAFETY: a zeroed GstMapInfo is a valid out-parameter; on success it is unmapped in Drop.
        let mut map: gst::ffi::GstMapInfo = unsafe { std::mem::zeroed() };
        let ok = unsafe { gst::ffi::gst_buffer_map(buffer.as_ptr() as *mut _, &mut map, gst::ffi::GST_MAP_READ | GST_MAP_CUDA) };
        if ok == 0 {
            return Err(bad("it cannot be mapped for CUDA access"));
        }
        Ok(CudaFrame {
            ptr: map.data as u64 + offsets[0] as u64,
            pitch: strides[0] as usize,
            uv_offset: offsets[1] - offsets[0],
            color: super::nv12::YuvColor::from_info(&info),
            width: info.width(),
            height: info.height(),
            hold: Hold::Gst(buffer, map),
        })
    }

    /// A frame at device address `ptr` (NV12, rows of `pitch` bytes, the UV plane `uv_offset` bytes after the
    /// Y plane) that stays valid while `hold` lives (dropped with the frame).
    pub fn of_surface(ptr: u64, pitch: usize, uv_offset: usize, color: super::nv12::YuvColor, width: u32, height: u32, hold: Box<dyn std::any::Any + Send + Sync>) -> CudaFrame {
        CudaFrame { hold: Hold::Surface(hold), ptr, pitch, uv_offset, color, width, height }
    }
}

impl Drop for CudaFrame {
    fn drop(&mut self) {
        if let Hold::Gst(buffer, map) = &mut self.hold {
            // SAFETY: mapped in `map` on this buffer; unmapped exactly once.
            unsafe { gst::ffi::gst_buffer_unmap(buffer.as_ptr() as *mut _, map) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The autoplug-query answer (CUDA NV12 first, system memory after) must leave software decoding intact
    /// where there is no GPU: every frame of the clip still decodes to system memory.
    #[test]
    fn software_decoders_still_decode_with_the_cuda_preference() {
        gst::init().unwrap();
        let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/media/carphone_pristine.mp4");
        let uri = gst::glib::filename_to_uri(&clip, None).unwrap();
        let pipeline = gst::Pipeline::new();
        let dec = gst::ElementFactory::make("uridecodebin").property("uri", uri.as_str()).build().unwrap();
        prefer_cuda_output(&dec);
        let (head, sink) = crate::source::video_branch(&pipeline, 4, true).unwrap();
        pipeline.add(&dec).unwrap();
        crate::source::link_video_pads(&dec, &head);
        pipeline.set_state(gst::State::Playing).unwrap();
        let mut n = 0;
        while let Some(s) = sink.try_pull_sample(gst::ClockTime::from_seconds(10)) {
            let caps = s.caps().unwrap();
            assert!(caps.features(0).is_none_or(|f| !f.contains(CAPS_FEATURE_CUDA)), "{caps}");
            n += 1;
        }
        pipeline.set_state(gst::State::Null).unwrap();
        assert_eq!(n, 120, "carphone has 120 frames");
    }

    #[test]
    fn device_caps_are_nv12_in_cuda_memory() {
        gst::init().unwrap();
        let c = device_caps();
        assert_eq!(c.to_string(), "video/x-raw(memory:CUDAMemory), format=(string)NV12");
        // System-memory NV12 is not what the device appsink takes.
        let sys = gst::Caps::builder("video/x-raw").field("format", "NV12").build();
        assert!(!c.can_intersect(&sys));
    }
}
