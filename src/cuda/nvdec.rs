//! NVDEC driven directly (the Video Codec SDK's C API in the driver's libnvcuvid), for the GPU stages' H.264 and
//! HEVC input: GStreamer demuxes and parses, we decode and map each picture on the model's own CUDA stream.
//!
//! ```text
//! uridecodebin (autoplug stops at video/x-h264|x-h265) ─ h26xparse ─ byte-stream AUs ─ appsink
//!   ──▶ [mf-pull] cuvidParseVideoData ─ decode ─ map on the model's stream ──▶ CudaFrame (NV12, device pointer)
//! ```
//!
//! Why not nvh264dec: mapping a decoded picture (block-linear to pitch-linear NV12) is a kernel, and GStreamer
//! 1.22's decoder launches it on a stream of its own. A kernel on any stream of the model's CUDA context other
//! than the model's own slows every later replay of the model's CUDA graph (IS-Net on the H200: 5.11 → 5.47 ms
//! a frame; docs/BENCHMARKS.md, twelfth session). Here the map is queued on the model's stream, in order with
//! the preprocessing that reads it.
//!
//! libnvcuvid.so.1 is opened at run time: without it (no NVIDIA driver) the input goes to GStreamer's decoders as
//! before. The struct layouts are the `nvidia-video-codec-sdk` crate's bindings (built without linking).

use std::collections::VecDeque;
use std::ffi::{c_int, c_uint, c_ulonglong, c_void};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use cudarc::driver::{CudaContext, CudaStream};
use gstreamer as gst;
use nvidia_video_codec_sdk::sys::cuviddec::*;
use nvidia_video_codec_sdk::sys::nvcuvid::*;

use super::gst_cuda::CudaFrame;
use super::nv12::YuvColor;
use crate::error::{Error, Result};

type Status = c_uint;
type CreateParser = unsafe extern "C" fn(*mut CUvideoparser, *mut CUVIDPARSERPARAMS) -> Status;
type ParseData = unsafe extern "C" fn(CUvideoparser, *mut CUVIDSOURCEDATAPACKET) -> Status;
type DestroyParser = unsafe extern "C" fn(CUvideoparser) -> Status;
type CreateDecoder = unsafe extern "C" fn(*mut CUvideodecoder, *mut CUVIDDECODECREATEINFO) -> Status;
type DestroyDecoder = unsafe extern "C" fn(CUvideodecoder) -> Status;
type DecodePicture = unsafe extern "C" fn(CUvideodecoder, *mut CUVIDPICPARAMS) -> Status;
type MapFrame = unsafe extern "C" fn(CUvideodecoder, c_int, *mut c_ulonglong, *mut c_uint, *mut CUVIDPROCPARAMS) -> Status;
type UnmapFrame = unsafe extern "C" fn(CUvideodecoder, c_ulonglong) -> Status;
type DecoderCaps = unsafe extern "C" fn(*mut CUVIDDECODECAPS) -> Status;
type LockCreate = unsafe extern "C" fn(*mut CUvideoctxlock, *mut c_void) -> Status;
type LockDestroy = unsafe extern "C" fn(CUvideoctxlock) -> Status;

/// The entry points of libnvcuvid.so.1 (the library stays loaded for the process).
struct Api {
    create_parser: CreateParser,
    parse: ParseData,
    destroy_parser: DestroyParser,
    create_decoder: CreateDecoder,
    destroy_decoder: DestroyDecoder,
    decode: DecodePicture,
    map: MapFrame,
    unmap: UnmapFrame,
    caps: DecoderCaps,
    lock_create: LockCreate,
    lock_destroy: LockDestroy,
    _lib: libloading::Library,
}

fn api() -> std::result::Result<&'static Api, String> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| {
        // SAFETY: the driver's own library; the signatures are those of cuviddec.h / nvcuvid.h (SDK 12).
        unsafe {
            let lib = libloading::Library::new("libnvcuvid.so.1").map_err(|e| format!("libnvcuvid.so.1 cannot be loaded ({e})"))?;
            macro_rules! f {
                ($name:literal) => {
                    *lib.get(concat!($name, "\0").as_bytes()).map_err(|e| format!("libnvcuvid.so.1 has no {}: {e}", $name))?
                };
            }
            Ok(Api {
                create_parser: f!("cuvidCreateVideoParser"),
                parse: f!("cuvidParseVideoData"),
                destroy_parser: f!("cuvidDestroyVideoParser"),
                create_decoder: f!("cuvidCreateDecoder"),
                destroy_decoder: f!("cuvidDestroyDecoder"),
                decode: f!("cuvidDecodePicture"),
                map: f!("cuvidMapVideoFrame64"),
                unmap: f!("cuvidUnmapVideoFrame64"),
                caps: f!("cuvidGetDecoderCaps"),
                lock_create: f!("cuvidCtxLockCreate"),
                lock_destroy: f!("cuvidCtxLockDestroy"),
                _lib: lib,
            })
        }
    })
    .as_ref()
    .map_err(|e| e.clone())
}

