//! What the user asked for (serde types, parsed from flags or pipeline files), kept apart from runtime state.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::engine::{MatteSettings, StagesChoice};
use crate::error::{Error, Result};

/// What goes behind the subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BackgroundSpec {
    Transparent,
    Colour([u8; 3]),
    Image(PathBuf),
    Video(PathBuf),
    /// Blur of the frame itself, with this radius in pixels.
    Blur(u32),
}

pub const DEFAULT_BLUR: u32 = 16;

const COLOURS: &[(&str, [u8; 3])] = &[
    ("green", [0, 177, 64]),
    ("blue", [0, 71, 187]),
    ("black", [0, 0, 0]),
    ("white", [255, 255, 255]),
    ("grey", [128, 128, 128]),
    ("gray", [128, 128, 128]),
    ("red", [255, 0, 0]),
    ("magenta", [255, 0, 255]),
];

const IMAGE_EXT: &[&str] = &["png", "jpg", "jpeg"];

impl FromStr for BackgroundSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let l = s.to_ascii_lowercase();
        if l == "transparent" || l == "none" {
            return Ok(BackgroundSpec::Transparent);
        }
        if l == "blur" {
            return Ok(BackgroundSpec::Blur(DEFAULT_BLUR));
        }
        if let Some(r) = l.strip_prefix("blur=").or_else(|| l.strip_prefix("blur:")) {
            return r
                .parse()
                .ok()
                .filter(|r| (1..=512).contains(r))
                .map(BackgroundSpec::Blur)
                .ok_or_else(|| format!("blur radius '{r}' must be a whole number from 1 to 512 (e.g. blur=20)"));
        }
        if let Some((_, rgb)) = COLOURS.iter().find(|(n, _)| *n == l) {
            return Ok(BackgroundSpec::Colour(*rgb));
        }
        if let Some(hex) = l.strip_prefix('#') {
            if hex.len() == 6 {
                if let Ok(v) = u32::from_str_radix(hex, 16) {
                    return Ok(BackgroundSpec::Colour([(v >> 16) as u8, (v >> 8) as u8, v as u8]));
                }
            }
            return Err(format!("colour '{s}' is not #RRGGBB"));
        }
        let p = PathBuf::from(s);
        let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
        if !p.exists() {
            return Err(format!(
                "background '{s}' is not a colour (green, blue, black, white, grey, #RRGGBB), 'transparent', \
                 'blur[=radius]', or an existing image/video file"
            ));
        }
        if IMAGE_EXT.contains(&ext.as_str()) {
            Ok(BackgroundSpec::Image(p))
        } else {
            Ok(BackgroundSpec::Video(p))
        }
    }
}

impl TryFrom<String> for BackgroundSpec {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<BackgroundSpec> for String {
    fn from(b: BackgroundSpec) -> String {
        match b {
            BackgroundSpec::Transparent => "transparent".into(),
            BackgroundSpec::Colour([r, g, b]) => format!("#{r:02x}{g:02x}{b:02x}"),
            BackgroundSpec::Image(p) | BackgroundSpec::Video(p) => p.display().to_string(),
            BackgroundSpec::Blur(r) => format!("blur={r}"),
        }
    }
}

/// What the output frames show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    /// The frame with the mask as its alpha channel (transparent background).
    Alpha,
    /// The subject over the chosen background, opaque.
    Composite,
    /// The mask itself, white on black.
    Mask,
    /// Original on the left, composite on the right.
    SideBySide,
}

/// Container + codec of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// ProRes 4444 in QuickTime .mov (alpha kept, 12-bit).
    Prores,
    /// PNG sequence in a folder (alpha kept, lossless).
    Png,
    /// FFV1 (BGRA) in Matroska .mkv (alpha kept, lossless).
    Ffv1,
    /// H.264 in MP4 (no alpha).
    H264,
    /// VP9 in WebM (no alpha).
    Vp9,
    /// One PNG image (alpha kept); chosen by an output name ending in .png.
    #[value(skip)]
    PngImage,
    /// One JPEG image (no alpha); chosen by .jpg/.jpeg.
    #[value(skip)]
    JpegImage,
    /// One WebP image (alpha kept); chosen by .webp.
    #[value(skip)]
    WebpImage,
}

