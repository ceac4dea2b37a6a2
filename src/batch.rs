//! Batch conversion of folders: plan (which inputs, where their outputs go, which shard), skip what a
//! completion record says is done, convert several files at once sharing one loaded model, record, report.
//!
//! Crash safety: each output is written under a temporary name and renamed when complete, and only then is
//! its completion record written (also atomically). After a `kill -9` the next run removes stale temporary
//! files, skips outputs with a matching record, and redoes the rest.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{BackgroundSpec, ConvertConfig, Format, OutputKind};
use crate::error::{Error, Result};
use crate::infer::{BatchClient, BatchServer, OnnxSegmenter, Segmenter, BATCH_WINDOW, DEFAULT_GPU_BATCH};
use crate::pipeline::{self, Progress, RunControl};
use crate::engine::{MatteSettings, StagesChoice};

/// File name extensions taken as video when walking folders.
pub const VIDEO_EXT: &[&str] =
    &["mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "mts", "m2ts", "flv", "wmv", "ogv", "3gp", "mxf"];

#[derive(Debug, Clone, Serialize)]
pub struct BatchConfig {
    /// Files or folders (folders are walked recursively).
    pub inputs: Vec<PathBuf>,
    /// A file listing inputs, one per line (# comments allowed).
    pub list: Option<PathBuf>,
    /// Glob patterns (e.g. "footage/**/*.mov").
    pub globs: Vec<String>,
    pub out_dir: PathBuf,
    pub format: Format,
    pub kind: Option<OutputKind>,
    pub background: Option<BackgroundSpec>,
    /// Mask refinements and edge colour (the engine's settings; background and kind above, settled per file).
    pub matte: MatteSettings,
    pub overwrite: bool,
    pub jobs: usize,
    /// Frames per inference call (None: 1 on the CPU, [`DEFAULT_GPU_BATCH`] on a GPU). With several jobs the
    /// frames of concurrent files share calls; with one job, consecutive frames of the file do.
    pub batch: Option<usize>,
    /// (index, count): this process converts only the inputs whose hash falls in its shard.
    pub shard: Option<(usize, usize)>,
    /// Where the stages run (see `ConvertConfig::stages`); on the GPU, frames are batched per file.
    pub stages: StagesChoice,
    /// With the GPU stages: decoded frames stay in CUDA memory where nvcodec can.
    pub cuda_decode: bool,
}

/// One input and where its output goes.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub input: PathBuf,
    /// Output path relative to the output folder.
    pub rel: PathBuf,
    pub output: PathBuf,
    /// The batch's format, or [`Format::PngImage`] for a photo.
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Done,
    Skipped,
    Failed,
    Planned,
    Cancelled,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub input: String,
    pub output: String,
    pub status: Status,
    pub frames: u64,
    /// Duration of the video, seconds (frames / frame rate).
    pub duration_s: f64,
    pub wall_s: f64,
    pub fps: f64,
    pub model: String,
    pub device: String,
    pub error: String,
}

/// The completion record of one output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Record {
    input: String,
    input_size: u64,
    input_mtime_ns: u128,
    output_size: u64,
    frames: u64,
    duration_s: f64,
    settings: String,
}

fn ext(format: Format) -> &'static str {
    match format {
        Format::Prores => "mov",
        Format::Ffv1 => "mkv",
        Format::H264 => "mp4",
        Format::Vp9 => "webm",
        Format::Png => "",
        Format::PngImage => "png",
        Format::JpegImage => "jpg",
        Format::WebpImage => "webp",
    }
}

fn has_ext(p: &Path, list: &[&str]) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| list.contains(&e.to_ascii_lowercase().as_str()))
}

fn is_video(p: &Path) -> bool {
    has_ext(p, VIDEO_EXT) || has_ext(p, crate::images::IMAGE_EXT)
}

/// A photo (one frame) becomes a PNG image (alpha, or the composite with --output-kind composite); videos and
/// animated images the batch's format.
fn job_format(batch_format: Format, input: &Path) -> Format {
    match has_ext(input, crate::images::IMAGE_EXT).then(|| crate::images::ImageInput::sniff(input)).flatten() {
        Some(i) if !i.animated => Format::PngImage,
        _ => batch_format,
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, ignored: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::Input { path: dir.display().to_string(), reason: format!("cannot list the folder: {e}") })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            walk(&p, out, ignored)?;
        } else if is_video(&p) {
            out.push(p);
        } else {
            ignored.push(p);
        }
    }
    Ok(())
}

