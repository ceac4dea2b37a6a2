//! `matteflow gpu-bench`: model-only latency and throughput on the GPU, the way the GPU frame path runs the
//! model (IO binding on device buffers), next to the host-tensor path the CPU stages use. Fresh random input
//! for every check; the device result is compared with the host result on the same input.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use super::TensorElem;
use crate::infer::{DeviceIo, LowResMask, OnnxSegmenter, Segmenter};
use crate::preprocess::ModelInput;

/// One measured configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub path: String,
    pub batch: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub per_frame_ms: f64,
    pub fps: f64,
    /// Achieved TFLOP/s when the model's GFLOP per frame is known.
    pub tflops: Option<f64>,
    /// Device-wide GPU memory in use after this configuration ran (MiB).
    pub gpu_mem_mib: f64,
    pub note: String,
}

pub struct BenchOptions {
    pub runs: usize,
    pub warmup: usize,
    pub batches: Vec<usize>,
    pub gflop_per_frame: Option<f64>,
    pub device_id: i32,
    pub host_path: bool,
    /// Idle time before each timed run.
    pub pause: Duration,
    /// Also time the queued runs with the L2 cache flushed before each.
    pub flush_l2: bool,
    /// The model input of one frame (from [`input_from_image`]); None: random values.
    pub input: Option<Vec<f32>>,
    /// One extra run of the first batch size inside cuProfilerStart/Stop (for `ncu --profile-from-start off`).
    pub profile_run: bool,
    /// Also time the queued runs with this work beside them (see [`Beside`]).
    pub beside: Option<String>,
    /// Each queued run launched only once the stream has finished the one before.
    pub wait_idle: bool,
}

pub fn gpu_mem_used_mib() -> f64 {
    cudarc::driver::result::mem_get_info().map(|(free, total)| (total - free) as f64 / 1048576.0).unwrap_or(f64::NAN)
}

/// The model input the CPU stages make of the picture at `path` (any format the `image` crate reads), for
/// timing the model on a real frame instead of random values.
pub fn input_from_image(path: &std::path::Path, manifest: &crate::model::Manifest) -> Result<Vec<f32>> {
    use crate::preprocess::Preprocess;
    let picture = image::open(path)
        .map_err(|e| Error::config(format!("--input-image {}: cannot read it as a picture: {e}", path.display())))?
        .to_rgba8();
    let (w, h) = picture.dimensions();
    let mut out = ModelInput::default();
    crate::preprocess::CpuPreprocess::new(manifest).run(picture.as_raw(), w, h, &mut out)?;
    Ok(out.data)
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn stats(mut t: Vec<Duration>) -> (f64, f64) {
    t.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(t[t.len() / 2]), ms(t[0]))
}

fn row(path: &str, batch: usize, (median, min): (f64, f64), o: &BenchOptions, note: String) -> BenchRow {
    let per = median / batch as f64;
    BenchRow {
        path: path.into(),
        batch,
        median_ms: median,
        min_ms: min,
        per_frame_ms: per,
        fps: 1000.0 / per,
        tflops: o.gflop_per_frame.map(|g| g / per),
        gpu_mem_mib: gpu_mem_used_mib(),
        note,
    }
}

