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
    /// The first inference call alone: model warm-up (cuDNN's algorithm search, the memory arena) lands there.
    pub first_infer: Duration,
    /// Frames in that first call, and when it ended (from the pipeline's start).
    pub first_infer_frames: u64,
    pub first_infer_done: Duration,
    /// The first call's preprocess and postprocess (its one-off costs: allocations, the first device buffers).
    pub first_pre_post: Duration,
    /// When the last inference call ended (from the pipeline's start): what follows is the drain (the last
    /// frames' composite, download and encoder flush).
    pub last_infer_done: Duration,
    /// GPU stages: the model's own time on the GPU (CUDA events around each run, the first call left out), the
    /// frames it covers, and the same over the runs queued behind unfinished work (see `ModelTime`). There the
    /// host only queues the run, so `infer` is the time to queue it.
    pub model_gpu: crate::engine::ModelTime,
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

    /// Steady state, leaving the first inference call (warm-up) out: inference ms per frame, and frames per
    /// second from the end of that call to the end of the run.
    pub fn after_first_call(&self) -> Option<(f64, f64)> {
        let s = &self.stages;
        let rest = self.frames.checked_sub(s.first_infer_frames).filter(|r| *r > 0 && s.first_infer_frames > 0)?;
        let span = self.wall.checked_sub(s.first_infer_done)?.as_secs_f64().max(1e-9);
        Some((ms(s.infer.saturating_sub(s.first_infer), rest), rest as f64 / span))
    }

    /// Steady state as the model's thread sees it, from the end of the first call to the end of the last:
    /// preprocess + postprocess ms per frame, and frames per second over that span (no warm-up, no drain).
    pub fn steady(&self) -> Option<(f64, f64)> {
        let s = &self.stages;
        let rest = self.frames.checked_sub(s.first_infer_frames).filter(|r| *r > 0 && s.first_infer_frames > 0)?;
        let span = s.last_infer_done.checked_sub(s.first_infer_done).filter(|d| !d.is_zero())?.as_secs_f64();
        let pre_post = (s.preprocess + s.postprocess).saturating_sub(s.first_pre_post);
        Some((ms(pre_post, rest), rest as f64 / span))
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
        if let Some((infer, fps)) = self.after_first_call() {
            t += &format!(
                "first inference call {:.0} ms (warm-up); after it: infer {:.2} ms/frame, {:.1} fps end to end\n",
                s.first_infer.as_secs_f64() * 1e3,
                infer,
                fps
            );
        }
        let g = &s.model_gpu;
        if g.frames > 0 {
            t += &format!("model on the GPU after the first call (CUDA events): {:.2} ms/frame\n", ms(g.time, g.frames));
            let runs = g.calls.saturating_sub(1);
            if g.behind_frames > 0 {
                t += &format!(
                    "  over the {} of {runs} runs queued behind unfinished GPU work (no wait for the host inside): {:.2} ms/frame\n",
                    g.behind_calls,
                    ms(g.behind_time, g.behind_frames)
                );
            }
            t += &format!("  the GPU had finished all it was given before {} of {runs} runs\n", runs - g.behind_calls);
            let stream = [g.pre_time, g.time, g.post_time, g.gap_time].map(|d| ms(d, g.frames));
            t += &format!(
                "  the stages' stream per frame: preprocess {:.2}, model {:.2}, postprocess + composite {:.2}, between calls {:.2} ms \
                 (together {:.2} ms: {:.1} fps)\n",
                stream[0],
                stream[1],
                stream[2],
                stream[3],
                stream.iter().sum::<f64>(),
                1e3 / stream.iter().sum::<f64>().max(1e-9)
            );
        }
        if let Some((pre_post, fps)) = self.steady() {
            t += &format!(
                "steady state (first call's end to last call's end): preprocess + postprocess {:.2} ms/frame, {:.1} fps; \
                 drain after the last call {:.0} ms\n",
                pre_post,
                fps,
                self.wall.saturating_sub(s.last_infer_done).as_secs_f64() * 1e3
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report(model_gpu_ms: u64, frames: u64) -> Report {
        let model_gpu = crate::engine::ModelTime {
            calls: frames + 1,
            frames,
            time: Duration::from_millis(model_gpu_ms),
            behind_calls: frames.saturating_sub(2),
            behind_frames: frames.saturating_sub(2),
            behind_time: Duration::from_millis(model_gpu_ms.saturating_sub(20)),
            pre_time: Duration::from_millis(frames),
            post_time: Duration::from_millis(2 * frames),
            gap_time: Duration::from_millis(9),
        };
        let stages = StageTimes {
            infer: Duration::from_millis(40),
            infer_calls: 10,
            first_infer: Duration::from_millis(4),
            first_infer_frames: 1,
            first_infer_done: Duration::from_millis(100),
            last_infer_done: Duration::from_millis(190),
            model_gpu,
            ..Default::default()
        };
        Report { frames: 10, width: 64, height: 48, wall: Duration::from_millis(200), stages, ..Default::default() }
    }

    #[test]
    fn the_table_gives_the_models_gpu_time_where_the_gpu_stages_measured_it() {
        let t = report(81, 9).table();
        assert!(t.contains("model on the GPU after the first call (CUDA events): 9.00 ms/frame"), "{t}");
        // 7 of the 9 timed runs were queued behind work: 61 ms over 7 frames; the GPU waited before the other 2.
        assert!(t.contains("over the 7 of 9 runs queued behind unfinished GPU work (no wait for the host inside): 8.71 ms/frame"), "{t}");
        assert!(t.contains("the GPU had finished all it was given before 2 of 9 runs"), "{t}");
        // The stream over the same 9 frames: 1 + 9 + 2 + 1 ms a frame.
        assert!(t.contains("preprocess 1.00, model 9.00, postprocess + composite 2.00, between calls 1.00 ms (together 13.00 ms: 76.9 fps)"), "{t}");
        // The host's own infer line stays (after the first call: 36 ms over 9 frames).
        assert!(t.contains("after it: infer 4.00 ms/frame"), "{t}");
        let host = report(0, 0).table();
        assert!(!host.contains("model on the GPU"), "no GPU time measured, no line: {host}");
    }
}
