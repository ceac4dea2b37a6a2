//! Pipeline files: a whole job (input, model, matte settings, outputs, encoder, control endpoint) in TOML, run
//! with `matteflow run FILE`. Mistakes are reported with the line, column and field. Any value can be
//! overridden from the command line with `--set section.key=value`.
//!
//! ```toml
//! [input]
//! source = "/dev/video0"      # testsrc[:pattern] | /dev/videoN | rtsp://… | rtmp://… | srt://… | a file
//! width = 1280
//! height = 720
//! fps = 30
//!
//! [model]
//! name = "selfie"             # shipped name, manifest .toml, or .onnx (+ manifest)
//!
//! [matte]
//! background = "blur=20"
//! smooth = 0.5
//!
//! [[output]]
//! target = "v4l2:/dev/video10"
//! ```
//!
//! A job whose input is a file and whose only output is a file runs as a conversion (as fast as possible,
//! every frame matted) unless `mode = "live"`; everything else runs live.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Capture, ControlConfig, InputSpec, LiveConfig, OutputOptions, OutputSpec};
use crate::config::{BackgroundSpec, ConvertConfig, OutputKind};
use crate::error::{Error, Result};
use crate::postprocess::PostprocessConfig;
use crate::runtime::{DeviceChoice, ProviderOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Live,
    Convert,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    pub source: InputSpec,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<u32>,
    /// Conversions: which video stream of a file with several (0: the first), as `convert --video-stream`.
    pub video_stream: Option<usize>,
    /// Conversions: keep the frames of a truncated file that decode, as `convert --allow-short`.
    #[serde(default)]
    pub allow_short: bool,
    /// Decode into system memory and upload, even where the GPU stages could take nvcodec's frames in CUDA
    /// memory, as `--host-decode`.
    #[serde(default)]
    pub host_decode: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    pub name: String,
    pub manifest: Option<PathBuf>,
    /// auto, cpu, cuda, cuda:N
    pub device: String,
    pub threads: Option<usize>,
    pub trt_fp16: bool,
    pub trt_cache: Option<PathBuf>,
    /// Let ONNX Runtime's CPU threads spin between runs (see `ProviderOptions::spin`).
    pub ort_spin: bool,
    /// exhaustive (default), heuristic or default: see `--cudnn-search`.
    pub cudnn_search: crate::runtime::CudnnSearch,
    /// Run the model file as given, not its prepared graph from `matteflow prepare` (see `--no-prepared`).
    pub no_prepared: bool,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            name: crate::model::DEFAULT_MODEL.into(),
            manifest: None,
            device: "auto".into(),
            threads: None,
            trt_fp16: false,
            trt_cache: None,
            ort_spin: false,
            cudnn_search: Default::default(),
            no_prepared: false,
        }
    }
}

impl ModelSection {
    pub fn provider_options(&self) -> Result<ProviderOptions> {
        let device: DeviceChoice = self.device.parse().map_err(|e: String| Error::config(format!("[model] device: {e}")))?;
        Ok(ProviderOptions {
            device,
            trt_fp16: self.trt_fp16,
            trt_cache_dir: self.trt_cache.clone(),
            threads: self.threads,
            spin: self.ort_spin,
            cudnn_search: self.cudnn_search,
            ignore_prepared: self.no_prepared,
            ..Default::default()
        })
    }