/// Stable shard of an output: the first 8 bytes of sha256(relative path) modulo the shard count.
pub fn shard_of(rel: &Path, count: usize) -> usize {
    let h = Sha256::digest(rel.to_string_lossy().as_bytes());
    (u64::from_be_bytes(h[..8].try_into().unwrap()) % count as u64) as usize
}

/// Reads the shard from the environment of a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`, with the count
/// in `MATTEFLOW_SHARD_COUNT`) or a Slurm job array (`SLURM_ARRAY_TASK_ID` - `SLURM_ARRAY_TASK_MIN` of
/// `SLURM_ARRAY_TASK_COUNT`).
pub fn shard_from_env() -> Result<Option<(usize, usize)>> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let num = |k: &str, v: String| {
        v.trim().parse::<usize>().map_err(|_| Error::config(format!("{k}={v} is not a whole number")))
    };
    if let Some(i) = get("JOB_COMPLETION_INDEX") {
        let i = num("JOB_COMPLETION_INDEX", i)?;
        let n = get("MATTEFLOW_SHARD_COUNT").ok_or_else(|| {
            Error::config("JOB_COMPLETION_INDEX is set but MATTEFLOW_SHARD_COUNT is not: set it to the Job's completions")
        })?;
        return Ok(Some((i, num("MATTEFLOW_SHARD_COUNT", n)?)));
    }
    if let (Some(id), Some(count)) = (get("SLURM_ARRAY_TASK_ID"), get("SLURM_ARRAY_TASK_COUNT")) {
        let min = get("SLURM_ARRAY_TASK_MIN").map(|m| num("SLURM_ARRAY_TASK_MIN", m)).transpose()?.unwrap_or(0);
        let id = num("SLURM_ARRAY_TASK_ID", id)?;
        return Ok(Some((id.checked_sub(min).ok_or_else(|| Error::config("SLURM_ARRAY_TASK_ID below SLURM_ARRAY_TASK_MIN"))?, num("SLURM_ARRAY_TASK_COUNT", count)?)));
    }
    Ok(None)
}

/// Inputs, their outputs, and the files ignored (not video by name).
pub struct Plan {
    pub jobs: Vec<Job>,
    pub ignored: Vec<PathBuf>,
    /// Jobs that belong to other shards.
    pub other_shards: usize,
}

pub fn plan(cfg: &BatchConfig) -> Result<Plan> {
    let mut pairs: Vec<(PathBuf, PathBuf)> = Vec::new(); // (input, rel without extension)
    let mut ignored = Vec::new();
    let roots: Vec<&PathBuf> = cfg.inputs.iter().filter(|p| p.is_dir()).collect();
    let many_roots = roots.len() > 1;
    let mut loose: Vec<PathBuf> = Vec::new();
    for inp in &cfg.inputs {
        if inp.is_dir() {
            let mut files = Vec::new();
            walk(inp, &mut files, &mut ignored)?;
            let root_name = std::fs::canonicalize(inp).ok().and_then(|c| c.file_name().map(PathBuf::from)).unwrap_or_default();
            for f in files {
                let rel = f.strip_prefix(inp).unwrap().to_path_buf();
                pairs.push((f, if many_roots { root_name.join(rel) } else { rel }));
            }
        } else if inp.exists() {
            loose.push(inp.clone());
        } else {
            return Err(Error::Input { path: inp.display().to_string(), reason: "no such file or folder".into() });
        }
    }
    if let Some(list) = &cfg.list {
        let text = std::fs::read_to_string(list)
            .map_err(|e| Error::Input { path: list.display().to_string(), reason: format!("cannot read the list: {e}") })?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let p = if Path::new(line).is_absolute() { PathBuf::from(line) } else { list.parent().unwrap_or(Path::new(".")).join(line) };
            loose.push(p);
        }
    }
    for pat in &cfg.globs {
        let paths = glob::glob(pat).map_err(|e| Error::config(format!("glob '{pat}': {e}")))?;
        let mut n = 0;
        for p in paths.flatten() {
            if p.is_file() {
                loose.push(p);
                n += 1;
            }
        }
        if n == 0 {
            return Err(Error::config(format!("glob '{pat}' matches no files")));
        }
    }
    for f in loose {
        let name = f.file_name().map(PathBuf::from).unwrap_or_default();
        pairs.push((f, name));
    }
    pairs.sort_by(|a, b| a.1.cmp(&b.1));
    pairs.dedup_by(|a, b| a.0 == b.0);
    for w in pairs.windows(2) {
        if w[0].1.with_extension("") == w[1].1.with_extension("") {
            return Err(Error::config(format!(
                "{} and {} would both write {}: rename one or convert them in separate runs",
                w[0].0.display(),
                w[1].0.display(),
                w[0].1.with_extension(ext(cfg.format)).display()
            )));
        }
    }
    let mut jobs = Vec::new();
    let mut other = 0;
    for (input, rel) in pairs {
        let format = job_format(cfg.format, &input);
        let rel = match format {
            Format::Png => rel.with_extension(""),
            f => rel.with_extension(ext(f)),
        };
        if let Some((i, n)) = cfg.shard {
            if shard_of(&rel, n) != i {
                other += 1;
                continue;
            }
        }
        let output = cfg.out_dir.join(&rel);
        jobs.push(Job { input, rel, output, format });
    }
    Ok(Plan { jobs, ignored, other_shards: other })
}