/// Times `seg` (opened on the CUDA provider) as configured. The CUDA context must be current on this thread
/// (open a [`super::Gpu`] first).
pub fn run(seg: &mut OnnxSegmenter, o: &BenchOptions) -> Result<Vec<BenchRow>> {
    let m = seg.model().manifest.clone();
    let [h, w] = m.input.size;
    let shape1 = m.input_shape(h, w);
    let frame_len: usize = shape1.iter().product::<i64>() as usize;
    let mut rows = Vec::new();

    // Host tensors: what the pipeline does without --cuda-stages (copy in, run, copy out, sigmoid on the CPU).
    // A model exported with a fixed batch N > 1 takes the frame padded to N (as the pipeline does).
    // (Where the session captures CUDA graphs, host runs use none: they are the reference the device runs are
    // checked against, on the same session.)
    seg.configure_batch(1, false);
    let fixed = seg.declared_batch().max(1) as usize;
    let data = match &o.input {
        Some(d) if d.len() != frame_len => {
            return Err(Error::config(format!("the input picture made {} values; the model takes {frame_len} a frame", d.len())))
        }
        Some(d) => d.clone(),
        None => random(frame_len, 7),
    };
    let input = ModelInput { data, shape: shape1, geometry: None };
    let mut host_mask = LowResMask::default();
    let host_run = |seg: &mut OnnxSegmenter, mask: &mut LowResMask| seg.run_batch(&[&input], std::slice::from_mut(mask));
    host_run(seg, &mut host_mask)?;
    if o.host_path {
        let mut t = Vec::new();
        for i in 0..o.warmup + o.runs {
            let t0 = Instant::now();
            host_run(seg, &mut host_mask)?;
            if i >= o.warmup {
                t.push(t0.elapsed());
            }
        }
        host_run(seg, &mut host_mask)?;
        rows.push(row("ORT CUDA EP, host tensors (session.run)", fixed, stats(t), o, "includes copies and the CPU sigmoid".into()));
    }

    // Device buffers with IO binding, batch by batch.
    let declared = seg.declared_batch();
    for &b in &o.batches {
        if b > 1 && declared > 0 && declared as usize != b {
            tracing::warn!("batch {b} skipped: the model's batch dimension is fixed at {declared}");
            continue;
        }
        let mut io = DeviceIo::default();
        let mut shape = shape1;
        shape[0] = b as i64;
        let ptr = seg.device_input(&mut io, shape, o.device_id)?;
        let mut host = random(frame_len * b, 11 + b as u64);
        // Frame 0 is the host-path input, for the correctness check below.
        host[..frame_len].copy_from_slice(&input.data);
        let up = |e: cudarc::driver::DriverError| Error::Cuda(format!("upload: {e}"));
        // SAFETY: `ptr` holds frame_len · b values of the input's element type on the current device (allocated
        // by ONNX Runtime).
        match io.input_elem() {
            TensorElem::F32 => unsafe { cudarc::driver::result::memcpy_htod_sync(ptr, &host) }.map_err(up)?,
            TensorElem::F16 => {
                let h: Vec<u16> = host.iter().map(|v| half::f16::from_f32(*v).to_bits()).collect();
                unsafe { cudarc::driver::result::memcpy_htod_sync(ptr, &h) }.map_err(up)?
            }
        }
        let mut t = Vec::new();
        let mut mask = seg.run_device(&mut io)?;
        // Frame 0 against the host run: the first device run, and (below) the last, a CUDA graph's replay where the
        // device runs use one.
        let n = (mask.width * mask.height) as usize;
        if host_mask.data.len() != n {
            return Err(Error::Runtime(format!("device mask has {n} values, host mask {}", host_mask.data.len())));
        }
        let max_err = |mask: &crate::infer::DeviceMask| -> Result<f32> {
            let down = |e: cudarc::driver::DriverError| Error::Cuda(format!("download: {e}"));
            // SAFETY: the mask holds `batch` frames of n values of its element type.
            let got: Vec<f32> = match mask.elem {
                TensorElem::F32 => {
                    let mut g = vec![0f32; n];
                    unsafe { cudarc::driver::result::memcpy_dtoh_sync(&mut g, mask.frame(0)) }.map_err(down)?;
                    g
                }
                TensorElem::F16 => {
                    let mut g = vec![0u16; n];
                    unsafe { cudarc::driver::result::memcpy_dtoh_sync(&mut g, mask.frame(0)) }.map_err(down)?;
                    g.into_iter().map(|b| half::f16::from_bits(b).to_f32()).collect()
                }
            };
            Ok(got
                .iter()
                .zip(&host_mask.data)
                .map(|(g, h)| {
                    let p = if mask.sigmoid { 1.0 / (1.0 + (-g).exp()) } else { *g };
                    (p.clamp(0.0, 1.0) - h).abs()
                })
                .fold(0f32, f32::max))
        };
        let first_err = max_err(&mask)?;
        for i in 0..o.warmup + o.runs {
            if !o.pause.is_zero() {
                std::thread::sleep(o.pause);
            }
            let t0 = Instant::now();
            mask = seg.run_device(&mut io)?;
            if i >= o.warmup {
                t.push(t0.elapsed());
            }
        }
        let queued = queued_rows(seg, &mut io, o, b)?;
        if o.profile_run && rows.iter().all(|r: &BenchRow| !r.path.contains("IO binding")) {
            // SAFETY: plain driver calls on the current context; they only mark the profiled range.
            unsafe { cudarc::driver::sys::cuProfilerStart() }.result().map_err(|e| Error::Cuda(format!("cuProfilerStart: {e}")))?;
            mask = seg.run_device(&mut io)?;
            unsafe { cudarc::driver::sys::cuProfilerStop() }.result().map_err(|e| Error::Cuda(format!("cuProfilerStop: {e}")))?;
        }
        let last_err = max_err(&mask)?;
        let mut how = if o.pause.is_zero() { String::new() } else { format!("; {} ms idle before each run", o.pause.as_millis()) };
        if o.input.is_some() {
            how += "; input: the picture given";
        }
        rows.push(row("ORT CUDA EP, IO binding on device buffers", b, stats(t), o, format!("max |device − host| of frame 0: {first_err:.2e} (first run), {last_err:.2e} (last){how}")));
        rows.extend(queued);
    }
    Ok(rows)
}

