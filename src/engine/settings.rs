//! The matte options: one type shared by the CLI (convert, batch, live), pipeline files, the live control
//! endpoint and the `matteflow` element's properties. What the user asked for, not runtime state.

use serde::{Deserialize, Serialize};

use crate::config::{BackgroundSpec, OutputKind, DEFAULT_BLUR};
use crate::error::{Error, Result};
use crate::postprocess::PostprocessConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatteSettings {
    /// What goes behind the subject (composites).
    pub background: BackgroundSpec,
    /// What the output frames show.
    pub kind: OutputKind,
    /// Mask refinements: temporal smoothing, threshold, guided filter, feather.
    pub post: PostprocessConfig,
    /// Estimate the subject's true colour at soft edges so the old background does not show as a halo.
    pub fg_estimate: bool,
    /// Frames pass through unmatted.
    pub paused: bool,
    /// Run the model on every Nth frame only (budgeted scheduling; 1 = every frame the model has time for).
    pub infer_every: u32,
    /// The model in use (a shipped or installed manifest name).
    pub model: String,
}

impl Default for MatteSettings {
    fn default() -> Self {
        MatteSettings {
            background: BackgroundSpec::Blur(DEFAULT_BLUR),
            kind: OutputKind::Composite,
            post: PostprocessConfig::default(),
            fg_estimate: false,
            paused: false,
            infer_every: 1,
            model: crate::model::DEFAULT_MODEL.into(),
        }
    }
}

impl MatteSettings {
    /// The output kind a background implies where no kind was asked for: transparent → alpha, else composite.
    pub fn kind_for(bg: &BackgroundSpec) -> OutputKind {
        if *bg == BackgroundSpec::Transparent {
            OutputKind::Alpha
        } else {
            OutputKind::Composite
        }
    }

    /// Sets the background, and the kind it implies unless the kind is one that ignores backgrounds.
    pub fn set_background(&mut self, bg: BackgroundSpec) {
        if matches!(self.kind, OutputKind::Alpha | OutputKind::Composite) {
            self.kind = Self::kind_for(&bg);
        }
        self.background = bg;
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.infer_every == 0 {
            return Err(Error::config("infer-every 0 is out of range: it must be 1 or more"));
        }
        if !(0.0..=0.95).contains(&self.post.smooth) {
            return Err(Error::config(format!("smooth {} is out of range: it must be from 0 to 0.95", self.post.smooth)));
        }
        if !(0.0..=1.0).contains(&self.post.motion_threshold) {
            return Err(Error::config(format!(
                "motion threshold {} is out of range: it must be from 0 to 1",
                self.post.motion_threshold
            )));
        }
        if let Some((lo, hi)) = self.post.threshold {
            if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) || lo >= hi {
                return Err(Error::config(format!("threshold {lo},{hi} must be two values from 0 to 1, the first smaller")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_sets_the_kind_it_implies() {
        let mut s = MatteSettings::default();
        s.set_background(BackgroundSpec::Transparent);
        assert_eq!(s.kind, OutputKind::Alpha);
        s.set_background(BackgroundSpec::Colour([1, 2, 3]));
        assert_eq!(s.kind, OutputKind::Composite);
        s.kind = OutputKind::Mask;
        s.set_background(BackgroundSpec::Transparent);
        assert_eq!(s.kind, OutputKind::Mask);
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let s = MatteSettings { infer_every: 0, ..Default::default() };
        assert!(s.validate().unwrap_err().to_string().contains("infer-every"));
        let s = MatteSettings { post: PostprocessConfig { threshold: Some((0.8, 0.2)), ..Default::default() }, ..Default::default() };
        assert!(s.validate().unwrap_err().to_string().contains("threshold"));
    }
}