/// Whether NVDEC can be driven here (the driver's libnvcuvid loads), else why not.
pub fn available() -> std::result::Result<(), String> {
    if std::env::var("MATTEFLOW_NVDEC").is_ok_and(|v| v == "0") {
        return Err("MATTEFLOW_NVDEC=0".into());
    }
    api().map(|_| ())
}

/// The codecs decoded here, by their caps' name, and their GStreamer parser.
pub const CODECS: [(&str, &str); 2] = [("video/x-h264", "h264parse"), ("video/x-h265", "h265parse")];

/// The parser for a stream NVDEC decodes here (H.264 or HEVC, and no profile beyond 8-bit 4:2:0 where the caps
/// name one), else None.
pub fn parser_for(caps: &gst::CapsRef) -> Option<&'static str> {
    let s = caps.structure(0)?;
    let (_, parser) = CODECS.iter().find(|(name, _)| s.name() == *name)?;
    let profile = s.get::<&str>("profile").unwrap_or("");
    let beyond = ["10", "12", "422", "444", "4:2:2", "4:4:4", "monochrome"].iter().any(|p| profile.contains(p));
    (!beyond).then_some(*parser)
}

/// The caps an appsink of access units takes (H.264 or HEVC, Annex B byte-stream, one access unit a buffer).
pub fn au_caps() -> gst::Caps {
    let mut caps = gst::Caps::new_empty();
    for (name, _) in CODECS {
        caps.make_mut().append(gst::Caps::builder(name).field("stream-format", "byte-stream").field("alignment", "au").build());
    }
    caps
}

fn check(what: &str, status: Status) -> std::result::Result<(), String> {
    if status == 0 {
        Ok(())
    } else {
        Err(format!("{what} failed (CUDA error {status})"))
    }
}

fn err(m: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("NVDEC: {m}; decode with GStreamer instead with MATTEFLOW_NVDEC=0"))
}

/// One decoder and the count of its pictures mapped now (at most `surfaces`). Its calls are made one at a time
/// (`calls`): pictures are decoded and mapped on the decoding thread and unmapped on the frames' last thread.
struct Decoder {
    api: &'static Api,
    handle: CUvideodecoder,
    ctx: Arc<CudaContext>,
    _lock: Arc<CtxLock>,
    calls: Mutex<()>,
    mapped: Mutex<u32>,
    unmapped: Condvar,
    surfaces: u32,
}

// SAFETY: the decoder handle is used under the context lock given at creation (vidLock), from any thread.
unsafe impl Send for Decoder {}
// SAFETY: as above; the count is behind a mutex.
unsafe impl Sync for Decoder {}

impl Drop for Decoder {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: created by cuvidCreateDecoder; every mapped picture holds an Arc to this, so none is left.
        unsafe { (self.api.destroy_decoder)(self.handle) };
    }
}

/// The context lock NVDEC takes around its own CUDA calls (`vidLock`), destroyed after its decoder.
struct CtxLock(CUvideoctxlock);

// SAFETY: an opaque handle the driver locks internally.
unsafe impl Send for CtxLock {}
// SAFETY: as above.
unsafe impl Sync for CtxLock {}

impl Drop for CtxLock {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: created by cuvidCtxLockCreate; its decoder (which holds an Arc of this) is gone.
            unsafe { (api.lock_destroy)(self.0) };
        }
    }
}

/// A mapped picture: unmapped (from whichever thread drops the frame last) once the GPU has read it (the
/// frame releaser waits for the stream's event before dropping).
struct Mapped {
    decoder: Arc<Decoder>,
    ptr: u64,
}

impl Drop for Mapped {
    fn drop(&mut self) {
        let d = &self.decoder;
        let _ = d.ctx.bind_to_thread();
        let _one = d.calls.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: mapped by cuvidMapVideoFrame64 on this decoder, unmapped once.
        unsafe { (d.api.unmap)(d.handle, self.ptr) };
        drop(_one);
        *d.mapped.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        d.unmapped.notify_all();
    }
}

