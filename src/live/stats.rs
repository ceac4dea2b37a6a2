//! Live statistics: counters, per-stage latency and glass-to-glass latency (capture timestamp → the frame
//! reaching an output's sink), summarised as p50/p95/max over a window and over the whole run, and rendered as
//! Prometheus text for the control endpoint.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Resident memory (bytes) and CPU time (user + system, seconds) of this process.
pub fn process_usage() -> (f64, f64) {
    // SAFETY: sysconf and getrusage only write into the struct given.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map(|p| p * page)
        .unwrap_or(0.0);
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let cpu = if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(ru.ru_utime) + t(ru.ru_stime)
    } else {
        0.0
    };
    (rss, cpu)
}

/// CPU time (user + system, seconds) of this process's live threads, summed by thread name, most first.
/// matteflow's own threads are named `mf-…`; GStreamer names its streaming threads after the element's pad
/// (`x264enc0:src`, truncated to 15 characters by the kernel); ONNX Runtime's pool threads carry the name of
/// the thread that made them. Threads that already ended are not in it.
pub fn thread_cpu() -> Vec<(String, f64)> {
    // SAFETY: sysconf reads a constant.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut by: std::collections::BTreeMap<String, f64> = Default::default();
    for entry in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "tid (name) state ppid … utime stime …": the name may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state is field 3 of the line, utime 14 and stime 15.
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *by.entry(name).or_default() += (t(11) + t(12)) / tick;
    }
    let mut v: Vec<(String, f64)> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// One thread's (or same-named threads') share of the run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ThreadCpu {
    pub thread: String,
    /// CPU over the run, in % of one core.
    pub percent: f64,
}

/// GPU memory in use on device 0 (all processes), bytes; `None` without a CUDA driver.
pub fn gpu_memory_used() -> Option<f64> {
    if !crate::cuda::driver_present() {
        return None;
    }
    let ctx = cudarc::driver::CudaContext::new(0).ok()?;
    ctx.bind_to_thread().ok()?;
    let (free, total) = cudarc::driver::result::mem_get_info().ok()?;
    Some(total.saturating_sub(free) as f64)
}

/// An RTMP output's connection, as the panel shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RtmpState {
    /// Not streaming yet (the first connection is being made).
    Connecting,
    /// Streaming: up for more than a second without error.
    Connected,
    /// The connection broke; a new one is tried every few seconds.
    Reconnecting,
}

/// How far back an RTMP output's bitrate looks.
const BITRATE_WINDOW: Duration = Duration::from_secs(4);

/// One RTMP output: its state (set by the RTMP thread) and the bytes handed to its `rtmp2sink` (counted by a
/// pad probe in front of the sink), from which the bitrate over the last [`BITRATE_WINDOW`] is read.
pub struct RtmpOutput {
    url: String,
    state: Mutex<RtmpState>,
    sent: AtomicU64,
    /// (when, bytes sent by then), one a second, the last [`BITRATE_WINDOW`].
    marks: Mutex<std::collections::VecDeque<(Instant, u64)>>,
}

/// What the control endpoint reports of an RTMP output.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RtmpSummary {
    /// The URL with its stream key cut short (it is a secret).
    pub url: String,
    pub state: RtmpState,
    /// Bits per second handed to the sink over the last few seconds, kbit/s.
    pub kbps: f64,
    pub sent_bytes: u64,
}

impl RtmpOutput {
    pub fn new(url: &str) -> std::sync::Arc<RtmpOutput> {
        std::sync::Arc::new(RtmpOutput {
            url: url.to_string(),
            state: Mutex::new(RtmpState::Connecting),
            sent: AtomicU64::new(0),
            marks: Mutex::new(Default::default()),
        })
    }

    pub fn set_state(&self, s: RtmpState) {
        *self.state.lock().unwrap() = s;
    }