impl Format {
    pub fn from_path(p: &Path) -> Option<Format> {
        let s = p.to_string_lossy();
        if s.ends_with('/') {
            return Some(Format::Png);
        }
        match p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("mov") => Some(Format::Prores),
            Some("mkv") => Some(Format::Ffv1),
            Some("mp4") | Some("m4v") => Some(Format::H264),
            Some("webm") => Some(Format::Vp9),
            Some("png") => Some(Format::PngImage),
            Some("jpg") | Some("jpeg") => Some(Format::JpegImage),
            Some("webp") => Some(Format::WebpImage),
            None => None,
            _ => None,
        }
    }

    pub fn keeps_alpha(self) -> bool {
        matches!(self, Format::Prores | Format::Png | Format::Ffv1 | Format::PngImage | Format::WebpImage)
    }

    /// One picture, not a video: the input must be a still image (or an animation of one frame).
    pub fn is_image(self) -> bool {
        matches!(self, Format::PngImage | Format::JpegImage | Format::WebpImage)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Format::Prores => "ProRes 4444 .mov",
            Format::Png => "PNG sequence",
            Format::Ffv1 => "FFV1 .mkv",
            Format::H264 => "H.264 .mp4",
            Format::Vp9 => "VP9 .webm",
            Format::PngImage => "PNG image",
            Format::JpegImage => "JPEG image",
            Format::WebpImage => "WebP image",
        }
    }
}

/// Everything `convert` needs to know.
#[derive(Debug, Clone)]
pub struct ConvertConfig {
    pub input: String,
    pub output: PathBuf,
    pub format: Option<Format>,
    pub kind: Option<OutputKind>,
    pub background: Option<BackgroundSpec>,
    pub overwrite: bool,
    /// Mask refinements (temporal smoothing, threshold, guided filter, feather) and edge colour estimation: the
    /// engine's settings. Background and kind come from the fields above, settled by [`ConvertConfig::resolve`].
    pub matte: MatteSettings,
    /// Where preprocess, mask steps and compositing run. On the GPU the model's input and output stay in device
    /// memory (needs the CUDA provider); auto picks them where the model runs on CUDA and they do what was asked.
    pub stages: StagesChoice,
    /// With the GPU stages: keep decoded frames in CUDA memory when GStreamer's nvcodec can (else decode to
    /// system memory and upload).
    pub cuda_decode: bool,
    /// Frames held between stages (decode → infer → composite → encode).
    pub queue: usize,
    /// Consecutive frames run in one inference call (1: one at a time). Output is the same either way.
    pub batch: usize,
    /// Deinterlace interlaced input before the model (progressive input is never touched).
    pub deinterlace: bool,
    /// Which video stream of the input to convert (0: the first).
    pub video_stream: usize,
}

impl ConvertConfig {
    pub fn new(input: impl Into<String>, output: impl Into<PathBuf>) -> Self {
        ConvertConfig {
            input: input.into(),
            output: output.into(),
            format: None,
            kind: None,
            background: None,
            overwrite: false,
            matte: MatteSettings::default(),
            stages: StagesChoice::Auto,
            cuda_decode: true,
            queue: 4,
            batch: 1,
            deinterlace: true,
            video_stream: 0,
        }
    }

    /// Settles format and the engine's settings (output kind and background) from what was given, with the
    /// defaults users expect: alpha formats get a transparent background, others a composite over green (or the
    /// given background).
    pub fn resolve(&self) -> Result<(Format, MatteSettings)> {
        let (format, kind, background) = self.resolve_kind()?;
        let settings = MatteSettings { kind, background, ..self.matte.clone() };
        settings.validate()?;
        Ok((format, settings))
    }