/// The rows of batch `b`'s runs queued on the session's stream (see [`queued_runs`]): as they are, with the work
/// `o.beside` names beside them and after it, and with the L2 cache flushed before each (`o.flush_l2`).
fn queued_rows(seg: &mut OnnxSegmenter, io: &mut DeviceIo, o: &BenchOptions, b: usize) -> Result<Vec<BenchRow>> {
    let queued = queued_runs(seg, io, o.runs, false, o.wait_idle)?;
    let cold = if o.flush_l2 { queued_runs(seg, io, o.runs, true, o.wait_idle)? } else { None };
    // Other work beside the runs, paced at the model's rate (about a second of runs, after its first items).
    let beside = match (&o.beside, &queued) {
        (Some(spec), Some((gpu, _))) => {
            let work = Beside::start(spec, o.device_id, seg.compute_stream(), Duration::from_secs_f64(stats(gpu.clone()).0 / 1e3))?;
            let timed = queued_runs(seg, io, o.runs.max(200), false, o.wait_idle);
            let done = work.stop();
            // And once it has stopped: does what it left behind still slow the runs?
            let after = queued_runs(seg, io, o.runs.max(200), false, o.wait_idle)?;
            Some((timed?, done?, spec.clone(), after))
        }
        _ => None,
    };
    let mut rows = Vec::new();
    if let Some((gpu, host)) = queued {
        let mut note = format!("GPU time per run (CUDA events); the host took {:.2} ms to queue one", host.as_secs_f64() * 1e3);
        if o.wait_idle {
            note += "; each launched once the stream had finished the one before";
        }
        if gpu.len() >= 100 {
            // Over a long series: does the GPU slow as it keeps at it (clocks, heat)?
            let tenth = gpu.len() / 10;
            let (first, last) = (stats(gpu[..tenth].to_vec()).0, stats(gpu[gpu.len() - tenth..].to_vec()).0);
            note += &format!("; median of the first {tenth} runs {first:.2} ms, of the last {tenth} {last:.2} ms");
        }
        rows.push(row("ORT CUDA EP, IO binding, runs queued (no host wait)", b, stats(gpu), o, note));
    }
    if let Some((Some((gpu, _)), (n, rate), spec, after)) = beside {
        let note = format!("GPU time per run (CUDA events); beside them, in this CUDA context: {spec}, {n} times at {rate:.0} a second");
        rows.push(row("ORT CUDA EP, IO binding, runs queued, other work beside", b, stats(gpu), o, note));
        if let Some((gpu, _)) = after {
            rows.push(row("ORT CUDA EP, IO binding, runs queued, after the work beside stopped", b, stats(gpu), o, format!("GPU time per run (CUDA events); {spec} had stopped")));
        }
    }
    if let Some((gpu, _)) = cold {
        let note = "GPU time per run (CUDA events); before each, a write of twice the L2 cache's size on the same stream".to_string();
        rows.push(row("ORT CUDA EP, IO binding, runs queued, L2 flushed before each", b, stats(gpu), o, note));
    }
    Ok(rows)
}