fn record_path(out_dir: &Path, rel: &Path) -> PathBuf {
    let h = Sha256::digest(rel.to_string_lossy().as_bytes());
    out_dir.join(".matteflow/done").join(format!("{:x}.json", h))
}

fn input_stamp(p: &Path) -> (u64, u128) {
    let m = std::fs::metadata(p).ok();
    let size = m.as_ref().map_or(0, |m| m.len());
    let mtime = m
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    (size, mtime)
}

fn output_size(p: &Path) -> Option<u64> {
    let m = std::fs::metadata(p).ok()?;
    if m.is_dir() {
        Some(std::fs::read_dir(p).ok()?.count() as u64)
    } else {
        Some(m.len())
    }
}

/// Everything that changes the output, hashed: model, format, kind, background, refinements.
pub fn settings_key(cfg: &BatchConfig, model: &str) -> String {
    let s = serde_json::json!({
        "model": model, "format": cfg.format, "kind": cfg.kind, "background": cfg.background,
        "post": cfg.matte.post, "fg": cfg.matte.fg_estimate, "version": env!("CARGO_PKG_VERSION"),
    });
    format!("{:x}", Sha256::digest(s.to_string().as_bytes()))[..16].to_string()
}

fn completed(cfg: &BatchConfig, job: &Job, settings: &str) -> Option<Record> {
    let r: Record = serde_json::from_str(&std::fs::read_to_string(record_path(&cfg.out_dir, &job.rel)).ok()?).ok()?;
    let (size, mtime) = input_stamp(&job.input);
    let ok = r.input_size == size && r.input_mtime_ns == mtime && r.settings == settings && output_size(&job.output) == Some(r.output_size);
    ok.then_some(r)
}