    fn resolve_kind(&self) -> Result<(Format, OutputKind, BackgroundSpec)> {
        let format = match self.format.or_else(|| Format::from_path(&self.output)) {
            Some(f) => f,
            None => {
                return Err(Error::Output {
                    path: self.output.clone(),
                    reason: "cannot tell the format from the name: use .mov (ProRes 4444, alpha), .mkv (FFV1, alpha), \
                             .mp4 (H.264), .webm (VP9), a folder ending in / for PNG frames, .png/.jpg/.webp for one image, or --format"
                        .into(),
                })
            }
        };
        let bg_given = self.background.clone();
        let kind = self.kind.unwrap_or(match (&bg_given, format.keeps_alpha()) {
            (Some(BackgroundSpec::Transparent), _) | (None, true) => OutputKind::Alpha,
            _ => OutputKind::Composite,
        });
        if kind == OutputKind::Alpha && !format.keeps_alpha() {
            return Err(Error::Output {
                path: self.output.clone(),
                reason: format!(
                    "{} cannot carry alpha: use .mov, .mkv or a PNG folder for {}, or choose {} with a {}",
                    format.describe(),
                    crate::hint::OUTPUT_KIND.to("alpha"),
                    crate::hint::OUTPUT_KIND.to("composite"),
                    crate::hint::BACKGROUND.name()
                ),
            });
        }
        let background = match (kind, bg_given) {
            (OutputKind::Alpha, _) => BackgroundSpec::Transparent,
            (_, Some(BackgroundSpec::Transparent)) if !format.keeps_alpha() => {
                return Err(Error::Output {
                    path: self.output.clone(),
                    reason: format!("{} cannot carry a transparent background; pick a colour, image, video or blur", format.describe()),
                })
            }
            (_, Some(b)) => b,
            (_, None) if format.keeps_alpha() => BackgroundSpec::Transparent,
            (_, None) => BackgroundSpec::Colour([0, 177, 64]),
        };
        Ok((format, kind, background))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backgrounds_parse() {
        assert_eq!("green".parse::<BackgroundSpec>().unwrap(), BackgroundSpec::Colour([0, 177, 64]));
        assert_eq!("#102030".parse::<BackgroundSpec>().unwrap(), BackgroundSpec::Colour([16, 32, 48]));
        assert_eq!("blur=7".parse::<BackgroundSpec>().unwrap(), BackgroundSpec::Blur(7));
        assert_eq!("blur".parse::<BackgroundSpec>().unwrap(), BackgroundSpec::Blur(DEFAULT_BLUR));
        let e = "nonexistent.png".parse::<BackgroundSpec>().unwrap_err();
        assert!(e.contains("not a colour"), "{e}");
        assert!("blur=0".parse::<BackgroundSpec>().is_err());
    }

    #[test]
    fn defaults_follow_the_container() {
        let c = ConvertConfig::new("in.mp4", "out.mov");
        assert_eq!(c.resolve_kind().unwrap(), (Format::Prores, OutputKind::Alpha, BackgroundSpec::Transparent));
        let c = ConvertConfig::new("in.mp4", "out.mp4");
        assert_eq!(c.resolve().unwrap().1.kind, OutputKind::Composite);
        let mut c = ConvertConfig::new("in.mp4", "out.mp4");
        c.kind = Some(OutputKind::Alpha);
        assert!(c.resolve().unwrap_err().to_string().contains("cannot carry alpha"));
        let c = ConvertConfig::new("in.mp4", "out.xyz");
        assert!(c.resolve().unwrap_err().to_string().contains("cannot tell the format"));
        let c = ConvertConfig::new("in.mp4", "frames/");
        assert_eq!(c.resolve().unwrap().0, Format::Png);
    }
}