/// The runs the way the GPU stages make them: queued back to back on the session's own stream with no host
/// wait between them, each between two events; with `flush_l2`, a write of twice the L2 cache's size before each
/// (outside the events), as the GPU stages' frame kernels come between the runs; with `wait_idle`, each launched
/// only once the stream has finished the one before. Returns each run's GPU time and the host's mean time to
/// queue one; None where the session has no stream of ours (its runs always end in a wait).
fn queued_runs(seg: &mut OnnxSegmenter, io: &mut DeviceIo, runs: usize, flush_l2: bool, wait_idle: bool) -> Result<Option<(Vec<Duration>, Duration)>> {
    let Some(ours) = seg.compute_stream() else { return Ok(None) };
    let cuda = |x: cudarc::driver::DriverError| Error::Cuda(format!("queued runs: {x}"));
    let mark = || ours.record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(cuda);
    let mut flush = match flush_l2 {
        true => {
            let l2 = ours.context().attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE).map_err(cuda)?;
            Some(ours.alloc_zeros::<u8>(2 * l2.max(1) as usize).map_err(cuda)?)
        }
        false => None,
    };
    ours.synchronize().map_err(cuda)?;
    let (mut events, mut host) = (Vec::with_capacity(runs), Duration::ZERO);
    for _ in 0..runs.max(1) {
        if let Some(f) = flush.as_mut() {
            ours.memset_zeros(f).map_err(cuda)?;
        }
        if wait_idle {
            ours.synchronize().map_err(cuda)?;
        }
        let start = mark()?;
        let t0 = Instant::now();
        seg.run_device_on(io, &ours)?;
        host += t0.elapsed();
        events.push((start, mark()?));
    }
    ours.synchronize().map_err(cuda)?;
    let ms = |(a, b): &(cudarc::driver::CudaEvent, cudarc::driver::CudaEvent)| a.elapsed_ms(b).map(|ms| Duration::from_secs_f64(ms as f64 / 1e3)).map_err(cuda);
    let gpu = events.iter().map(ms).collect::<Result<Vec<_>>>()?;
    Ok(Some((gpu, host / events.len() as u32)))
}

/// Work beside the model's runs in the same CUDA context, one item every `period` on a thread of its own: what
/// the GPU stages' runs have beside them that the model alone has not, and pieces of it. `spec`:
/// `decode:CLIP` — the clip decoded as the pipeline decodes it (nvh264dec into CUDA memory; each frame mapped
/// and let go; looped); `gst:DESCRIPTION` — any pipeline ending in `appsink name=sink` (CUDA elements get this
/// context; CUDA frames are mapped), `gst-own:` the same with GStreamer's own context; `memset`, `kernel`,
/// `copy`, `upload`, `alloc` — one 1080p NV12 frame's worth of that on a stream of its own (a memset, our RGBA →
/// I420 kernel, a device-to-device copy, a copy from page-locked memory, a cuMemAlloc and cuMemFree), waited for;
/// `memset-null` on the legacy default stream, `memset-ctx` in a context of its own. `NxSPEC` does N items back
/// to back every N periods. What it showed (IS-Net, H200): any kernel on another stream of the model's context
/// makes every later graph run ~0.3 ms slower (docs/BENCHMARKS.md, twelfth session).
struct Beside {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(u64, f64)>>,
}

/// One 1080p NV12 frame's bytes.
const FRAME_BYTES: usize = 1920 * 1080 * 3 / 2;