fn write_record(cfg: &BatchConfig, job: &Job, rec: &Record) -> Result<()> {
    let p = record_path(&cfg.out_dir, &job.rel);
    std::fs::create_dir_all(p.parent().unwrap()).map_err(|e| Error::io("creating the completion records folder", e))?;
    let tmp = p.with_extension(format!("json.partial-{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_string_pretty(rec).unwrap()).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &p).map_err(|e| Error::io(format!("writing {}", p.display()), e))
}

/// Removes temporary files a killed run left next to `output` (`.NAME.partial-PID`).
fn remove_stale_partials(output: &Path) {
    let Some(dir) = output.parent() else { return };
    let Some(name) = output.file_name().and_then(|n| n.to_str()) else { return };
    let prefix = format!(".{name}.partial-");
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let p = e.path();
                let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
    }
}

/// What the caller hears while a batch runs.
pub trait BatchObserver: Send + Sync {
    fn started(&self, _worker: usize, _job: &Job) {}
    fn progress(&self, _worker: usize, _p: Progress) {}
    fn finished(&self, _worker: usize, _report: &FileReport) {}
}

/// Runs the plan with `cfg.jobs` files in flight, all sharing `segmenter`'s session.
pub fn run(
    cfg: &BatchConfig,
    plan: &Plan,
    segmenter: &OnnxSegmenter,
    cancel: Arc<AtomicBool>,
    observer: &dyn BatchObserver,
) -> Vec<FileReport> {
    let model = segmenter.model().manifest.name.clone();
    let device = segmenter.provider().name().to_string();
    let settings = settings_key(cfg, &model);
    let queue: Mutex<VecDeque<(usize, Job)>> = Mutex::new(plan.jobs.iter().cloned().enumerate().collect());
    let results: Mutex<Vec<(usize, FileReport)>> = Mutex::new(Vec::new());
    let workers = cfg.jobs.max(1).min(plan.jobs.len().max(1));
    let gpu = segmenter.provider() != crate::runtime::Provider::Cpu;
    if gpu {
        // The provider's one-time costs (cuDNN's algorithm search: ~3 s on an H200) once, before the first file's
        // clock starts, so per-file rates and the ETA are not skewed by them.
        match segmenter.share().warm_up() {
            Ok(t) => tracing::info!("model {model} warmed up on {device} in {:.0} ms", t.as_secs_f64() * 1e3),
            Err(e) => tracing::warn!("warming model {model} up failed: {e}"),
        }
    }
    let requested = cfg.batch.unwrap_or(if gpu { DEFAULT_GPU_BATCH } else { 1 });
    // Several files at once: one batching thread gathers their frames. One file: its own consecutive frames.
    // (The GPU stages batch each file's own frames on the device.)
    let server = if workers > 1 && requested > 1 && cfg.stages != StagesChoice::Gpu {
        match BatchServer::start(segmenter.share(), requested, cfg.batch.is_some(), BATCH_WINDOW) {
            Ok(s) if s.size() > 1 => Some(s),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("batching disabled: {e}");
                None
            }
        }
    } else {
        None
    };
    // Settled (and any fallback said) once here, not once per file.
    let per_file_batch = if workers == 1 || cfg.stages == StagesChoice::Gpu {
        segmenter.share().configure_batch(requested, cfg.batch.is_some())
    } else {
        1
    };
    std::thread::scope(|s| {
        for w in 0..workers {
            let (queue, results, cancel) = (&queue, &results, cancel.clone());
            let (model, device, settings) = (model.clone(), device.clone(), settings.clone());
            let server = server.as_ref();
            s.spawn(move || loop {
                let Some((i, job)) = queue.lock().unwrap().pop_front() else { break };
                let mut rep = FileReport {
                    input: job.input.display().to_string(),
                    output: job.output.display().to_string(),
                    status: Status::Failed,
                    frames: 0,
                    duration_s: 0.0,
                    wall_s: 0.0,
                    fps: 0.0,
                    model: model.clone(),
                    device: device.clone(),
                    error: String::new(),
                };
                if cancel.load(Ordering::SeqCst) {
                    rep.status = Status::Cancelled;
                } else if let (false, Some(r)) = (cfg.overwrite, completed(cfg, &job, &settings)) {
                    rep.status = Status::Skipped;
                    rep.frames = r.frames;
                    rep.duration_s = r.duration_s;
                } else {
                    observer.started(w, &job);
                    let t = Instant::now();
                    let batcher = server.map(BatchServer::client);
                    // Several files at once on one session: their device runs go without CUDA graphs (see
                    // `OnnxSegmenter::without_graphs`).
                    let seg = if workers > 1 { segmenter.share().without_graphs() } else { segmenter.share() };
                    match convert_one(cfg, &job, seg, batcher, per_file_batch, cancel.clone(), &settings, w, observer) {
                        Ok((frames, dur)) => {
                            rep.status = Status::Done;
                            rep.frames = frames;
                            rep.duration_s = dur;
                        }
                        Err(Error::Interrupted(m)) => {
                            rep.status = Status::Cancelled;
                            rep.error = m;
                        }
                        Err(e) => rep.error = e.to_string(),
                    }
                    rep.wall_s = t.elapsed().as_secs_f64();
                    rep.fps = rep.frames as f64 / rep.wall_s.max(1e-9);
                }
                observer.finished(w, &rep);
                results.lock().unwrap().push((i, rep));
            });
        }
    });
    if let Some(st) = server.map(|s| s.stats()).filter(|st| st.calls > 0) {
        tracing::info!(
            "batched inference: {} frames in {} calls ({:.2} frames per call, at most {})",
            st.frames,
            st.calls,
            st.frames as f64 / st.calls as f64,
            st.largest
        );
    }
    let mut r = results.into_inner().unwrap();
    r.sort_by_key(|(i, _)| *i);
    r.into_iter().map(|(_, r)| r).collect()
}

