//! How a hint names a setting. The same setting is a flag on the command line (`--device cuda`) and a key in a
//! pipeline file (`device = "cuda"` under [model]); an error that says what to change must name it the way the
//! command that printed it takes it. `matteflow run` reads pipeline files, so it switches every hint to the
//! pipeline-file words ([`speak`]) before anything can fail; every other command keeps the flags.

use std::sync::atomic::{AtomicBool, Ordering};

static PIPELINE_FILE: AtomicBool = AtomicBool::new(false);

/// Where the user gives settings, and so how hints name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Flags: `--device cuda` (convert, live, batch, bench…; the default).
    CommandLine,
    /// Pipeline-file keys, each with the `--set` that changes it from `matteflow run`'s command line.
    PipelineFile,
}

/// Names settings in `d`'s words from now on (for the whole process: one command runs per process).
pub fn speak(d: Dialect) {
    PIPELINE_FILE.store(d == Dialect::PipelineFile, Ordering::Relaxed);
}

pub fn dialect() -> Dialect {
    if PIPELINE_FILE.load(Ordering::Relaxed) {
        Dialect::PipelineFile
    } else {
        Dialect::CommandLine
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A string in TOML (quoted).
    Text,
    /// A number in TOML (bare).
    Number,
    /// A flag without a value; `true` in TOML.
    Switch,
}

/// A setting a hint can point at: its flag and its place in a pipeline file.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    flag: &'static str,
    section: &'static str,
    key: &'static str,
    kind: Kind,
    /// `matteflow run` takes the flag itself as well (`--overwrite`, `--output`…): hints name the flag there too.
    run_takes_flag: bool,
}

const fn file_key(flag: &'static str, section: &'static str, key: &'static str, kind: Kind) -> Setting {
    Setting { flag, section, key, kind, run_takes_flag: false }
}

const fn run_flag(flag: &'static str, section: &'static str, key: &'static str, kind: Kind) -> Setting {
    Setting { flag, section, key, kind, run_takes_flag: true }
}

pub const CAPTURE_WIDTH: Setting = file_key("--size", "input", "width", Kind::Number);
pub const CAPTURE_HEIGHT: Setting = file_key("--size", "input", "height", Kind::Number);
pub const CAPTURE_FPS: Setting = file_key("--fps", "input", "fps", Kind::Number);
pub const HOST_DECODE: Setting = file_key("--host-decode", "input", "host_decode", Kind::Switch);
pub const ALLOW_SHORT: Setting = file_key("--allow-short", "input", "allow_short", Kind::Switch);
pub const VIDEO_STREAM: Setting = file_key("--video-stream", "input", "video_stream", Kind::Number);
pub const DEVICE: Setting = file_key("--device", "model", "device", Kind::Text);
pub const MANIFEST: Setting = file_key("--manifest", "model", "manifest", Kind::Text);
pub const NO_PREPARED: Setting = file_key("--no-prepared", "model", "no_prepared", Kind::Switch);
pub const CUDNN_SEARCH: Setting = file_key("--cudnn-search", "model", "cudnn_search", Kind::Text);
pub const STAGES: Setting = file_key("--stages", "matte", "stages", Kind::Text);
pub const OUTPUT_KIND: Setting = file_key("--output-kind", "matte", "kind", Kind::Text);
pub const BACKGROUND: Setting = run_flag("--background", "matte", "background", Kind::Text);
pub const SMOOTH: Setting = file_key("--smooth", "matte", "smooth", Kind::Number);
pub const REFINE: Setting = file_key("--refine", "matte", "refine", Kind::Switch);
pub const FEATHER: Setting = file_key("--feather", "matte", "feather", Kind::Number);
pub const FG_ESTIMATE: Setting = file_key("--fg-estimate", "matte", "fg_estimate", Kind::Switch);
pub const OVERWRITE: Setting = run_flag("--overwrite", "encode", "overwrite", Kind::Switch);
pub const RTMP_START_TIMEOUT: Setting = run_flag("--rtmp-start-timeout", "encode", "rtmp_start_timeout_s", Kind::Number);
pub const VCAM_FORMAT: Setting = file_key("--vcam-format", "encode", "vcam_format", Kind::Text);
pub const AUDIO: Setting = file_key("--audio", "audio", "source", Kind::Text);
pub const CONTROL: Setting = file_key("--control", "control", "listen", Kind::Text);
pub const CONTROL_TOKEN: Setting = file_key("--control-token", "control", "token", Kind::Text);
pub const BACKGROUND_DIR: Setting = file_key("--background-dir", "control", "background_dir", Kind::Text);

impl Setting {
    fn flag_here(&self) -> bool {
        self.run_takes_flag || dialect() == Dialect::CommandLine
    }

    /// Just its name: `--refine`, or `` `refine` under [matte] ``.
    pub fn name(&self) -> String {
        if self.flag_here() {
            self.flag.to_string()
        } else {
            format!("`{}` under [{}]", self.key, self.section)
        }
    }

    /// The setting given `value`: `--device cuda`, or `` `device = "cuda"` under [model] or --set model.device=cuda ``.
    /// A switch ignores `value` (see [`Setting::on`]).
    pub fn to(&self, value: &str) -> String {
        match (self.flag_here(), self.kind) {
            (true, Kind::Switch) => self.flag.to_string(),
            (true, _) => format!("{} {value}", self.flag),
            (false, kind) => {
                let toml = match kind {
                    Kind::Text => toml::Value::String(value.to_string()).to_string(),
                    Kind::Number => value.to_string(),
                    Kind::Switch => "true".into(),
                };
                let set = if kind == Kind::Switch { "true" } else { value };
                format!("`{} = {toml}` under [{}] or --set {}.{}={set}", self.key, self.section, self.section, self.key)
            }
        }
    }

    /// A switch turned on: `--allow-short`, or `` `allow_short = true` under [input] or --set input.allow_short=true ``.
    pub fn on(&self) -> String {
        self.to("true")
    }
}

/// Several settings' names, joined by commas.
pub fn names(settings: &[Setting]) -> String {
    settings.iter().map(Setting::name).collect::<Vec<_>>().join(", ")
}