    /// Counts bytes handed to the sink (called from its streaming thread).
    pub fn count(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Keeps a mark a second (called often by the RTMP thread).
    pub fn tick(&self) {
        let mut m = self.marks.lock().unwrap();
        if m.back().is_some_and(|(t, _)| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        m.push_back((Instant::now(), self.sent.load(Ordering::Relaxed)));
        while m.front().is_some_and(|(t, _)| t.elapsed() > BITRATE_WINDOW) {
            m.pop_front();
        }
    }

    pub fn summary(&self) -> RtmpSummary {
        let sent = self.sent.load(Ordering::Relaxed);
        let kbps = match self.marks.lock().unwrap().front() {
            Some((t, b)) if t.elapsed() >= Duration::from_millis(500) => (sent - b) as f64 * 8.0 / 1000.0 / t.elapsed().as_secs_f64(),
            _ => 0.0,
        };
        RtmpSummary { url: without_stream_key(&self.url), state: *self.state.lock().unwrap(), kbps, sent_bytes: sent }
    }
}

/// `rtmp://host/app/ab…`: the last path segment (the stream key) cut to two characters, the query dropped.
fn without_stream_key(url: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    match base.rsplit_once('/') {
        Some((head, key)) if head.contains("://") && !key.is_empty() => format!("{head}/{}…", key.chars().take(2).collect::<String>()),
        _ => base.to_string(),
    }
}

/// Latency samples (milliseconds) of one measure: the current window and the whole run.
#[derive(Default)]
struct Samples {
    window: Vec<f64>,
    all: Vec<f64>,
}

/// p50 / p95 / max of a set of samples, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(v: &[f64]) -> Summary {
        if v.is_empty() {
            return Summary::default();
        }
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
        Summary { count: s.len(), p50: q(0.5), p95: q(0.95), max: *s.last().unwrap() }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms", self.p50, self.p95, self.max)
    }
}

/// The measures kept per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Measure {
    /// Capture timestamp → the frame reaching an output sink.
    GlassToGlass,
    /// Preprocess + inference + postprocess of one inferred frame.
    Matte,
    /// Model inference alone.
    Infer,
    /// Compositing one frame.
    Composite,
}

const MEASURES: [(Measure, &str); 4] = [
    (Measure::GlassToGlass, "glass_to_glass"),
    (Measure::Matte, "matte"),
    (Measure::Infer, "infer"),
    (Measure::Composite, "composite"),
];

/// Shared between the stage threads, the printer and the control endpoint.
pub struct LiveStats {
    pub started: Instant,
    /// Frames that came from the source.
    pub captured: AtomicU64,
    /// Frames handed to the outputs.
    pub output: AtomicU64,
    /// Frames the model ran on.
    pub inferred: AtomicU64,
    /// Frames shown with an earlier frame's mask (the model was busy, or runs every Nth frame).
    pub reused: AtomicU64,
    /// Frames dropped before inference because the model was still busy with an earlier one.
    pub skipped_stale: AtomicU64,
    /// Frames dropped before compositing because the matte stage fell behind the source.
    pub dropped: AtomicU64,
    /// Frames shown unmatted (paused, or no mask yet).
    pub passthrough: AtomicU64,
    /// Frames an output could not take in time (its queue was full), summed over outputs.
    pub output_dropped: AtomicU64,
    /// RTMP reconnections made.
    pub reconnects: AtomicU64,
    /// Each RTMP output's state and bitrate (registered by the RTMP thread).
    pub rtmp: Mutex<Vec<std::sync::Arc<RtmpOutput>>>,
    samples: Mutex<[Samples; 4]>,
    /// Start of the current window and the counters at that moment.
    window_start: Mutex<(Instant, [u64; 10])>,
    cpu_start: f64,
    /// The highest CPU time seen per thread name (threads that end take their time with them, so it is
    /// sampled every window and once more before the threads stop).
    threads: Mutex<std::collections::BTreeMap<String, f64>>,
}

impl Default for LiveStats {
    fn default() -> Self {
        LiveStats {
            started: Instant::now(),
            captured: AtomicU64::new(0),
            output: AtomicU64::new(0),
            inferred: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            skipped_stale: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            passthrough: AtomicU64::new(0),
            output_dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            rtmp: Mutex::new(Vec::new()),
            samples: Mutex::new(Default::default()),
            window_start: Mutex::new((Instant::now(), [0; 10])),
            cpu_start: process_usage().1,
            threads: Mutex::new(Default::default()),
        }
    }
}

