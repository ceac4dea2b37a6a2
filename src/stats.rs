//! Per-stage timing. Each stage runs on its own thread and adds its own time; the report divides by frames.

use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StageTimes {
    /// Time the inference thread waited for a decoded frame (decode is GStreamer's, on its own threads).
    pub decode_wait: Duration,
    pub preprocess: Duration,
    pub infer: Duration,
    pub postprocess: Duration,
    pub composite: Duration,
    /// Time spent handing frames to the encoder (blocks when the encoder is the slowest stage).
    pub encode_push: Duration,
    /// Inference calls made by the CPU-stage path (fewer than frames when frames are batched).
    pub infer_calls: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub input: String,
    pub output: String,
    pub frames: u64,
    pub width: u32,
    pub height: u32,
    pub fps_num: i32,
    pub fps_den: i32,
    pub model: String,
    pub provider: String,
    pub wall: Duration,
    pub stages: StageTimes,
    pub has_audio: bool,
}

fn ms(d: Duration, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        d.as_secs_f64() * 1000.0 / n as f64
    }
}

impl Report {
    pub fn fps(&self) -> f64 {
        self.frames as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// A small table, milliseconds per frame.
    pub fn table(&self) -> String {
        let n = self.frames;
        let s = &self.stages;
        let mut t = String::new();
        t += &format!("{:<14}{:>10}\n", "stage", "ms/frame");
        for (name, d) in [
            ("decode wait", s.decode_wait),
            ("preprocess", s.preprocess),
            ("infer", s.infer),
            ("postprocess", s.postprocess),
            ("composite", s.composite),
            ("encode push", s.encode_push),
        ] {
            t += &format!("{:<14}{:>10.2}\n", name, ms(d, n));
        }
        if s.infer_calls > 0 && s.infer_calls < n {
            t += &format!("{:<14}{:>10.2}\n", "frames/call", n as f64 / s.infer_calls as f64);
        }
        t += &format!(
            "end to end: {} frames {}x{} in {:.2} s = {:.1} fps ({} on {})\n",
            n,
            self.width,
            self.height,
            self.wall.as_secs_f64(),
            self.fps(),
            self.model,
            self.provider
        );
        t
    }
}