    /// Loads the model with this section's device settings and warms it up (one frame through it), so that a
    /// live stream neither starts nor switches models with a stall of the provider's first run.
    pub fn open(&self, name: &str) -> Result<crate::infer::OnnxSegmenter> {
        let manifest = if name == self.name { self.manifest.as_deref() } else { None };
        let resolved = crate::model::resolve(name, manifest, &Default::default())?;
        let mut seg = crate::pipeline::open_segmenter(resolved, &self.provider_options()?)?;
        let took = seg.warm_up()?;
        tracing::info!(
            "model {} warmed up on {} in {:.0} ms (its first run, before any frame)",
            seg.model().manifest.name,
            crate::infer::Segmenter::provider(&seg).name(),
            took.as_secs_f64() * 1e3
        );
        Ok(seg)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatteSection {
    pub background: Option<BackgroundSpec>,
    /// Output kind for conversions (alpha, composite, mask, side-by-side).
    pub kind: Option<OutputKind>,
    pub smooth: f32,
    pub motion_threshold: f32,
    pub threshold: Option<(f32, f32)>,
    pub refine: bool,
    pub feather: u32,
    pub fg_estimate: bool,
    pub infer_every: u32,
    pub budget_ms: u32,
    /// Where preprocess, mask steps and compositing run: auto, cpu or gpu.
    pub stages: crate::engine::StagesChoice,
}

impl Default for MatteSection {
    fn default() -> Self {
        MatteSection {
            background: None,
            kind: None,
            smooth: 0.5,
            motion_threshold: 0.03,
            threshold: None,
            refine: false,
            feather: 0,
            fg_estimate: false,
            infer_every: 1,
            budget_ms: 40,
            stages: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub target: OutputSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSection {
    /// Statistics line every N seconds (0 = only at exit).
    pub stats_interval_s: u32,
    pub max_frames: Option<u64>,
    pub duration_s: Option<f64>,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection { stats_interval_s: 5, max_frames: None, duration_s: None }
    }
}

/// A whole job, as written in a pipeline file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub mode: Option<Mode>,
    pub input: InputSection,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub matte: MatteSection,
    #[serde(default, rename = "output")]
    pub outputs: Vec<OutputSection>,
    #[serde(default)]
    pub encode: OutputOptions,
    /// Sound: `source = "auto" | "none" | "source" | "pulse[:DEVICE]" | "alsa:hw:N" | "pipewire"`, `bitrate_kbps`, `muted`.
    #[serde(default)]
    pub audio: super::audio::AudioOptions,
    pub control: Option<ControlConfig>,
    #[serde(default)]
    pub run: RunSection,
}

/// What a job file turns into.
pub enum Job {
    Live(Box<LiveConfig>),
    /// A conversion, and whether a truncated input may give a shorter output (`allow_short`).
    Convert { config: Box<ConvertConfig>, allow_short: bool },
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut t = table;
    for p in &parts[..parts.len() - 1] {
        let entry = t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| Error::config(format!("--set {key}: '{p}' is not a section")))?;
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// TOML's error for a pipeline file as the user should read it. Its lines are kept as TOML draws them (the
/// quoted line, and the caret under the column it points at); only the last one, serde's message, is put in the
/// file's words: serde would list every field of the Rust struct behind the section ("expected one of `a`, `b`,
/// …"), so the nearest key is suggested instead.
fn explain(e: &toml::de::Error, text: &str) -> String {
    let shown = e.to_string();
    let shown = shown.trim_end();
    let message = e.message().trim_end();
    let Some(at) = shown.rfind(message).filter(|_| !message.is_empty()) else { return shown.to_string() };
    let (before, after) = (&shown[..at], &shown[at + message.len()..]);
    let place = match e.span() {
        Some(span) => where_in(text, span.start),
        // Without the text (the --set changes), TOML names the table or key on a line of its own: "in `matte`".
        None => match after.trim().strip_prefix("in `").and_then(|t| t.strip_suffix('`')) {
            Some(table) if message.starts_with("unknown field") => {
                return format!("{before}{}", plain_message(message, Place::Under(table.to_string())))
            }
            Some(key) => return format!("{before}{key}: {}", plain_message(message, Place::Top)),
            None => Place::Top,
        },
    };
    format!("{before}{}{after}", plain_message(message, place))
}

/// Serde's message in pipeline-file words: "unknown key `smoth` under [matte]: did you mean `smooth`?".
fn plain_message(message: &str, place: Place) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.replacen("missing field", "missing key", 1).replacen("duplicate field", "duplicate key", 1);
    };
    let Some((unknown, expected)) = rest.split_once('`') else { return message.to_string() };
    // The keys serde expected, each between backquotes.
    let keys: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let (what, close) = match place {
        Place::Header => (format!("unknown section [{unknown}]"), nearest(unknown, &keys).map(|k| format!("[{k}]"))),
        Place::Under(section) => (format!("unknown key `{unknown}` under [{section}]"), nearest(unknown, &keys).map(|k| format!("`{k}`"))),
        Place::Top => (format!("unknown key `{unknown}`"), nearest(unknown, &keys).map(|k| format!("`{k}`"))),
    };
    match close {
        Some(k) => format!("{what}: did you mean {k}?"),
        None => format!("{what} (pipelines/README.md lists the sections and their keys)"),
    }
}

enum Place {
    /// In a `[section]` or `[[section]]` header line.
    Header,
    /// A key under this section.
    Under(String),
    /// A key before any section.
    Top,
}

/// Where byte `at` of a pipeline file's text is.
fn where_in(text: &str, at: usize) -> Place {
    let at = at.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    if line.trim_start().starts_with('[') {
        return Place::Header;
    }
    text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map_or(Place::Top, |h| Place::Under(h.trim_matches(|c| c == '[' || c == ']').trim().to_string()))
}

/// The key `unknown` was most likely meant to be: one or two letters off (a typo), or one name inside the other
/// (`bitrate` for `bitrate_kbps`, `output_kind` for `kind`).
fn nearest<'a>(unknown: &str, keys: &[&'a str]) -> Option<&'a str> {
    let u = unknown.to_ascii_lowercase().replace('-', "_");
    let typo = keys
        .iter()
        .map(|k| (strsim::damerau_levenshtein(&u, k), *k))
        .filter(|(d, k)| *d <= (k.len().max(u.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k);
    typo.or_else(|| keys.iter().copied().filter(|k| k.len() >= 4 && u.len() >= 4 && (u.contains(k) || k.contains(&u))).max_by_key(|k| k.len()))
}

impl JobFile {
    /// Parses a pipeline file, then applies `--set key=value` overrides (values are TOML; bare words are
    /// taken as strings).
    pub fn load(path: &Path, overrides: &[String]) -> Result<JobFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::PipelineFile { path: path.display().to_string(), reason: format!("cannot be read: {e}") })?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    pub fn parse(text: &str, name: &str, overrides: &[String]) -> Result<JobFile> {
        let perr = |e: toml::de::Error| Error::PipelineFile { path: name.to_string(), reason: explain(&e, text) };
        // First as written, so mistakes in the file come with their line and column.
        let job: JobFile = toml::from_str(text).map_err(perr)?;
        if overrides.is_empty() {
            return Ok(job);
        }
        let mut table: toml::Table = toml::from_str(text).map_err(perr)?;
        for o in overrides {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| Error::config(format!("--set {o}: write section.key=value, e.g. matte.smooth=0.7")))?;
            let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(v.to_string()));
            set_path(&mut table, k.trim(), value)?;
        }
        table.try_into().map_err(|e: toml::de::Error| Error::PipelineFile {
            path: name.to_string(),
            reason: format!("with the command line's changes (--set, --input, --output, …): {}", explain(&e, "")),
        })
    }

    fn post(&self) -> PostprocessConfig {
        PostprocessConfig {
            smooth: self.matte.smooth,
            motion_threshold: self.matte.motion_threshold,
            threshold: self.matte.threshold,
            refine: self.matte.refine,
            feather: self.matte.feather,
        }
    }

    /// Decides live or conversion and builds that configuration.
    pub fn into_job(self) -> Result<Job> {
        let outputs: Vec<OutputSpec> = self.outputs.iter().map(|o| o.target.clone()).collect();
        let file_in = matches!(self.input.source, InputSpec::File(_));
        let all_files = !outputs.is_empty() && outputs.iter().all(|o| matches!(o, OutputSpec::Record(_)));
        let mode = self.mode.unwrap_or(if file_in && all_files && outputs.len() == 1 { Mode::Convert } else { Mode::Live });
        match mode {
            Mode::Convert => {
                if self.run.max_frames.is_some() || self.run.duration_s.is_some() {
                    return Err(Error::config(
                        "--max-frames and --duration (max_frames, duration_s under [run]) stop live jobs, but this \
                         pipeline file converts a file, which always takes every frame: leave them out, or play the \
                         file live with --set mode=live",
                    ));
                }
                let InputSpec::File(input) = &self.input.source else {
                    return Err(Error::config("mode = \"convert\" needs a file as [input] source; use mode = \"live\" for streams and cameras"));
                };
                let [OutputSpec::Record(out)] = outputs.as_slice() else {
                    return Err(Error::config("mode = \"convert\" writes exactly one [[output]] file; for several, write one pipeline file per output"));
                };
                let mut c = ConvertConfig::new(input.clone(), out.clone());
                c.background = self.matte.background.clone();
                c.kind = self.matte.kind;
                c.overwrite = self.encode.overwrite;
                c.matte.post = self.post();
                c.matte.fg_estimate = self.matte.fg_estimate;
                c.stages = self.matte.stages;
                c.cuda_decode = !self.input.host_decode;
                c.video_stream = self.input.video_stream.unwrap_or(0);
                Ok(Job::Convert { config: Box::new(c), allow_short: self.input.allow_short })
            }
            Mode::Live => {
                if self.input.video_stream.is_some() || self.input.allow_short {
                    return Err(Error::config(
                        "video_stream and allow_short under [input] apply to conversions (a file into one file), but \
                         this pipeline file runs live, which plays the input's first video stream as far as it decodes: \
                         leave them out",
                    ));
                }
                let mut c = LiveConfig::new(self.input.source.clone(), outputs);
                c.capture = Capture { width: self.input.width, height: self.input.height, fps: self.input.fps };
                c.host_decode = self.input.host_decode;
                c.output_options = self.encode.clone();
                c.audio = self.audio.clone();
                if let Some(b) = &self.matte.background {
                    c.matte.set_background(b.clone());
                }
                c.matte.post = self.post();
                c.matte.infer_every = self.matte.infer_every;
                c.stages = self.matte.stages;
                c.budget_ms = self.matte.budget_ms;
                c.control = self.control.clone();
                c.stats_interval_s = self.run.stats_interval_s;
                c.max_frames = self.run.max_frames;
                c.duration_s = self.run.duration_s;
                c.validate()?;
                Ok(Job::Live(Box::new(c)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASIC: &str = "[input]\nsource = \"testsrc\"\nwidth = 320\n\n[[output]]\ntarget = \"rtmp://127.0.0.1/live/x\"\n";

    #[test]
    fn parses_and_overrides() {
        let j = JobFile::parse(BASIC, "t.toml", &[]).unwrap();
        assert_eq!(j.input.width, Some(320));
        assert_eq!(j.matte.infer_every, 1);
        let j = JobFile::parse(BASIC, "t.toml", &["matte.infer_every=3".into(), "input.source=testsrc:ball".into()]).unwrap();
        assert_eq!(j.matte.infer_every, 3);
        assert_eq!(j.input.source, InputSpec::TestPattern("ball".into()));
        assert!(matches!(j.into_job().unwrap(), Job::Live(_)));
    }

    #[test]
    fn audio_section_reaches_the_live_config() {
        use crate::live::audio::AudioSpec;
        let text = format!("{BASIC}\n[audio]\nsource = \"pulse:mic.monitor\"\nbitrate_kbps = 128\nmuted = true\n");
        let Job::Live(c) = JobFile::parse(&text, "a.toml", &[]).unwrap().into_job().unwrap() else { panic!("not live") };
        assert_eq!(c.audio.source, AudioSpec::Pulse(Some("mic.monitor".into())));
        assert_eq!((c.audio.bitrate_kbps, c.audio.muted), (128, true));
        let Job::Live(c) = JobFile::parse(BASIC, "a.toml", &[]).unwrap().into_job().unwrap() else { panic!("not live") };
        assert_eq!(c.audio.source, AudioSpec::Auto);
        let e = JobFile::parse(&format!("{BASIC}\n[audio]\nsource = \"mic\"\n"), "b.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("b.toml") && e.contains("line 9") && e.contains("pulse[:DEVICE]"), "{e}");
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = JobFile::parse("[input]\nsource = \"testsrc\"\nwidht = 3\n", "bad.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("line 3") && e.contains("widht"), "{e}");
        let e = JobFile::parse("[input]\nsource = \"testsrc\"\n[[output]]\ntarget = \"ftp://x\"\n", "o.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("rtmp://"), "{e}");
        let e = JobFile::parse(BASIC, "t.toml", &["matte.smooth=lots".into()]).unwrap_err().to_string();
        assert!(e.contains("--set") && e.contains("matte.smooth: invalid type: string \"lots\", expected f32"), "{e}");
    }

    #[test]
    fn cudnn_search_reaches_the_provider_options() {
        use crate::runtime::CudnnSearch;
        let j = JobFile::parse(BASIC, "t.toml", &[]).unwrap();
        assert_eq!(j.model.provider_options().unwrap().cudnn_search, CudnnSearch::Exhaustive);
        let t = format!("{BASIC}[model]\ncudnn_search = \"heuristic\"\n");
        let j = JobFile::parse(&t, "t.toml", &[]).unwrap();
        assert_eq!(j.model.provider_options().unwrap().cudnn_search, CudnnSearch::Heuristic);
        let e = JobFile::parse(&t.replace("heuristic", "fast"), "t.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("line 8") && e.contains("fast") && e.contains("exhaustive"), "{e}");
    }

    #[test]
    fn host_decode_reaches_live_and_convert() {
        let Job::Live(c) = JobFile::parse(BASIC, "t.toml", &[]).unwrap().into_job().unwrap() else { panic!("not live") };
        assert!(!c.host_decode);
        let Job::Live(c) = JobFile::parse(BASIC, "t.toml", &["input.host_decode=true".into()]).unwrap().into_job().unwrap() else { panic!("not live") };
        assert!(c.host_decode);
        let t = "[input]\nsource = \"Cargo.toml\"\nhost_decode = true\n[[output]]\ntarget = \"out.mov\"\n";
        let Job::Convert { config, .. } = JobFile::parse(t, "c.toml", &[]).unwrap().into_job().unwrap() else { panic!("not a conversion") };
        assert!(!config.cuda_decode);
    }

    #[test]
    fn file_to_file_is_a_conversion() {
        let t = "[input]\nsource = \"Cargo.toml\"\n[[output]]\ntarget = \"out.mov\"\n";
        assert!(matches!(JobFile::parse(t, "c.toml", &[]).unwrap().into_job().unwrap(), Job::Convert { .. }));
    }
}