fn idx(m: Measure) -> usize {
    MEASURES.iter().position(|(x, _)| *x == m).unwrap()
}

/// A snapshot: what the periodic line and the final summary print.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveSummary {
    pub seconds: f64,
    pub captured: u64,
    pub output: u64,
    pub inferred: u64,
    pub reused: u64,
    pub skipped_stale: u64,
    pub dropped: u64,
    pub passthrough: u64,
    pub output_dropped: u64,
    pub reconnects: u64,
    /// Output frames per second over the window (or the run, for the final summary).
    pub fps: f64,
    /// CPU used by the whole process over the run, in % of one core (200 = two cores busy).
    pub cpu_percent: f64,
    /// Resident memory at the time of the summary, MiB.
    pub rss_mib: f64,
    pub glass_to_glass: Summary,
    pub matte: Summary,
    pub infer: Summary,
    pub composite: Summary,
    /// Where the CPU went, by thread (whole-run summary only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpu_by_thread: Vec<ThreadCpu>,
}

impl LiveSummary {
    /// "mf-matte 61 %, x264enc0:src 33 %, …": the `n` busiest threads.
    pub fn cpu_breakdown(&self, n: usize) -> String {
        self.cpu_by_thread.iter().take(n).map(|t| format!("{} {:.0} %", t.thread, t.percent)).collect::<Vec<_>>().join(", ")
    }
}

impl std::fmt::Display for LiveSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} fps out, {} frames ({} inferred, {} reused mask, {} skipped stale before inference, {} dropped, \
             {} output drops, {} reconnects); glass-to-glass {}; matte {}; CPU since start {:.0} %, {:.0} MiB",
            self.fps,
            self.output,
            self.inferred,
            self.reused,
            self.skipped_stale,
            self.dropped,
            self.output_dropped,
            self.reconnects,
            self.glass_to_glass,
            self.matte,
            self.cpu_percent,
            self.rss_mib
        )
    }
}

impl LiveStats {
    pub fn record(&self, m: Measure, d: Duration) {
        let ms = d.as_secs_f64() * 1e3;
        let mut s = self.samples.lock().unwrap();
        let e = &mut s[idx(m)];
        e.window.push(ms);
        // The whole-run list is capped (a day at 60 fps would otherwise grow without bound): keep every
        // sample of the first million, then every 8th.
        if e.all.len() < 1_000_000 || self.captured.load(Ordering::Relaxed) % 8 == 0 {
            e.all.push(ms);
        }
    }