fn convert_one(
    cfg: &BatchConfig,
    job: &Job,
    seg: OnnxSegmenter,
    batcher: Option<BatchClient>,
    batch: usize,
    cancel: Arc<AtomicBool>,
    settings: &str,
    worker: usize,
    observer: &dyn BatchObserver,
) -> Result<(u64, f64)> {
    if let Some(parent) = job.output.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::Output { path: job.output.clone(), reason: format!("cannot create its folder: {e}") })?;
    }
    remove_stale_partials(&job.output);
    // An output without a matching record is unfinished or stale: it is replaced.
    let _ = std::fs::remove_file(record_path(&cfg.out_dir, &job.rel));
    let mut c = ConvertConfig::new(job.input.display().to_string(), job.output.clone());
    c.format = Some(job.format);
    c.kind = cfg.kind;
    c.background = cfg.background.clone();
    c.overwrite = true;
    c.matte = cfg.matte.clone();
    c.batch = batch;
    c.stages = cfg.stages;
    c.cuda_decode = cfg.cuda_decode;
    let (input_size, input_mtime_ns) = input_stamp(&job.input);
    let mut on_progress = |p: Progress| observer.progress(worker, p);
    let ctl = RunControl { cancel, progress: Some(&mut on_progress), allow_short: false };
    let report = match batcher {
        Some(b) => pipeline::convert_shared(&c, seg, b, ctl)?,
        None => pipeline::convert(&c, seg, ctl)?,
    };
    let duration_s = if report.fps_num > 0 {
        report.frames as f64 * report.fps_den as f64 / report.fps_num as f64
    } else {
        0.0
    };
    let rec = Record {
        input: job.input.display().to_string(),
        input_size,
        input_mtime_ns,
        output_size: output_size(&job.output).unwrap_or(0),
        frames: report.frames,
        duration_s,
        settings: settings.to_string(),
    };
    write_record(cfg, job, &rec)?;
    Ok((report.frames, duration_s))
}

/// Writes the report as JSON and/or CSV.
pub fn write_reports(reports: &[FileReport], json: Option<&Path>, csv_path: Option<&Path>) -> Result<()> {
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_string_pretty(reports).unwrap()).map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
    }
    if let Some(p) = csv_path {
        let mut w = csv::Writer::from_path(p).map_err(|e| Error::config(format!("writing {}: {e}", p.display())))?;
        for r in reports {
            w.serialize(r).map_err(|e| Error::config(format!("writing {}: {e}", p.display())))?;
        }
        w.flush().map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
    }
    Ok(())
}

/// Totals for the summary table.
pub fn summary(reports: &[FileReport], wall: f64) -> String {
    let count = |s: Status| reports.iter().filter(|r| r.status == s).count();
    let frames: u64 = reports.iter().filter(|r| r.status == Status::Done).map(|r| r.frames).sum();
    // (+ 0.0: an empty float sum is -0.0, printed as "-0.0 s")
    let media: f64 = reports.iter().filter(|r| r.status == Status::Done).map(|r| r.duration_s).sum::<f64>() + 0.0;
    let done = count(Status::Done);
    format!(
        "{:<10}{:>8}\n{:<10}{:>8}\n{:<10}{:>8}\n{:<10}{:>8}\n{:<10}{:>8}\n{:<10}{:>8.1} s\n{:<10}{:>8.1}\n{:<10}{:>8.0}\n{:<10}{:>8.1} s of video\n",
        "done", done,
        "skipped", count(Status::Skipped),
        "failed", count(Status::Failed),
        "cancelled", count(Status::Cancelled),
        "frames", frames,
        "wall", wall,
        "fps", frames as f64 / wall.max(1e-9),
        "files/h", done as f64 * 3600.0 / wall.max(1e-9),
        "converted", media,
    )
}
