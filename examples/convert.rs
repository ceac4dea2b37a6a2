//! Using matteflow as a library: convert a clip to ProRes 4444 with alpha using the embedded selfie model.
//!
//! ```text
//! cargo run --release --example convert -- assets/media/carphone_pristine.mp4 /tmp/alpha.mov
//! ```
//!
//! file ─ uridecodebin ─ RGBA ─▶ preprocess ─▶ ONNX Runtime ─▶ mask ─▶ alpha ─▶ ProRes 4444 ─ qtmux ─ file

use matteflow::model::{self, ManualSpec};
use matteflow::runtime::ProviderOptions;
use matteflow::{ConvertConfig, RunControl};

fn main() -> Result<(), matteflow::Error> {
    let mut args = std::env::args().skip(1);
    let (input, output) = match (args.next(), args.next()) {
        (Some(i), Some(o)) => (i, o),
        _ => {
            eprintln!("usage: convert INPUT OUTPUT.mov");
            std::process::exit(2);
        }
    };
    matteflow::runtime::init(None)?;
    let model = model::resolve(model::DEFAULT_MODEL, None, &ManualSpec::default())?;
    let segmenter = matteflow::open_segmenter(model, &ProviderOptions::default())?;
    let mut cfg = ConvertConfig::new(input, output);
    cfg.overwrite = true;
    let report = matteflow::convert(&cfg, segmenter, RunControl::default())?;
    print!("{}", report.table());
    Ok(())
}
