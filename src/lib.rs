//! matteflow: video in (GStreamer), a segmentation/matting model per frame (ONNX Runtime), composite, video
//! out (GStreamer). The modules follow the stages a frame passes through:
//! [`source`] → [`preprocess`] → [`infer`] → [`postprocess`] → [`composite`] → [`sink`], assembled by
//! [`pipeline`]; [`model`] holds manifests, [`config`] what the user asked for, [`runtime`] ONNX Runtime.

pub mod composite;
pub mod batch;
pub mod config;
pub mod cuda;
pub mod doctor;
pub mod element;
pub mod engine;
pub mod error;
pub mod evenpad;
pub mod eval;
pub mod hint;
pub mod images;
pub mod infer;
pub mod live;
pub mod model;
pub mod pipeline;
pub mod probe;
pub mod postprocess;
pub mod preprocess;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod stats;

pub use config::{BackgroundSpec, ConvertConfig, Format, OutputKind};
pub use error::{Error, Result};
pub use pipeline::{convert, open_segmenter, Progress, RunControl};