/// What the parser's callbacks share with the decoding thread (the parser's user data).
struct State {
    api: &'static Api,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Whether pictures are mapped (else only decoded and let go: a benchmark's decoding alone).
    map: bool,
    lock: Arc<CtxLock>,
    surfaces: u32,
    decoder: Option<Arc<Decoder>>,
    /// The display size and the output surface's height (the UV plane's offset), and the colour.
    size: (u32, u32, u32),
    /// The coded size the decoder was made for.
    coded: (u32, u32),
    color: YuvColor,
    /// Decoded frames in display order, waiting for the puller.
    ready: VecDeque<(CudaFrame, Option<gst::ClockTime>)>,
    error: Option<String>,
}

/// NVDEC over one stream of access units. Frames come out in display order, mapped on `stream`.
pub struct Nvdec {
    api: &'static Api,
    parser: CUvideoparser,
    state: Box<State>,
}

// SAFETY: the parser is driven only by the thread that owns this (callbacks run inside `push`).
unsafe impl Send for Nvdec {}

impl Nvdec {
    /// A decoder for `caps` (video/x-h264 or video/x-h265, byte-stream AUs) whose pictures are mapped on
    /// `stream` (the model's), at most `surfaces` mapped at once (a further map waits for one to be unmapped).
    /// Without `map`, pictures are decoded and not mapped (nothing comes out).
    pub fn new(caps: &gst::CapsRef, stream: Arc<CudaStream>, surfaces: u32, map: bool) -> Result<Nvdec> {
        let api = api().map_err(err)?;
        let s = caps.structure(0).ok_or_else(|| err("no caps"))?;
        let codec = match s.name().as_str() {
            "video/x-h264" => cudaVideoCodec::cudaVideoCodec_H264,
            "video/x-h265" => cudaVideoCodec::cudaVideoCodec_HEVC,
            other => return Err(err(format!("{other} is not decoded here"))),
        };
        let ctx = stream.context().clone();
        ctx.bind_to_thread().map_err(err)?;
        let mut lock: CUvideoctxlock = std::ptr::null_mut();
        // SAFETY: out-parameter; our context.
        check("cuvidCtxLockCreate", unsafe { (api.lock_create)(&mut lock, ctx.cu_ctx() as *mut c_void) }).map_err(err)?;
        let lock = Arc::new(CtxLock(lock));
        let color = caps_color(caps);
        let state = Box::new(State { api, ctx, stream, map, lock, surfaces: surfaces.clamp(2, 32), decoder: None, size: (0, 0, 0), coded: (0, 0), color, ready: VecDeque::new(), error: None });
        let mut nv = Nvdec { api, parser: std::ptr::null_mut(), state };
        // SAFETY: zeroed is the documented default of every field; the callbacks get `state` (boxed: it stays put).
        let mut p: CUVIDPARSERPARAMS = unsafe { std::mem::zeroed() };
        p.CodecType = codec;
        p.ulMaxNumDecodeSurfaces = 1;
        p.ulClockRate = 1_000_000_000;
        // Two pictures held before display: decoding runs ahead of mapping (the SDK's recommended 2–4).
        p.ulMaxDisplayDelay = 2;
        p.pUserData = &mut *nv.state as *mut State as *mut c_void;
        p.pfnSequenceCallback = Some(on_sequence);
        p.pfnDecodePicture = Some(on_decode);
        p.pfnDisplayPicture = Some(on_display);
        // SAFETY: out-parameter and parameters as above.
        check("cuvidCreateVideoParser", unsafe { (api.create_parser)(&mut nv.parser, &mut p) }).map_err(err)?;
        Ok(nv)
    }

    /// Feeds one access unit (`None`: the end of the stream, flushing the pictures held for reordering) with its
    /// presentation time; the frames that became ready wait for [`Nvdec::pop`], in display order.
    pub fn push(&mut self, au: Option<(&[u8], Option<gst::ClockTime>)>) -> Result<()> {
        // SAFETY: zeroed is a valid empty packet.
        let mut pkt: CUVIDSOURCEDATAPACKET = unsafe { std::mem::zeroed() };
        match au {
            Some((data, pts)) => {
                pkt.payload = data.as_ptr();
                pkt.payload_size = data.len() as _;
                pkt.flags = CUvideopacketflags::CUVID_PKT_TIMESTAMP as _;
                pkt.timestamp = pts.map_or(-1, |t| t.nseconds() as i64);
            }
            None => pkt.flags = CUvideopacketflags::CUVID_PKT_ENDOFSTREAM as _,
        }
        // Decoding may allocate or synchronise: not while ONNX Runtime captures a CUDA graph.
        let status = crate::infer::outside_capture(|| {
            let _ = self.state.ctx.bind_to_thread();
            // SAFETY: the parser is ours; the payload outlives the call (the parser copies what it keeps).
            unsafe { (self.api.parse)(self.parser, &mut pkt) }
        });
        if let Some(e) = self.state.error.take() {
            return Err(err(e));
        }
        check("cuvidParseVideoData", status).map_err(err)
    }