    fn counters(&self) -> [u64; 10] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            l(&self.captured),
            l(&self.output),
            l(&self.inferred),
            l(&self.reused),
            l(&self.skipped_stale),
            l(&self.dropped),
            l(&self.passthrough),
            l(&self.output_dropped),
            l(&self.reconnects),
            0,
        ]
    }

    fn summary_from(&self, c: [u64; 10], secs: f64, sums: [Summary; 4], fps: f64) -> LiveSummary {
        let (rss, cpu) = process_usage();
        let run = self.started.elapsed().as_secs_f64();
        LiveSummary {
            cpu_percent: 100.0 * (cpu - self.cpu_start) / run.max(1e-9),
            rss_mib: rss / (1024.0 * 1024.0),
            seconds: secs,
            captured: c[0],
            output: c[1],
            inferred: c[2],
            reused: c[3],
            skipped_stale: c[4],
            dropped: c[5],
            passthrough: c[6],
            output_dropped: c[7],
            reconnects: c[8],
            fps,
            glass_to_glass: sums[0],
            matte: sums[1],
            infer: sums[2],
            composite: sums[3],
            cpu_by_thread: Vec::new(),
        }
    }

    /// The summary of the window since the last call (counts are the window's), which starts a new window.
    pub fn take_window(&self) -> LiveSummary {
        let sums = {
            let mut s = self.samples.lock().unwrap();
            std::array::from_fn(|i| {
                let r = Summary::of(&s[i].window);
                s[i].window.clear();
                r
            })
        };
        let now = self.counters();
        let mut w = self.window_start.lock().unwrap();
        let secs = w.0.elapsed().as_secs_f64().max(1e-9);
        let delta: [u64; 10] = std::array::from_fn(|i| now[i] - w.1[i]);
        *w = (Instant::now(), now);
        self.summary_from(delta, secs, sums, delta[1] as f64 / secs)
    }

    /// The summary of the whole run so far.
    pub fn total(&self) -> LiveSummary {
        let sums = {
            let s = self.samples.lock().unwrap();
            std::array::from_fn(|i| Summary::of(&s[i].all))
        };
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let c = self.counters();
        let mut s = self.summary_from(c, secs, sums, c[1] as f64 / secs);
        self.sample_threads();
        let run = self.started.elapsed().as_secs_f64().max(1e-9);
        let mut v: Vec<ThreadCpu> = self
            .threads
            .lock()
            .unwrap()
            .iter()
            .map(|(t, secs)| ThreadCpu { thread: t.clone(), percent: 100.0 * secs / run })
            .filter(|t| t.percent >= 0.5)
            .collect();
        v.sort_by(|a, b| b.percent.total_cmp(&a.percent));
        s.cpu_by_thread = v;
        s
    }

    /// p50/p95 of the samples recorded since `marks` (per measure: how many samples were seen last time),
    /// which it moves on: the control panel's latency history, without disturbing the printed windows.
    pub fn since(&self, marks: &mut [usize; 4]) -> [Summary; 4] {
        let s = self.samples.lock().unwrap();
        std::array::from_fn(|i| {
            let all = &s[i].all;
            let from = marks[i].min(all.len());
            marks[i] = all.len();
            Summary::of(&all[from..])
        })
    }

    /// Each RTMP output's state and bitrate.
    pub fn rtmp_outputs(&self) -> Vec<RtmpSummary> {
        self.rtmp.lock().unwrap().iter().map(|o| o.summary()).collect()
    }

    /// Records each thread's CPU time so far (kept at its highest: see `threads`).
    pub fn sample_threads(&self) {
        let now = thread_cpu();
        let mut m = self.threads.lock().unwrap();
        for (t, secs) in now {
            let e = m.entry(t).or_default();
            *e = e.max(secs);
        }
    }

    /// Prometheus text exposition (version 0.0.4).
    pub fn prometheus(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut o = String::new();
        let c = self.counters();
        let counters = [
            ("matteflow_frames_captured_total", "Frames received from the source", c[0]),
            ("matteflow_frames_output_total", "Frames handed to the outputs", c[1]),
            ("matteflow_frames_inferred_total", "Frames the model ran on", c[2]),
            ("matteflow_masks_reused_total", "Frames composited with an earlier frame's mask", c[3]),
            ("matteflow_frames_skipped_stale_total", "Frames not sent to the model because it was busy", c[4]),
            ("matteflow_frames_dropped_total", "Frames dropped because matting fell behind the source", c[5]),
            ("matteflow_frames_passthrough_total", "Frames passed through unmatted (paused or no mask yet)", c[6]),
            ("matteflow_output_dropped_total", "Frames an output could not take in time", c[7]),
            ("matteflow_rtmp_reconnects_total", "RTMP reconnections", c[8]),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let up = self.started.elapsed().as_secs_f64();
        let _ = writeln!(o, "# HELP matteflow_uptime_seconds Seconds since start\n# TYPE matteflow_uptime_seconds gauge\nmatteflow_uptime_seconds {up:.3}");
        let fps = c[1] as f64 / up.max(1e-9);
        let _ = writeln!(o, "# HELP matteflow_output_fps Output frames per second since start\n# TYPE matteflow_output_fps gauge\nmatteflow_output_fps {fps:.3}");
        let s = self.samples.lock().unwrap();
        let _ = writeln!(
            o,
            "# HELP matteflow_latency_seconds Per-stage and glass-to-glass latency over the run\n# TYPE matteflow_latency_seconds summary"
        );
        for (m, name) in MEASURES {
            let sum = Summary::of(&s[idx(m)].all);
            for (q, v) in [("0.5", sum.p50), ("0.95", sum.p95), ("1", sum.max)] {
                let _ = writeln!(o, "matteflow_latency_seconds{{stage=\"{name}\",quantile=\"{q}\"}} {:.6}", v / 1e3);
            }
            let total: f64 = s[idx(m)].all.iter().sum();
            let _ = writeln!(o, "matteflow_latency_seconds_sum{{stage=\"{name}\"}} {:.6}", total / 1e3);
            let _ = writeln!(o, "matteflow_latency_seconds_count{{stage=\"{name}\"}} {}", sum.count);
        }
        let _ = writeln!(
            o,
            "# HELP matteflow_thread_cpu_seconds_total CPU time of the process's threads, by thread name\n# TYPE matteflow_thread_cpu_seconds_total counter"
        );
        for (thread, secs) in thread_cpu() {
            let label = thread.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(o, "matteflow_thread_cpu_seconds_total{{thread=\"{label}\"}} {secs:.2}");
        }
        for (name, help, v) in extra {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_attributed_to_the_thread_that_used_it() {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let busy = std::thread::Builder::new()
            .name("mf-test-busy".into())
            .spawn(move || {
                // Busy until this thread has used 0.3 s of CPU (not of wall time: on a loaded machine the
                // thread may get only part of a core).
                let cpu = || {
                    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                    // SAFETY: a valid out-pointer for clock_gettime.
                    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
                    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
                };
                let mut x = 0u64;
                while cpu() < Duration::from_millis(300) {
                    for _ in 0..10_000 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                }
                std::hint::black_box(x);
                // Stay alive until read.
                let _ = done_rx.recv_timeout(Duration::from_secs(30));
            })
            .unwrap();
        // Read once the thread has done its work (however long the machine's load made that take).
        let t = Instant::now();
        let mut v = thread_cpu();
        while t.elapsed() < Duration::from_secs(20) && !v.iter().any(|(n, s)| n == "mf-test-busy" && *s >= 0.25) {
            std::thread::sleep(Duration::from_millis(50));
            v = thread_cpu();
        }
        let _ = done_tx.send(());
        let busy_s = v.iter().find(|(n, _)| n == "mf-test-busy").map(|(_, s)| *s);
        assert!(busy_s.is_some_and(|s| s >= 0.1), "mf-test-busy: {busy_s:?} in {v:?}");
        busy.join().unwrap();
    }

    #[test]
    fn rtmp_bitrate_is_read_from_the_bytes_sent() {
        let o = RtmpOutput::new("rtmp://example.invalid/live/secretkey?x=1");
        o.tick();
        let ticked = Instant::now();
        assert_eq!(o.summary().kbps, 0.0);
        std::thread::sleep(Duration::from_millis(1000));
        o.count(250_000);
        o.set_state(RtmpState::Connected);
        let s = o.summary();
        // 2 Mbit over the time since the mark (a little over a second).
        let slowest = 2000.0 / ticked.elapsed().as_secs_f64();
        assert!(s.kbps >= slowest && s.kbps <= 2000.0, "{s:?}, at least {slowest}");
        assert_eq!((s.url.as_str(), s.state, s.sent_bytes), ("rtmp://example.invalid/live/se…", RtmpState::Connected, 250_000));
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        let s = Summary::of(&v);
        assert_eq!((s.count, s.max), (100, 100.0));
        assert!((s.p50 - 50.0).abs() <= 1.0 && (s.p95 - 95.0).abs() <= 1.0, "{s:?}");
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    #[test]
    fn prometheus_text_has_counters_and_quantiles() {
        let st = LiveStats::default();
        st.output.store(7, Ordering::Relaxed);
        st.record(Measure::GlassToGlass, Duration::from_millis(20));
        let t = st.prometheus(&[("matteflow_rss_bytes", "Resident memory", 1.0)]);
        assert!(t.contains("matteflow_frames_output_total 7"), "{t}");
        assert!(t.contains("matteflow_latency_seconds{stage=\"glass_to_glass\",quantile=\"0.95\"} 0.020000"), "{t}");
        assert!(t.contains("# TYPE matteflow_rss_bytes gauge"), "{t}");
    }
}