impl Beside {
    /// Starts the work and returns once its first items are done (or fails, naming why).
    fn start(spec: &str, device_id: i32, model_stream: Option<Arc<cudarc::driver::CudaStream>>, period: Duration) -> Result<Beside> {
        // `NxSPEC`: N items back to back every N periods (bursts) instead of one every period.
        let (burst, spec) = match spec.split_once('x') {
            Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => (n.parse::<u32>().unwrap_or(1).max(1), rest),
            _ => (1, spec),
        };
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let gpu = super::Gpu::open(device_id.max(0) as usize)?;
        let work: Box<dyn FnOnce() -> Result<u64> + Send> = match spec.split_once(':') {
            Some((kind @ ("nvdec" | "nvdec-own" | "nvdec-nomap"), clip)) => {
                let model = model_stream.ok_or_else(|| Error::config(format!("--beside {spec}: the session runs on no stream of ours")))?;
                let stream = match kind {
                    "nvdec-own" => model.context().new_stream().map_err(|e| Error::Cuda(format!("--beside {spec}: {e}")))?,
                    _ => model,
                };
                let (pipeline, sink) = au_pipeline(clip)?;
                let map = kind != "nvdec-nomap";
                Box::new(move || {
                    use gstreamer::prelude::*;
                    let looped = nvdec_loop(&pipeline, &sink, &stream, map, period, burst, &stop2, &seen2);
                    let _ = pipeline.set_state(gstreamer::State::Null);
                    looped
                })
            }
            Some(("decode" | "gst" | "gst-own", _)) => {
                let (pipeline, sink, cuda) = beside_pipeline(spec, &gpu, 4.max(2 * burst))?;
                Box::new(move || {
                    use gstreamer::prelude::*;
                    let _keep = cuda;
                    let looped = decode_loop(&pipeline, &sink, period, burst, &stop2, &seen2);
                    let _ = pipeline.set_state(gstreamer::State::Null);
                    looped
                })
            }
            _ => {
                let kind = match spec {
                    "memset" | "memset-null" | "memset-ctx" | "kernel" | "copy" | "upload" | "alloc" => spec.to_string(),
                    _ => {
                        return Err(Error::config(format!(
                            "--beside {spec}: say decode:CLIP, nvdec:CLIP, nvdec-own:CLIP, nvdec-nomap:CLIP, gst:DESCRIPTION, gst-own:DESCRIPTION, memset, memset-null, memset-ctx, kernel, copy, upload or alloc"
                        )))
                    }
                };
                Box::new(move || synthetic_loop(&kind, &gpu, period, burst, &stop2, &seen2))
            }
        };
        let thread = std::thread::Builder::new()
            .name("mf-beside".into())
            .spawn(move || {
                let t0 = Instant::now();
                let n = work()?;
                Ok((n, n as f64 / t0.elapsed().as_secs_f64().max(1e-9)))
            })
            .map_err(|e| Error::Runtime(format!("thread beside: {e}")))?;
        let b = Beside { stop, thread };
        let t = Instant::now();
        while seen.load(Ordering::Relaxed) < 5 {
            if b.thread.is_finished() || t.elapsed() > Duration::from_secs(20) {
                let (n, _) = b.stop()?;
                return Err(Error::Gst(format!("--beside {spec} did {n} items in {:.0} s: is its decoder there (matteflow doctor)?", t.elapsed().as_secs_f64())));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(b)
    }

    /// Stops it: how many items it did, and at what rate.
    fn stop(self) -> Result<(u64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| Error::Runtime("the thread beside panicked".into()))?
    }
}

/// The playing pipeline of a `decode:` or `gst:` spec, its appsink, and the CUDA context handed to its elements.
fn beside_pipeline(spec: &str, gpu: &super::Gpu, max_buffers: u32) -> Result<(gstreamer::Pipeline, gstreamer_app::AppSink, super::gst_cuda::GstCuda)> {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    gst::init().map_err(|e| Error::Gst(format!("GStreamer: {e}")))?;
    let cuda = super::gst_cuda::GstCuda::new(gpu)?;
    let (pipeline, sink) = match spec.split_once(':') {
        Some(("decode", clip)) => {
            let path = std::path::Path::new(clip).canonicalize().map_err(|e| Error::config(format!("--beside {spec}: {e}")))?;
            let uri = gst::glib::filename_to_uri(&path, None).map_err(|e| Error::config(format!("--beside {spec}: {e}")))?;
            super::gst_cuda::decode_pipeline(&cuda, &uri, max_buffers)?
        }
        _ => {
            let desc = spec.split_once(':').map_or("", |(_, d)| d);
            let bad = |m: String| Error::config(format!("--beside {spec}: {m}"));
            let p = gst::parse::launch(desc).map_err(|e| bad(e.to_string()))?.downcast::<gst::Pipeline>().map_err(|_| bad("not a pipeline".into()))?;
            if spec.starts_with("gst:") {
                cuda.attach(&p);
            }
            let sink = p.by_name("sink").and_then(|s| s.downcast::<gstreamer_app::AppSink>().ok()).ok_or_else(|| bad("no appsink named sink".into()))?;
            (p, sink)
        }
    };
    pipeline.set_state(gst::State::Playing).map_err(|e| Error::Gst(format!("--beside {spec} did not start: {e}")))?;
    Ok((pipeline, sink, cuda))
}

/// [`Beside`]'s pipeline loop: pulls frames (mapping those in CUDA memory), one every `period` (or `burst` at a
/// time every `burst` periods), looping the clip, until `stop`; `seen` counts them. Returns how many.
fn decode_loop(
    pipeline: &gstreamer::Pipeline,
    sink: &gstreamer_app::AppSink,
    period: Duration,
    burst: u32,
    stop: &AtomicBool,
    seen: &AtomicU64,
) -> Result<u64> {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    let (t0, mut n) = (Instant::now(), 0u64);
    while !stop.load(Ordering::Relaxed) {
        match sink.try_pull_sample(gst::ClockTime::from_mseconds(200)) {
            Some(sample) => {
                let on_gpu = sample.caps().and_then(|c| c.features(0).map(|f| f.contains("memory:CUDAMemory"))).unwrap_or(false);
                if on_gpu {
                    drop(super::gst_cuda::CudaFrame::map(&sample)?);
                }
                n += 1;
                seen.store(n, Ordering::Relaxed);
                if n % burst as u64 == 0 {
                    pace(t0, period, n);
                }
            }
            None if sink.is_eos() => {
                pipeline
                    .seek_simple(gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT, gst::ClockTime::ZERO)
                    .map_err(|e| Error::Gst(format!("the pipeline beside could not loop the clip: {e}")))?;
            }
            None => {}
        }
    }
    Ok(n)
}

/// A playing pipeline giving `clip`'s H.264 access units (byte-stream) to an appsink, for [`nvdec_loop`].
fn au_pipeline(clip: &str) -> Result<(gstreamer::Pipeline, gstreamer_app::AppSink)> {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    gst::init().map_err(|e| Error::Gst(format!("GStreamer: {e}")))?;
    let desc = format!("filesrc location=\"{clip}\" ! parsebin ! h264parse ! appsink name=sink max-buffers=8 sync=false");
    let bad = |m: String| Error::config(format!("--beside nvdec:{clip}: {m}"));
    let p = gst::parse::launch(&desc).map_err(|e| bad(e.to_string()))?.downcast::<gst::Pipeline>().map_err(|_| bad("not a pipeline".into()))?;
    let sink = p.by_name("sink").and_then(|s| s.downcast::<gstreamer_app::AppSink>().ok()).ok_or_else(|| bad("no appsink".into()))?;
    sink.set_caps(Some(&super::nvdec::au_caps()));
    p.set_state(gst::State::Playing).map_err(|e| bad(format!("did not start: {e}")))?;
    Ok((p, sink))
}

/// [`Beside`]'s NVDEC loop: the clip's access units decoded by [`super::nvdec`] (pictures mapped on `stream` and
/// let go once the stream has done the map, or with `map` false not mapped), one picture every `period` (or
/// `burst` every `burst` periods), looping the clip with a new decoder, until `stop`; `seen` counts them.
#[allow(clippy::too_many_arguments)]
fn nvdec_loop(
    pipeline: &gstreamer::Pipeline,
    sink: &gstreamer_app::AppSink,
    stream: &Arc<cudarc::driver::CudaStream>,
    map: bool,
    period: Duration,
    burst: u32,
    stop: &AtomicBool,
    seen: &AtomicU64,
) -> Result<u64> {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    let fresh = || {
        let s = super::nvdec::AuSource::new(stream.clone(), 8);
        if map { s } else { s.without_maps() }
    };
    let (t0, mut n, mut dec) = (Instant::now(), 0u64, fresh());
    let cuda = |x: cudarc::driver::DriverError| Error::Cuda(format!("--beside nvdec: {x}"));
    while !stop.load(Ordering::Relaxed) {
        match sink.try_pull_sample(gst::ClockTime::from_mseconds(200)) {
            Some(sample) => {
                dec.push(&sample)?;
                while let Some((frame, _, _)) = dec.next_frame() {
                    stream.record_event(None).map_err(cuda)?.synchronize().map_err(cuda)?;
                    drop(frame);
                }
                n += 1;
                seen.store(n, Ordering::Relaxed);
                if n % burst as u64 == 0 {
                    pace(t0, period, n);
                }
            }
            None if sink.is_eos() => {
                dec = fresh();
                pipeline
                    .seek_simple(gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT, gst::ClockTime::ZERO)
                    .map_err(|e| Error::Gst(format!("the pipeline beside could not loop the clip: {e}")))?;
            }
            None => {}
        }
    }
    Ok(n)
}

/// Sleeps until item `n`'s time (`t0 + n · period`), if it has not passed.
fn pace(t0: Instant, period: Duration, n: u64) {
    if let Some(wait) = (t0 + period * n as u32).checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

/// [`Beside`]'s synthetic loop: one frame's worth of `kind` on a stream of its own, waited for, one every
/// `period` (or `burst` back to back every `burst` periods), until `stop`; `seen` counts them. Returns how many.
fn synthetic_loop(kind: &str, gpu: &super::Gpu, period: Duration, burst: u32, stop: &AtomicBool, seen: &AtomicU64) -> Result<u64> {
    let cuda = |x: cudarc::driver::DriverError| Error::Cuda(format!("--beside {kind}: {x}"));
    let st = gpu.ctx.new_stream().map_err(cuda)?;
    let src = st.alloc_zeros::<u8>(FRAME_BYTES).map_err(cuda)?;
    let mut dst = st.alloc_zeros::<u8>(FRAME_BYTES).map_err(cuda)?;
    // SAFETY: page-locked host memory, zeroed below before any read.
    let mut host = unsafe { gpu.ctx.alloc_pinned::<u8>(FRAME_BYTES) }.map_err(cuda)?;
    host.as_mut_slice().map_err(cuda)?.fill(0);
    let (w, h) = (1920u32, 1080u32);
    let rgba = st.alloc_zeros::<u8>((w * h * 4) as usize).map_err(cuda)?;
    let conv = super::i420::I420Out::for_size(w, h).ok_or_else(|| Error::Cuda("no I420 layout for 1080p".into()))?.conv;
    let on = gpu.on_stream(st.clone());
    // `memset-ctx`: a context of its own on the same device, with a frame there.
    let (mut other, mut other_buf) = (std::ptr::null_mut(), 0);
    if kind == "memset-ctx" {
        // SAFETY: a new context on this device, made current for this thread only; freed at the end.
        unsafe {
            let mut dev = 0;
            cudarc::driver::sys::cuCtxGetDevice(&mut dev).result().map_err(cuda)?;
            cudarc::driver::sys::cuCtxCreate_v4(&mut other, std::ptr::null_mut(), 0, dev).result().map_err(cuda)?;
            cudarc::driver::sys::cuMemAlloc_v2(&mut other_buf, FRAME_BYTES).result().map_err(cuda)?;
        }
    }
    let (t0, mut n) = (Instant::now(), 0u64);
    while !stop.load(Ordering::Relaxed) {
        match kind {
            "memset" => st.memset_zeros(&mut dst).map_err(cuda)?,
            "kernel" => on.rgba_to_i420(&rgba, w, h, &conv, &mut dst)?,
            // SAFETY: `dst` holds FRAME_BYTES; on the legacy default stream, waited for at once.
            "memset-null" => unsafe {
                let (p, _g) = cudarc::driver::DevicePtrMut::device_ptr_mut(&mut dst, &st);
                cudarc::driver::sys::cuMemsetD8Async(p, 0, FRAME_BYTES, std::ptr::null_mut()).result().map_err(cuda)?;
                cudarc::driver::sys::cuStreamSynchronize(std::ptr::null_mut()).result().map_err(cuda)?;
            },
            // SAFETY: `other_buf` holds FRAME_BYTES in the other context, current on this thread.
            "memset-ctx" => unsafe {
                cudarc::driver::sys::cuMemsetD8Async(other_buf, 0, FRAME_BYTES, std::ptr::null_mut()).result().map_err(cuda)?;
                cudarc::driver::sys::cuStreamSynchronize(std::ptr::null_mut()).result().map_err(cuda)?;
            },
            "copy" => st.memcpy_dtod(&src, &mut dst).map_err(cuda)?,
            "upload" => st.memcpy_htod(&host, &mut dst).map_err(cuda)?,
            _ => {
                let mut p = 0;
                // SAFETY: a plain allocation of FRAME_BYTES in the current context, freed at once.
                unsafe {
                    cudarc::driver::sys::cuMemAlloc_v2(&mut p, FRAME_BYTES).result().map_err(cuda)?;
                    cudarc::driver::sys::cuMemFree_v2(p).result().map_err(cuda)?;
                }
            }
        }
        n += 1;
        if n % burst as u64 == 0 {
            st.synchronize().map_err(cuda)?;
            seen.store(n, Ordering::Relaxed);
            pace(t0, period, n);
        }
    }
    if !other.is_null() {
        // SAFETY: the buffer and context made above; nothing else uses them.
        unsafe {
            cudarc::driver::sys::cuMemFree_v2(other_buf);
            cudarc::driver::sys::cuCtxDestroy_v2(other);
        }
    }
    Ok(n)
}

/// The rows as a markdown table.
pub fn table(model: &str, rows: &[BenchRow]) -> String {
    let mut s = String::from("| model | path | batch | median ms | min ms | ms/frame | frames/s | TFLOP/s | GPU MiB | note |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        s += &format!(
            "| {model} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {:.0} | {} |\n",
            r.path,
            r.batch,
            r.median_ms,
            r.min_ms,
            r.per_frame_ms,
            r.fps,
            r.tflops.map_or("–".into(), |t| format!("{t:.1}")),
            r.gpu_mem_mib,
            r.note
        );
    }
    s
}

/// Ends the process with a report of every thread's state when `what` has not finished after `secs`: a hang
/// on the GPU machine then says where it is instead of using up the device time. Drop the guard when done.
pub struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

impl Watchdog {
    pub fn start(what: &str, secs: u64) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let what = what.to_string();
        let _ = std::thread::Builder::new().name("mf-watchdog".into()).spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs)) {
                eprintln!("watchdog: '{what}' did not finish in {secs} s; threads:");
                if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
                    for t in rd.flatten() {
                        let p = t.path();
                        let rd = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
                        let stat = rd("stat");
                        let state = stat.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("?").to_string();
                        eprintln!("  {} {:<16} state {} wchan {}", t.file_name().to_string_lossy(), rd("comm").trim(), state, rd("wchan").trim());
                        for l in rd("stack").lines().take(6) {
                            eprintln!("      {l}");
                        }
                    }
                }
                std::process::exit(3);
            }
        });
        Watchdog(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{CpuPreprocess, Preprocess};

    fn isnet() -> crate::model::Manifest {
        crate::model::Manifest::from_toml(include_str!("../../models/isnet.toml"), "isnet.toml").unwrap()
    }

    #[test]
    fn an_input_picture_becomes_what_the_cpu_stages_make_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frame.png");
        let (w, h) = (96u32, 54u32);
        let picture = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([(x * 2) as u8, (y * 4) as u8, ((x + y) % 256) as u8, 255]));
        picture.save(&path).unwrap();
        let m = isnet();
        let got = input_from_image(&path, &m).unwrap();
        let mut want = ModelInput::default();
        CpuPreprocess::new(&m).run(picture.as_raw(), w, h, &mut want).unwrap();
        let [mh, mw] = m.input.size;
        assert_eq!(got.len(), 3 * mh as usize * mw as usize, "one frame of the model's input");
        assert_eq!(got, want.data);
        assert!(got.iter().any(|v| *v != got[0]), "the picture's content, not a constant");
    }

    #[test]
    fn an_input_that_is_not_a_picture_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.png");
        std::fs::write(&path, b"not a picture").unwrap();
        let e = input_from_image(&path, &isnet()).unwrap_err().to_string();
        assert!(e.contains("--input-image") && e.contains("notes.png") && e.contains("cannot read it as a picture"), "{e}");
    }
}
