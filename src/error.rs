//! The library's error type. Every variant names the thing that failed and, where there is one, what the
//! user can do about it; the CLI prints `Display` as one paragraph and exits non-zero.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("input {path}: {reason}")]
    Input { path: String, reason: String },

    #[error("input {path} needs a {codec} (GStreamer's name for it), which no installed plugin provides. {hint}")]
    MissingDecoder { path: String, codec: String, hint: String },

    #[error("output {path}: {reason}")]
    Output { path: PathBuf, reason: String },

    #[error("model {model}: {reason}")]
    Model { model: String, reason: String },

    #[error("model {model} does not match its manifest {manifest}: {reason}")]
    ManifestMismatch { model: String, manifest: String, reason: String },

    #[error("manifest {path}: {reason}")]
    Manifest { path: String, reason: String },

    /// A `matteflow run` pipeline file that cannot be read or is wrong (TOML errors keep their caret lines).
    #[error("pipeline file {path}: {reason}")]
    PipelineFile { path: String, reason: String },

    #[error("ONNX Runtime: {0}")]
    Runtime(String),

    #[error("CUDA: {0}")]
    Cuda(String),

    #[error("GStreamer: {0}")]
    Gst(String),

    #[error("{0}")]
    Config(String),

    #[error("interrupted: {0}")]
    Interrupted(String),

    #[error("{context}: {source}")]
    Io { context: String, #[source] source: std::io::Error },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
}

impl From<gstreamer::glib::Error> for Error {
    fn from(e: gstreamer::glib::Error) -> Self {
        Error::Gst(e.to_string())
    }
}
impl From<gstreamer::glib::BoolError> for Error {
    fn from(e: gstreamer::glib::BoolError) -> Self {
        Error::Gst(e.to_string())
    }
}
impl From<gstreamer::StateChangeError> for Error {
    fn from(e: gstreamer::StateChangeError) -> Self {
        Error::Gst(format!("state change failed: {e}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