    /// The next decoded frame in display order, with its presentation time.
    pub fn pop(&mut self) -> Option<(CudaFrame, Option<gst::ClockTime>)> {
        self.state.ready.pop_front()
    }
}

impl Drop for Nvdec {
    fn drop(&mut self) {
        let _ = self.state.ctx.bind_to_thread();
        // SAFETY: created in `new`; the mapped frames keep their decoder alive on their own.
        unsafe { (self.api.destroy_parser)(self.parser) };
    }
}

/// The colour of the stream as the parsed caps give it (`colorimetry`, `chroma-site`), read as the decoded
/// caps of GStreamer's decoders would be: what the caps leave out is GStreamer's default for the size.
fn caps_color(caps: &gst::CapsRef) -> YuvColor {
    let s = caps.structure(0);
    let (w, h) = s.map_or((0, 0), |s| (s.get::<i32>("width").unwrap_or(0), s.get::<i32>("height").unwrap_or(0)));
    let mut b = gst::Caps::builder("video/x-raw").field("format", "NV12").field("width", w.max(2)).field("height", h.max(2));
    for field in ["colorimetry", "chroma-site"] {
        if let Some(v) = s.and_then(|s| s.get::<String>(field).ok()) {
            b = b.field(field, v);
        }
    }
    match gstreamer_video::VideoInfo::from_caps(&b.build()) {
        Ok(info) => YuvColor::from_info(&info),
        Err(_) => YuvColor::BT709,
    }
}

/// Runs a callback's body with the parser's state; an error is kept for `push` and stops the parse (0).
///
/// # Safety
/// `user` is the `State` the parser was created with.
unsafe fn with_state(user: *mut c_void, f: impl FnOnce(&mut State) -> std::result::Result<c_int, String>) -> c_int {
    let s = &mut *(user as *mut State);
    match f(s) {
        Ok(n) => n,
        Err(e) => {
            s.error.get_or_insert(e);
            0
        }
    }
}

unsafe extern "C" fn on_sequence(user: *mut c_void, fmt: *mut CUVIDEOFORMAT) -> c_int {
    with_state(user, |s| {
        let f = &*fmt;
        let area = f.display_area;
        let (w, h) = ((area.right - area.left) as u32, (area.bottom - area.top) as u32);
        if s.decoder.is_some() && (w, h, f.coded_width, f.coded_height) == (s.size.0, s.size.1, s.coded.0, s.coded.1) {
            return Ok(f.min_num_decode_surfaces as c_int + 4);
        }
        // A new size (or the first): a new decoder. The old one lives on while its frames are mapped.
        if f.chroma_format != cudaVideoChromaFormat::cudaVideoChromaFormat_420 || f.bit_depth_luma_minus8 != 0 {
            return Err(format!("only 8-bit 4:2:0 is decoded here (this stream: {:?}, {} bits)", f.chroma_format, 8 + f.bit_depth_luma_minus8));
        }
        let mut caps: CUVIDDECODECAPS = std::mem::zeroed();
        (caps.eCodecType, caps.eChromaFormat, caps.nBitDepthMinus8) = (f.codec, f.chroma_format, 0);
        check("cuvidGetDecoderCaps", (s.api.caps)(&mut caps))?;
        if caps.bIsSupported == 0 || f.coded_width > caps.nMaxWidth || f.coded_height > caps.nMaxHeight {
            return Err(format!("this GPU's NVDEC does not decode {:?} at {}x{}", f.codec, f.coded_width, f.coded_height));
        }
        let decode_surfaces = f.min_num_decode_surfaces as u32 + 4;
        let mut ci: CUVIDDECODECREATEINFO = std::mem::zeroed();
        (ci.ulWidth, ci.ulHeight, ci.ulMaxWidth, ci.ulMaxHeight) = (f.coded_width as _, f.coded_height as _, f.coded_width as _, f.coded_height as _);
        (ci.ulNumDecodeSurfaces, ci.CodecType, ci.ChromaFormat) = (decode_surfaces as _, f.codec, f.chroma_format);
        ci.ulCreationFlags = cudaVideoCreateFlags::cudaVideoCreate_PreferCUVID as _;
        ci.OutputFormat = cudaVideoSurfaceFormat::cudaVideoSurfaceFormat_NV12;
        // Both fields woven into one frame, as GStreamer's decoders give interlaced pictures.
        ci.DeinterlaceMode = cudaVideoDeinterlaceMode::cudaVideoDeinterlaceMode_Weave;
        (ci.display_area.left, ci.display_area.top, ci.display_area.right, ci.display_area.bottom) = (area.left as _, area.top as _, area.right as _, area.bottom as _);
        (ci.ulTargetWidth, ci.ulTargetHeight) = (w as _, h as _);
        ci.ulNumOutputSurfaces = s.surfaces as _;
        ci.vidLock = s.lock.0;
        let mut handle: CUvideodecoder = std::ptr::null_mut();
        check("cuvidCreateDecoder", (s.api.create_decoder)(&mut handle, &mut ci))?;
        let d = Decoder { api: s.api, handle, ctx: s.ctx.clone(), _lock: s.lock.clone(), calls: Mutex::new(()), mapped: Mutex::new(0), unmapped: Condvar::new(), surfaces: s.surfaces };
        s.decoder = Some(Arc::new(d));
        s.size = (w, h, (h + 1) & !1);
        s.coded = (f.coded_width, f.coded_height);
        tracing::info!("decoding {:?} {w}x{h} with NVDEC, mapped on the model's stream", f.codec);
        Ok(decode_surfaces as c_int)
    })
}

