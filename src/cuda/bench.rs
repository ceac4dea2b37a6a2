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
    /// Also time the queued runs with this clip decoded beside them (see [`DecodeBeside`]).
    pub decode_beside: Option<std::path::PathBuf>,
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
        let queued = queued_runs(seg, &mut io, o.runs, false)?;
        let cold = if o.flush_l2 { queued_runs(seg, &mut io, o.runs, true)? } else { None };
        // A decoder beside the runs, paced at the model's rate (about a second of runs, after its first frames).
        let beside = match (&o.decode_beside, &queued) {
            (Some(clip), Some((gpu, _))) => {
                let decoder = DecodeBeside::start(clip, o.device_id, Duration::from_secs_f64(stats(gpu.clone()).0 / 1e3))?;
                let timed = queued_runs(seg, &mut io, o.runs.max(200), false);
                let decoded = decoder.stop();
                Some((timed?, decoded?))
            }
            _ => None,
        };
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
        if let Some((gpu, host)) = queued {
            let note = format!("GPU time per run (CUDA events); the host took {:.2} ms to queue one", host.as_secs_f64() * 1e3);
            rows.push(row("ORT CUDA EP, IO binding, runs queued (no host wait)", b, stats(gpu), o, note));
        }
        if let Some((Some((gpu, _)), (frames, fps))) = beside {
            let note = format!("GPU time per run (CUDA events); beside them nvh264dec decoded {frames} frames at {fps:.0} fps into CUDA memory of this context");
            rows.push(row("ORT CUDA EP, IO binding, runs queued, a decoder beside", b, stats(gpu), o, note));
        }
        if let Some((gpu, _)) = cold {
            let note = "GPU time per run (CUDA events); before each, a write of twice the L2 cache's size on the same stream".to_string();
            rows.push(row("ORT CUDA EP, IO binding, runs queued, L2 flushed before each", b, stats(gpu), o, note));
        }
    }
    Ok(rows)
}

/// The runs the way the GPU stages make them: queued back to back on the session's own stream with no host
/// wait between them, each between two events; with `flush_l2`, a write of twice the L2 cache's size before each
/// (outside the events), as the GPU stages' frame kernels come between the runs. Returns each run's GPU time and
/// the host's mean time to queue one; None where the session has no stream of ours (its runs always end in a wait).
fn queued_runs(seg: &mut OnnxSegmenter, io: &mut DeviceIo, runs: usize, flush_l2: bool) -> Result<Option<(Vec<Duration>, Duration)>> {
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

/// A decoder working beside the model's runs as in the pipeline: the clip through decodebin (nvh264dec) into
/// CUDA memory of our context, each frame mapped and let go, one every `period`, the clip looped. What the GPU
/// stages' runs have beside them that the model alone has not.
struct DecodeBeside {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(u64, f64)>>,
}

impl DecodeBeside {
    /// Starts decoding and returns once the first frames are out (or fails, naming why).
    fn start(clip: &std::path::Path, device_id: i32, period: Duration) -> Result<DecodeBeside> {
        use gstreamer as gst;
        use gstreamer::prelude::*;
        gst::init().map_err(|e| Error::Gst(format!("GStreamer: {e}")))?;
        let gpu = super::Gpu::open(device_id.max(0) as usize)?;
        let cuda = super::gst_cuda::GstCuda::new(&gpu)?;
        let path = clip.canonicalize().map_err(|e| Error::config(format!("--decode-beside {}: {e}", clip.display())))?;
        let uri = gst::glib::filename_to_uri(&path, None).map_err(|e| Error::config(format!("--decode-beside {}: {e}", clip.display())))?;
        let (pipeline, sink) = super::gst_cuda::decode_pipeline(&cuda, &uri, 4)?;
        pipeline.set_state(gst::State::Playing).map_err(|e| Error::Gst(format!("the decoder beside did not start: {e}")))?;
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::Builder::new()
            .name("mf-decode-beside".into())
            .spawn(move || {
                let _keep = (gpu, cuda);
                let t0 = Instant::now();
                let looped = decode_loop(&pipeline, &sink, period, &stop2, &seen2);
                let _ = pipeline.set_state(gst::State::Null);
                let n = looped?;
                Ok((n, n as f64 / t0.elapsed().as_secs_f64().max(1e-9)))
            })
            .map_err(|e| Error::Runtime(format!("decoder thread: {e}")))?;
        let d = DecodeBeside { stop, thread };
        let t = Instant::now();
        while seen.load(Ordering::Relaxed) < 5 {
            if d.thread.is_finished() || t.elapsed() > Duration::from_secs(20) {
                let (n, _) = d.stop()?;
                return Err(Error::Gst(format!("the decoder beside gave {n} frames in {:.0} s: is nvh264dec there (matteflow doctor)?", t.elapsed().as_secs_f64())));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }

    /// Stops it: the frames it decoded and at what rate.
    fn stop(self) -> Result<(u64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| Error::Runtime("the decoder thread panicked".into()))?
    }
}

/// [`DecodeBeside`]'s thread: pulls and maps frames, one every `period`, looping the clip, until `stop`; `seen`
/// counts them. Returns how many.
fn decode_loop(
    pipeline: &gstreamer::Pipeline,
    sink: &gstreamer_app::AppSink,
    period: Duration,
    stop: &AtomicBool,
    seen: &AtomicU64,
) -> Result<u64> {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    let (t0, mut n) = (Instant::now(), 0u64);
    while !stop.load(Ordering::Relaxed) {
        match sink.try_pull_sample(gst::ClockTime::from_mseconds(200)) {
            Some(sample) => {
                drop(super::gst_cuda::CudaFrame::map(&sample)?);
                n += 1;
                seen.store(n, Ordering::Relaxed);
                if let Some(wait) = (t0 + period * n as u32).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            None if sink.is_eos() => {
                pipeline
                    .seek_simple(gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT, gst::ClockTime::ZERO)
                    .map_err(|e| Error::Gst(format!("the decoder beside could not loop the clip: {e}")))?;
            }
            None => {}
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