unsafe extern "C" fn on_decode(user: *mut c_void, pic: *mut CUVIDPICPARAMS) -> c_int {
    with_state(user, |s| {
        let d = s.decoder.as_ref().ok_or("a picture before its sequence header")?;
        let _one = d.calls.lock().unwrap_or_else(|p| p.into_inner());
        check("cuvidDecodePicture", (s.api.decode)(d.handle, pic))?;
        Ok(1)
    })
}

unsafe extern "C" fn on_display(user: *mut c_void, disp: *mut CUVIDPARSERDISPINFO) -> c_int {
    with_state(user, |s| {
        let Some(info) = disp.as_ref().filter(|_| s.map) else { return Ok(1) };
        let d = s.decoder.clone().ok_or("a picture before its sequence header")?;
        wait_for_surface(&d)?;
        let mut vpp: CUVIDPROCPARAMS = std::mem::zeroed();
        (vpp.progressive_frame, vpp.top_field_first) = (info.progressive_frame, info.top_field_first);
        vpp.output_stream = s.stream.cu_stream() as _;
        let (mut ptr, mut pitch) = (0u64, 0u32);
        let mapped = {
            let _one = d.calls.lock().unwrap_or_else(|p| p.into_inner());
            check("cuvidMapVideoFrame", (s.api.map)(d.handle, info.picture_index, &mut ptr, &mut pitch, &mut vpp))
        };
        if let Err(e) = mapped {
            *d.mapped.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
            return Err(e);
        }
        let (w, h, surface_h) = s.size;
        let hold = Mapped { decoder: d, ptr };
        let frame = CudaFrame::of_surface(ptr, pitch as usize, pitch as usize * surface_h as usize, s.color, w, h, Box::new(hold));
        let pts = (info.timestamp >= 0).then(|| gst::ClockTime::from_nseconds(info.timestamp as u64));
        s.ready.push_back((frame, pts));
        Ok(1)
    })
}

/// Takes one of the decoder's output surfaces, waiting (up to 30 s) for a frame to be unmapped when all are.
fn wait_for_surface(d: &Decoder) -> std::result::Result<(), String> {
    let mut n = d.mapped.lock().unwrap_or_else(|p| p.into_inner());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while *n >= d.surfaces {
        if std::time::Instant::now() > deadline {
            return Err(format!("all {} decoded pictures stayed in use for 30 s", d.surfaces));
        }
        n = d.unmapped.wait_timeout(n, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
    }
    *n += 1;
    Ok(())
}

/// The device appsink's access units decoded: pulls samples, decodes them, and hands out frames in display
/// order with their presentation times (running time) and durations (from the caps' frame rate).
pub struct AuSource {
    stream: Arc<CudaStream>,
    surfaces: u32,
    map: bool,
    dec: Option<Nvdec>,
    duration: Option<gst::ClockTime>,
    flushed: bool,
}

impl AuSource {
    /// Maps on `stream` (the model's), at most `surfaces` frames in use at once.
    pub fn new(stream: Arc<CudaStream>, surfaces: u32) -> AuSource {
        AuSource { stream, surfaces, map: true, dec: None, duration: None, flushed: false }
    }

    /// Decodes without mapping the pictures: no frames come out (for benchmarks of decoding alone).
    pub fn without_maps(self) -> AuSource {
        AuSource { map: false, ..self }
    }

    /// Whether a sample's caps are access units for this decoder (else they are decoded frames).
    pub fn takes(caps: &gst::CapsRef) -> bool {
        caps.structure(0).is_some_and(|s| CODECS.iter().any(|(name, _)| s.name() == *name))
    }

    /// Feeds one sample of access units.
    pub fn push(&mut self, sample: &gst::Sample) -> Result<()> {
        let caps = sample.caps().ok_or_else(|| err("a sample without caps"))?;
        if self.dec.is_none() {
            self.dec = Some(Nvdec::new(caps, self.stream.clone(), self.surfaces, self.map)?);
            let fps = caps.structure(0).and_then(|s| s.get::<gst::Fraction>("framerate").ok()).filter(|f| f.numer() > 0 && f.denom() > 0);
            self.duration = fps.and_then(|f| gst::ClockTime::SECOND.nseconds().checked_mul(f.denom() as u64).map(|n| gst::ClockTime::from_nseconds(n / f.numer() as u64)));
        }
        let buffer = sample.buffer().ok_or_else(|| err("a sample without a buffer"))?;
        let map = buffer.map_readable().map_err(|e| err(format!("an access unit cannot be read ({e})")))?;
        let pts = crate::source::running_pts(sample);
        let dec = self.dec.as_mut().ok_or_else(|| err("no decoder"))?;
        dec.push(Some((map.as_slice(), pts)))
    }

    /// At the end of the stream: the pictures the decoder still holds (once).
    pub fn finish(&mut self) -> Result<()> {
        if let (Some(dec), false) = (self.dec.as_mut(), self.flushed) {
            self.flushed = true;
            dec.push(None)?;
        }
        Ok(())
    }

    /// The next decoded frame: its pixels on the device, presentation time and duration.
    pub fn next_frame(&mut self) -> Option<(CudaFrame, Option<gst::ClockTime>, Option<gst::ClockTime>)> {
        let duration = self.duration;
        self.dec.as_mut()?.pop().map(|(f, pts)| (f, pts, duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvdec_takes_8_bit_420_h264_and_hevc_only() {
        gst::init().unwrap();
        let caps = |name: &str, profile: Option<&str>| {
            let mut b = gst::Caps::builder(name);
            if let Some(p) = profile {
                b = b.field("profile", p);
            }
            b.build()
        };
        assert_eq!(parser_for(&caps("video/x-h264", Some("high"))), Some("h264parse"));
        assert_eq!(parser_for(&caps("video/x-h264", Some("constrained-baseline"))), Some("h264parse"));
        assert_eq!(parser_for(&caps("video/x-h264", None)), Some("h264parse"));
        assert_eq!(parser_for(&caps("video/x-h265", Some("main"))), Some("h265parse"));
        for p in ["high-10", "high-4:2:2", "high-4:4:4"] {
            assert_eq!(parser_for(&caps("video/x-h264", Some(p))), None, "{p}");
        }
        for p in ["main-10", "main-422-10", "main-444"] {
            assert_eq!(parser_for(&caps("video/x-h265", Some(p))), None, "{p}");
        }
        assert_eq!(parser_for(&caps("video/x-vp9", None)), None);
        assert!(AuSource::takes(&au_caps().iter().next().map(|s| gst::Caps::builder_full().structure(s.to_owned()).build()).unwrap()));
        assert!(!AuSource::takes(&crate::cuda::gst_cuda::device_caps()));
    }

    /// Without the driver's libnvcuvid (here and in CI) NVDEC is unavailable and says why.
    #[test]
    fn without_the_driver_nvdec_says_why() {
        if std::path::Path::new("/dev/nvidiactl").exists() {
            return;
        }
        let why = available().unwrap_err();
        assert!(why.contains("libnvcuvid.so.1") || why == "MATTEFLOW_NVDEC=0", "{why}");
    }
}
