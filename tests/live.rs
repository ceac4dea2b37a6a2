//! Live matting against real parts: a real nginx-rtmp server started by the test, a live test-pattern source,
//! the stream pulled back with GStreamer and checked pixel by pixel where the mask is known (a known-answer
//! model whose mask is the red channel, over SMPTE colour bars), recordings decoded back, the server killed
//! and restarted mid-stream, a genuinely slow model, signals, and the control endpoint.
//!
//! Every test here holds one lock (`serial`) for its whole run: they run matteflow live in real time, most
//! assert on frame rates or latency, and cargo runs a binary's tests on parallel threads, where two live runs
//! on a 2-core machine take each other's CPU. Rates are asserted relative to what each run asked for or
//! measured itself (its duration, the source's frame rate, the model's own cost), not as fixed windows.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

const W: u32 = 320;
const H: u32 = 240;
/// Centres of SMPTE bars in the top part of a 320×240 frame (7 bars of 320/7 px).
const YELLOW_X: u32 = 68;
const CYAN_X: u32 = 114;
const BAR_Y: u32 = 60;
const GREEN_BG: [u8; 3] = [0, 177, 64];
/// The source's frame rate in `live_cmd` (and of the streams the tests publish).
const FPS: f64 = 30.0;

fn known_answer(dir: &Path) -> PathBuf {
    // mask = red channel, so over SMPTE bars: cyan/green/blue bars get mask 0 (pure background), white,
    // yellow, magenta and red bars mask 1 (the bar itself).
    known_answer_model(dir, 0, 64, 64, "NCHW", "none", "stretch")
}

fn live_cmd(manifest: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_matteflow"));
    c.args(["live", "--input", "testsrc:smpte", "--size", &format!("{W}x{H}"), "--fps", "30"]);
    c.args(["--model", manifest.to_str().unwrap(), "--background", "green", "--smooth", "0", "--stats-interval", "1"]);
    c.args(extra);
    c
}

/// Pulls decoded RGBA frames from an RTMP URL for `secs` seconds.
fn pull_rtmp(url: &str, secs: f64) -> Vec<(u32, u32, Vec<u8>)> {
    gst::init().unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut frames = Vec::new();
    // The stream may need a moment to appear on the server; retry until the deadline.
    while Instant::now() < deadline && frames.len() < 10 {
        let p = gst::parse::launch(&format!(
            "rtmp2src location={url} ! flvdemux ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=RGBA ! appsink name=s sync=false"
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let sink = p.by_name("s").unwrap().downcast::<gst_app::AppSink>().unwrap();
        p.set_state(gst::State::Playing).unwrap();
        while Instant::now() < deadline {
            match sink.try_pull_sample(gst::ClockTime::from_mseconds(200)) {
                Some(s) => {
                    let caps = s.caps().unwrap();
                    let st = caps.structure(0).unwrap();
                    let (w, h) = (st.get::<i32>("width").unwrap() as u32, st.get::<i32>("height").unwrap() as u32);
                    let m = s.buffer().unwrap().map_readable().unwrap();
                    frames.push((w, h, m.as_slice()[..(w * h * 4) as usize].to_vec()));
                }
                None if sink.is_eos() => break,
                None => {}
            }
        }
        p.set_state(gst::State::Null).unwrap();
        if frames.is_empty() {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    frames
}

fn px(rgba: &[u8], w: u32, x: u32, y: u32) -> [u8; 3] {
    let i = ((y * w + x) * 4) as usize;
    [rgba[i], rgba[i + 1], rgba[i + 2]]
}

fn close(a: [u8; 3], b: [u8; 3], tol: i32) -> bool {
    a.iter().zip(b).all(|(x, y)| (*x as i32 - y as i32).abs() <= tol)
}

/// The yellow bar (255,255,0) has mask 1: it stays yellow over any background.
const YELLOW: [u8; 3] = [255, 255, 0];

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Collects a child's stderr in the background (so it never blocks on a full pipe).
fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        while err.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            b.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    buf
}

/// Waits until a live run says it has started (outputs open, frames flowing), so that what a test times from
/// then on is the run itself and not the start-up (loading ONNX Runtime and the model, building pipelines),
/// which takes seconds on a loaded machine.
fn wait_started(log: &Mutex<String>) {
    let t = Instant::now();
    while !log.lock().unwrap().contains("(Ctrl-C to stop)") {
        assert!(t.elapsed() < Duration::from_secs(30), "the live run did not start: {}", log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("matteflow live did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The source's rate held through a run of `secs` seconds (`--duration`): the report counts at least `share` of
/// the frames that time makes at the source's rate, and no more than the source can have made in the whole run
/// (start-up and wind-down included; more would mean duplicated frames).
fn assert_rate_held(summary: &serde_json::Value, secs: f64, share: f64) {
    let out = summary["output"].as_u64().unwrap() as f64;
    let run = summary["seconds"].as_f64().unwrap();
    eprintln!("rate: {out} frames out in a {secs} s run = {:.2} of {FPS} fps", out / (secs * FPS));
    assert!(out >= share * secs * FPS, "output fell behind the source: {out} frames in {secs} s at {FPS} fps: {summary}");
    assert!(out <= run * FPS + 2.0, "{out} frames in {run} s is more than the source made at {FPS} fps: {summary}");
}

/// Frames a recording must hold after a run: every frame handed to the outputs except those a loaded machine
/// made the output queue drop (counted), less a 10 % margin (the drop count is read when a frame is pushed,
/// not when the queue drops it).
fn recorded_at_least(summary: &serde_json::Value) -> usize {
    let handed = summary["output"].as_u64().unwrap() - summary["output_dropped"].as_u64().unwrap();
    (0.9 * handed as f64) as usize
}

/// Runs a command to its end, killing it (and failing) after `limit`; returns its exit status and stderr.
fn run_within(mut cmd: Command, limit: Duration) -> (std::process::ExitStatus, String) {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_exit(&mut child, limit);
    (status, reader.join().unwrap())
}

fn check_recording(path: &Path, min_frames: usize) -> Vec<Decoded> {
    let frames = decode(path);
    assert!(frames.len() >= min_frames, "{} has {} frames, expected ≥ {min_frames}", path.display(), frames.len());
    assert!(frames.iter().all(|f| (f.width, f.height) == (W, H)));
    // Timestamps increase and have no hole near as long as the 3 s RTMP outage (nothing lost while it was
    // down; a loaded 2-core CI machine may drop a few frames before matting, which is by design).
    // The first gap is the start-up, not a hole: the first frame is captured before the outputs are built and
    // waits for the first mask (up to 3 s by design, see live/matte.rs), while the frames behind it are dropped;
    // a slow model's first run, on a loaded machine, once made it 1.3 s.
    let pts: Vec<u64> = frames.iter().filter_map(|f| f.pts).collect();
    assert_eq!(pts.len(), frames.len(), "every frame has a timestamp");
    let gap_ms = |w: &[u64]| (w[1] - w[0]) / 1_000_000;
    for (i, w) in pts.windows(2).enumerate() {
        assert!(w[1] > w[0], "timestamps must increase: {} then {}", w[0], w[1]);
        let limit = if i == 0 { 4000 } else { 1000 };
        assert!(gap_ms(w) < limit, "a {} ms hole in the recording after frame {i}", gap_ms(w));
    }
    let later = pts.windows(2).skip(1).map(gap_ms).max().unwrap_or(0);
    eprintln!("{}: {} frames, start-up gap {} ms, largest gap after it {later} ms", path.display(), frames.len(), pts.get(..2).map_or(0, gap_ms));
    frames
}

#[test]
fn live_test_pattern_to_rtmp_and_recording() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    let nginx = Nginx::start(dir.path(), free_port());
    let rec = dir.path().join("rec.mp4");
    let rep = dir.path().join("report.json");
    let url = nginx.url("pattern");
    let mut child = live_cmd(&manifest, &["--output", &url, "--output", rec.to_str().unwrap(), "--duration", "8", "--report", rep.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect_stderr(&mut child);
    wait_started(&log);
    std::thread::sleep(Duration::from_millis(1500));
    let frames = pull_rtmp(&url, 5.0);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "live failed: {log}");
    assert!(frames.len() >= 30, "only {} frames came back from the RTMP server: {log}", frames.len());
    let (w, h, last) = frames.last().unwrap();
    assert_eq!((*w, *h), (W, H));
    // Where the mask is 0 (cyan bar) only the green background shows; where it is 0.75 (yellow) a blend.
    assert!(close(px(last, W, CYAN_X, BAR_Y), GREEN_BG, 14), "cyan bar: {:?}", px(last, W, CYAN_X, BAR_Y));
    assert!(close(px(last, W, YELLOW_X, BAR_Y), YELLOW, 14), "yellow bar: {:?}", px(last, W, YELLOW_X, BAR_Y));
    // The recording has the whole run, and the report says what happened.
    let r = report(&rep);
    let s = &r["summary"];
    let out = s["output"].as_u64().unwrap();
    // Was a fixed 220..=260 frames. The source's rate holds: at least 90 % of the frames 8 s at 30 fps make, and
    // no more than the source made in the whole run (frames are not duplicated).
    assert_rate_held(s, 8.0, 0.9);
    let rec_frames = check_recording(&rec, recorded_at_least(s));
    let lf = &rec_frames.last().unwrap().rgba;
    assert!(close(px(lf, W, CYAN_X, BAR_Y), GREEN_BG, 14));
    // Latency does not build up. Was p95 < 500 ms, which one stall of the machine (another build taking the
    // cores for a second) breaks; now the median stays under 5 frame intervals (167 ms at 30 fps) and the 95th
    // percentile under 30 (1 s), where a queue growing over 8 s reaches seconds. Measured on most frames (was
    // > 100 of ~240).
    let g2g = &s["glass_to_glass"];
    assert!(g2g["count"].as_u64().unwrap() as f64 > 0.4 * out as f64, "latency measured on too few frames: {g2g}");
    let frame_ms = 1000.0 / FPS;
    assert!(g2g["p50"].as_f64().unwrap() < 5.0 * frame_ms && g2g["p95"].as_f64().unwrap() < 30.0 * frame_ms, "latency: {g2g}");
    assert!(log.contains("glass-to-glass p50"), "periodic statistics lines: {log}");
    assert_no_partials(dir.path());
}

#[test]
fn rtmp_server_dies_mid_stream_recording_continues_and_stream_reconnects() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    let mut nginx = Nginx::start(dir.path(), free_port());
    let rec = dir.path().join("rec.mp4");
    let rep = dir.path().join("report.json");
    let url = nginx.url("fault");
    let mut child = live_cmd(
        &manifest,
        &["--output", &url, "--output", rec.to_str().unwrap(), "--duration", "14", "--rtmp-retry", "1", "--report", rep.to_str().unwrap()],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let log = collect_stderr(&mut child);
    // The outage must come mid-stream, after the stream started (however long start-up took).
    wait_started(&log);
    std::thread::sleep(Duration::from_secs(3));
    nginx.kill();
    std::thread::sleep(Duration::from_secs(3));
    nginx.spawn();
    // After the server is back, the stream must be there again.
    std::thread::sleep(Duration::from_millis(2000));
    let frames = pull_rtmp(&url, 5.0);
    let status = wait_exit(&mut child, Duration::from_secs(40));
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "live failed: {log}");
    assert!(frames.len() >= 10, "no stream after the server came back ({} frames): {log}", frames.len());
    assert!(log.contains("reconnected"), "{log}");
    let r = report(&rep);
    assert!(r["summary"]["reconnects"].as_u64().unwrap() >= 1, "{r}");
    // The recording went on through the outage: ~14 s, no holes. Was ≥ 380 frames (90 % of 14 s at 30 fps);
    // now the frames the run handed to the outputs (less a margin), spanning the run to within 1.5 s.
    assert_rate_held(&r["summary"], 14.0, 0.9);
    let frames = check_recording(&rec, recorded_at_least(&r["summary"]));
    let span = (frames.last().unwrap().pts.unwrap() - frames[0].pts.unwrap()) as f64 / 1e9;
    assert!(span >= 14.0 - 1.5, "the recording spans {span:.1} s of a 14 s run: {r}");
    assert_no_partials(dir.path());
}

#[test]
fn rtmp_server_down_at_start_is_a_clear_error() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    let rec = dir.path().join("rec.mp4");
    let url = format!("rtmp://127.0.0.1:{}/live/none", free_port());
    let out = live_cmd(&manifest, &["--output", &url, "--output", rec.to_str().unwrap(), "--duration", "3"]).output().unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(err.contains("cannot be reached") && err.contains("--rtmp-start-timeout") && err.contains(&url), "{err}");
    assert!(!rec.exists());
    assert_no_partials(dir.path());
}

#[test]
fn slow_model_keeps_the_frame_rate_and_counts_reused_masks() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let frame_ms = 1000.0 / FPS;

    // First the same outputs with the fast known-answer model, every third frame by choice: a third of the
    // frames are inferred. Its latency is the baseline the slow model's run is held to.
    let manifest = known_answer(dir.path());
    let rep3 = dir.path().join("r3.json");
    let rec3 = dir.path().join("rec3.mp4");
    let out = live_cmd(&manifest, &["--output", rec3.to_str().unwrap(), "--max-frames", "90", "--infer-every", "3", "--report", rep3.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let s = &report(&rep3)["summary"];
    let inferred = s["inferred"].as_u64().unwrap();
    assert!((28..=32).contains(&inferred), "--infer-every 3 over 90 frames inferred {inferred}: {s}");
    let base_p50 = s["glass_to_glass"]["p50"].as_f64().unwrap();

    // A model that really costs about 200 ms a frame (6 frame intervals) on one CPU thread, calibrated on this
    // machine (aimed well above the 2.5 intervals asserted below: other work on the machine makes its cost vary
    // by 2× between calibration and run); one thread, as on a 2-core machine the model must leave a core to
    // capture, composite and encode. Run through the selfie manifest's real preprocess and postprocess.
    let (slow, calibrated_ms) = slow_model(dir.path(), 200.0, 1);
    let rec = dir.path().join("rec.mp4");
    let rep = dir.path().join("report.json");
    let out = live_cmd(&slow, &["--threads", "1", "--output", rec.to_str().unwrap(), "--duration", "5", "--report", rep.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let s = &report(&rep)["summary"];
    let (outn, inferred, reused, stale) = (
        s["output"].as_u64().unwrap(),
        s["inferred"].as_u64().unwrap(),
        s["reused"].as_u64().unwrap(),
        s["skipped_stale"].as_u64().unwrap(),
    );
    // What the model cost in this run (the hook this test used to rely on slept a fixed 100 ms; a real model's
    // cost is measured instead). It must be slow, or nothing below means anything.
    let ms = |m: &str, q: &str| s[m][q].as_f64().unwrap();
    let infer_ms = ms("infer", "p50");
    assert!(
        infer_ms > 2.5 * frame_ms,
        "the slow model ran in {infer_ms:.0} ms (calibrated {calibrated_ms:.0} ms), not the several frame intervals this test needs: {s}"
    );
    let (p50, p95) = (ms("glass_to_glass", "p50"), ms("glass_to_glass", "p95"));
    eprintln!(
        "slow model: {calibrated_ms:.0} ms calibrated, {infer_ms:.0} ms (p50) in the run; {outn} frames, {inferred} inferred, \
         {reused} reused, {stale} skipped stale; glass-to-glass p50 {p50:.0} ms (fast model {base_p50:.0} ms), p95 {p95:.0} ms"
    );
    // The source rate holds (30 fps for 5 s) although the model manages a few frames a second. Was ≥ 135 frames
    // (90 %); now 80 %, as the model itself takes one of the two cores here, leaving the rest of the pipeline
    // less room when other work loads the machine. A model the frames waited for would give 1 in 6 (17 %).
    assert_rate_held(s, 5.0, 0.8);
    // The model runs as often as its cost allows, and no more: was 25..=55 runs for a 100 ms model in 5 s; now
    // from the costs this run measured. At most 120 % of 5 s / its median inference time. At least 80 % of 5 s /
    // (its mean matte time + one frame interval, the longest a free model waits for the next frame); the report
    // gives quantiles, so the mean is bounded from above by them (half the runs ≤ p50, 45 % ≤ p95, 5 % ≤ max),
    // which keeps the bound true when the machine stalls a few runs for a second.
    let mean_at_most = 0.5 * ms("matte", "p50") + 0.45 * ms("matte", "p95") + 0.05 * ms("matte", "max");
    let (least, most) = (0.8 * 5000.0 / (mean_at_most + frame_ms) - 1.0, 1.2 * 5000.0 / infer_ms + 2.0);
    assert!(
        (least..=most).contains(&(inferred as f64)),
        "a {infer_ms:.0} ms model ran {inferred} times in 5 s, expected {least:.0}..={most:.0}: {s}"
    );
    // Every frame either went to the model or was skipped as stale while it was busy (nothing queued for it),
    // and every frame not inferred was shown with a reused mask. With the model ≥ 2.5 frame intervals, it saw
    // fewer than half of the frames.
    assert!(inferred + stale + 5 >= outn && inferred + stale <= outn + 5, "inferred {inferred} + skipped {stale} ≠ {outn} frames: {s}");
    assert!(reused + 5 >= outn - inferred && stale >= outn / 2, "reused {reused}, skipped {stale} of {outn}: {s}");
    // No latency build-up: a frame waits at most the 40 ms budget for its mask. Was p95 < 150 ms (for a 100 ms
    // model), which one stall of the machine breaks; now two relations that waiting for masks breaks: the median
    // is within the budget and a frame interval of the fast model's, and the 95th percentile stays below the
    // model's own 95th percentile (a frame that waited for its mask would take at least the model's time).
    assert!(p50 < base_p50 + 40.0 + frame_ms, "glass-to-glass p50 {p50:.0} ms against {base_p50:.0} ms with a fast model: latency builds up: {s}");
    assert!(p95 < ms("infer", "p95"), "glass-to-glass p95 {p95:.0} ms is as long as the model's runs: frames wait for masks: {s}");
    // The reused masks are real masks of the picture: the recording is matted (the cyan bar, mask 0, shows
    // the green background; the yellow bar, mask 1, stays yellow).
    let frames = check_recording(&rec, recorded_at_least(s));
    let last = &frames.last().unwrap().rgba;
    assert!(close(px(last, W, CYAN_X, BAR_Y), GREEN_BG, 14), "cyan bar: {:?}", px(last, W, CYAN_X, BAR_Y));
    assert!(close(px(last, W, YELLOW_X, BAR_Y), YELLOW, 24), "yellow bar: {:?}", px(last, W, YELLOW_X, BAR_Y));
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    (code, body)
}

#[test]
fn control_endpoint_changes_the_background_of_the_running_stream() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    let rec = dir.path().join("rec.mkv");
    let bgdir = dir.path().join("backgrounds");
    std::fs::create_dir(&bgdir).unwrap();
    image::RgbaImage::from_pixel(8, 8, image::Rgba([10, 20, 250, 255])).save(bgdir.join("blue.png")).unwrap();
    let mut child = live_cmd(
        &manifest,
        &["--output", rec.to_str().unwrap(), "--control", "127.0.0.1:0", "--background-dir", bgdir.to_str().unwrap(), "--duration", "11"],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let log = collect_stderr(&mut child);
    let t = Instant::now();
    let addr = loop {
        if let Some(l) = log.lock().unwrap().lines().find(|l| l.contains("control on http://")) {
            break l.split("http://").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(15), "no control address printed: {}", log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(2));
    let (code, metrics) = http(&addr, "GET", "/metrics", "");
    assert_eq!(code, 200);
    assert!(metrics.contains("matteflow_frames_output_total") && metrics.contains("stage=\"glass_to_glass\""), "{metrics}");
    assert!(metrics.contains("matteflow_resident_memory_bytes"), "{metrics}");
    // Bad requests are refused with a reason, and nothing outside the background folder can be read.
    assert_eq!(http(&addr, "POST", "/background", "../../etc/passwd").0, 403);
    assert_eq!(http(&addr, "POST", "/background", "/etc/hostname").0, 403);
    assert_eq!(http(&addr, "POST", "/background", "nosuch.png").0, 404);
    let (c, b) = http(&addr, "POST", "/matte", "{\"smooth\": 5}");
    assert!(c == 400 && b.contains("smooth"), "{c} {b}");
    assert_eq!(http(&addr, "POST", "/model", "/etc/passwd").0, 400);
    assert_eq!(http(&addr, "GET", "/nope", "").0, 404);
    let (c, b) = http(&addr, "POST", "/background", "magenta");
    assert_eq!(c, 200, "{b}");
    std::thread::sleep(Duration::from_secs(2));
    let (c, b) = http(&addr, "POST", "/background", "blue.png");
    assert_eq!(c, 200, "{b}");
    let (_, status) = http(&addr, "GET", "/status", "");
    assert!(status.contains("blue.png"), "{status}");
    std::thread::sleep(Duration::from_secs(1));
    // Pause: frames pass through unmatted (the cyan bar shows cyan).
    assert_eq!(http(&addr, "POST", "/pause", "").0, 200);
    let pause_started = Instant::now();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(http(&addr, "POST", "/resume", "").0, 200);
    // Was a fixed ≥ 20 paused frames (of ~36 in 1.2 s); now 55 % of the frames the pause measured here lasted
    // (from the answer to /pause to that to /resume) holds at the source's rate.
    let paused_at_least = (0.55 * pause_started.elapsed().as_secs_f64() * FPS) as u64;
    // Switch the model to a shipped one (loaded in the background, swapped between frames).
    let (c, b) = http(&addr, "POST", "/model", "selfie-landscape");
    assert_eq!(c, 200, "{b}");
    let (_, status) = http(&addr, "GET", "/status", "");
    assert!(status.contains("\"model\":\"selfie-landscape\""), "{status}");
    let (_, metrics) = http(&addr, "GET", "/metrics", "");
    let passthrough: u64 = metrics
        .lines()
        .find(|l| l.starts_with("matteflow_frames_passthrough_total "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    assert!(passthrough >= paused_at_least, "{paused_at_least} frames or more were paused: {passthrough}");
    let st = wait_exit(&mut child, Duration::from_secs(30));
    assert!(st.success(), "{}", log.lock().unwrap());
    // The recording shows the switch: green, then magenta, then the image's blue, in the cyan bar.
    let frames = check_recording(&rec, 200);
    let cyan: Vec<[u8; 3]> = frames.iter().map(|f| px(&f.rgba, W, CYAN_X, BAR_Y)).collect();
    let first_magenta = cyan.iter().position(|p| close(*p, [255, 0, 255], 6)).expect("magenta background never appeared");
    let first_blue = cyan.iter().position(|p| close(*p, [10, 20, 250], 6)).expect("image background never appeared");
    assert!(close(cyan[0], GREEN_BG, 6) && first_magenta < first_blue, "{:?}", &cyan[..5]);
    assert!(cyan[first_magenta..first_blue].iter().all(|p| close(*p, [255, 0, 255], 6)));
    let paused = cyan[first_blue..].iter().filter(|p| close(**p, [0, 255, 255], 12)).count();
    assert!(paused as u64 >= paused_at_least, "paused frames show the picture itself (cyan): {paused} < {paused_at_least}");
}

#[test]
fn sigint_and_sigterm_finish_the_recording() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    // Ctrl-C ends a live run normally, SIGTERM (a service manager stopping it) likewise: the recording is
    // finished and playable and the report written. Was ≥ 60 and ≥ 40 frames 4 s and 3 s after spawning; now
    // every frame the run handed to the recording (less a margin), and at least a second's worth in the 3–4 s
    // after the run started.
    for (signal, name, secs) in [(libc::SIGINT, "rec.mp4", 4), (libc::SIGTERM, "rec2.mkv", 3)] {
        let rec = dir.path().join(name);
        let rep = dir.path().join(format!("{name}.json"));
        let mut child =
            live_cmd(&manifest, &["--output", rec.to_str().unwrap(), "--report", rep.to_str().unwrap()]).stderr(Stdio::piped()).spawn().unwrap();
        let log = collect_stderr(&mut child);
        // The signal comes `secs` into the run itself: start-up can take seconds on a loaded machine (a SIGTERM
        // 3 s after spawning once found only 1 s of output).
        wait_started(&log);
        std::thread::sleep(Duration::from_secs(secs));
        unsafe { libc::kill(child.id() as i32, signal) };
        let st = wait_exit(&mut child, Duration::from_secs(20));
        assert!(st.success(), "signal {signal} ends a live run normally: {st} {}", log.lock().unwrap());
        let s = &report(&rep)["summary"];
        assert!(s["output"].as_u64().unwrap() as f64 >= FPS, "less than a second of output in {secs} s: {s}");
        check_recording(&rec, recorded_at_least(s));
        assert_no_partials(dir.path());
    }
}

#[test]
fn input_cut_off_mid_stream_finishes_the_recording_and_says_why() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    // A stream cut off in the middle (as when a camera is unplugged or a network source drops): the first
    // 40 % of a 10 s FLV, played at its own pace.
    let flv = dir.path().join("cam.flv");
    gst_make(&format!(
        "videotestsrc num-buffers=300 pattern=smpte ! video/x-raw,width={W},height={H},framerate=30/1 ! x264enc speed-preset=ultrafast key-int-max=30 ! h264parse ! flvmux ! filesink location={}",
        flv.display()
    ));
    let data = std::fs::read(&flv).unwrap();
    let cut = dir.path().join("cut.flv");
    std::fs::write(&cut, &data[..data.len() * 4 / 10]).unwrap();
    // How many frames the cut stream holds (about 120).
    let frames_in = decode(&cut).len();
    assert!(frames_in >= 100, "the cut stream has {frames_in} frames");
    let rec = dir.path().join("rec.mp4");
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["live", "--input", cut.to_str().unwrap(), "--model", manifest.to_str().unwrap()])
        .args(["--background", "green", "--output", rec.to_str().unwrap()])
        .output()
        .unwrap();
    let log = stderr_of(&out);
    assert!(log.contains("the input ended") || log.contains("stopped:"), "{log}");
    // Played at its own pace (about 4 s), not as fast as possible. Was > 3 s and ≥ 100 frames; now relative to
    // the frames the cut stream holds: 75 % of their duration at least, and 80 % of them in the recording.
    let paced = Duration::from_secs_f64(0.75 * frames_in as f64 / FPS);
    assert!(t.elapsed() > paced, "a file input is paced like a camera: {frames_in} frames in {:?}", t.elapsed());
    let least = (0.8 * frames_in as f64) as usize;
    let frames = decode(&rec);
    assert!(frames.len() >= least, "{} of {frames_in} frames in the recording: {log}", frames.len());
    check_recording(&rec, least);
    assert_no_partials(dir.path());
}

#[test]
fn rtmp_input_is_matted() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    let nginx = Nginx::start(dir.path(), free_port());
    let src_url = nginx.url("camera");
    // A camera publishing to the server (as an IP camera or OBS would).
    let mut publisher = Command::new("gst-launch-1.0")
        .args(["-q", "videotestsrc", "is-live=true", "pattern=smpte", "!", &format!("video/x-raw,width={W},height={H},framerate=30/1")])
        .args(["!", "x264enc", "tune=zerolatency", "speed-preset=ultrafast", "key-int-max=15", "!", "h264parse", "!", "flvmux", "streamable=true"])
        .args(["!", "rtmp2sink", &format!("location={src_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0");
    std::thread::sleep(Duration::from_millis(1500));
    let rec = dir.path().join("rec.mkv");
    let out = Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["live", "--input", &src_url, "--model", manifest.to_str().unwrap(), "--background", "green", "--smooth", "0"])
        .args(["--output", rec.to_str().unwrap(), "--max-frames", "60"])
        .output()
        .unwrap();
    let _ = publisher.kill();
    let _ = publisher.wait();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let frames = check_recording(&rec, 55);
    let last = &frames.last().unwrap().rgba;
    assert!(close(px(last, W, CYAN_X, BAR_Y), GREEN_BG, 14), "cyan bar: {:?}", px(last, W, CYAN_X, BAR_Y));
    assert!(close(px(last, W, YELLOW_X, BAR_Y), YELLOW, 24), "yellow bar: {:?}", px(last, W, YELLOW_X, BAR_Y));
}

/// The output pipeline `matteflow live` builds for `--output v4l2:/dev/video99` (`Outputs::build`, the
/// production code), with `frames` RGBA frames of `w`×`h` at 30 fps pushed through it. Only the device's
/// v4l2sink is swapped for a fakesink after it is checked: these machines have no V4L2 in the kernel, so it
/// cannot open (the test below checks that failure through the CLI). Returns the caps the virtual camera's
/// capsfilter negotiated.
fn run_virtual_camera_branch(opts: &matteflow::live::OutputOptions, w: u32, h: u32) -> gst::Caps {
    use matteflow::live::output::{ClockRef, Outputs};
    use matteflow::live::{LiveStats, OutputSpec};
    gst::init().unwrap();
    let clock = gst::SystemClock::obtain();
    let clock_ref = ClockRef { base_time: clock.time(), clock };
    let spec = OutputSpec::VirtualCamera("/dev/video99".into());
    let mut outputs = Outputs::build(&[spec], opts, 30, clock_ref, Arc::new(LiveStats::default())).unwrap();
    assert_eq!(outputs.descriptions, [format!("virtual camera /dev/video99 ({})", opts.vcam_format)]);
    // The chain from the output tee: queue ─ videoconvert ─ capsfilter ─ v4l2sink on the device.
    let pipeline = outputs.pipeline.clone();
    let factory = |e: &gst::Element| e.factory().unwrap().name().to_string();
    let next = |e: &gst::Element| e.src_pads()[0].peer().and_then(|p| p.parent_element()).unwrap();
    let tee = pipeline.iterate_elements().into_iter().map(Result::unwrap).find(|e| factory(e) == "tee").unwrap();
    let queue = next(&tee);
    let (convert, capsfilter) = (next(&queue), next(&next(&queue)));
    let sink = next(&capsfilter);
    let chain: Vec<String> = [&queue, &convert, &capsfilter, &sink].into_iter().map(factory).collect();
    assert_eq!(chain, ["queue", "videoconvert", "capsfilter", "v4l2sink"]);
    assert!(queue.name().starts_with("vcam"), "the branch's queue names its thread: {}", queue.name());
    assert_eq!(sink.property::<String>("device"), "/dev/video99");
    assert!(!sink.property::<bool>("sync"), "the virtual camera must not wait on the clock");
    let wanted = capsfilter.property::<gst::Caps>("caps");
    assert_eq!(wanted.structure(0).unwrap().get::<&str>("format").unwrap(), opts.vcam_format);

    capsfilter.unlink(&sink);
    pipeline.remove(&sink).unwrap();
    let stand_in = gst::ElementFactory::make("fakesink").property("sync", false).build().unwrap();
    pipeline.add(&stand_in).unwrap();
    capsfilter.link(&stand_in).unwrap();
    outputs.start().unwrap();
    let frame_ns = gst::ClockTime::SECOND.nseconds() / 30;
    for i in 0..5u64 {
        let pts = gst::ClockTime::from_nseconds(i * frame_ns);
        outputs.push(vec![128u8; (w * h * 4) as usize], w, h, gst::Fraction::new(30, 1), Some(pts)).unwrap();
    }
    let pad = capsfilter.static_pad("src").unwrap();
    let t = Instant::now();
    let caps = loop {
        if let Some(c) = pad.current_caps() {
            break c;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the virtual camera branch did not negotiate");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(outputs.poll_error().is_none());
    outputs.finish().unwrap();
    caps
}

#[test]
fn virtual_camera_branch_negotiates_its_format_and_a_missing_device_is_a_clear_error() {
    let _serial = serial();
    use matteflow::live::OutputOptions;
    // The default format (YUY2, what browsers take) and an override, at the frames' size and rate.
    for (opts, w, h) in [
        (OutputOptions::default(), 1280, 720),
        (OutputOptions { vcam_format: "I420".into(), ..Default::default() }, 640, 480),
    ] {
        let caps = run_virtual_camera_branch(&opts, w, h);
        let s = caps.structure(0).unwrap();
        assert_eq!(s.get::<&str>("format").unwrap(), opts.vcam_format, "{caps}");
        assert_eq!((s.get::<i32>("width").unwrap(), s.get::<i32>("height").unwrap()), (w as i32, h as i32), "{caps}");
        assert_eq!(s.get::<gst::Fraction>("framerate").unwrap(), gst::Fraction::new(30, 1), "{caps}");
    }
    // A format the branch cannot make is refused by name when the outputs are built.
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    let (status, err) = run_within(live_cmd(&manifest, &["--output", "v4l2:/dev/video99", "--vcam-format", "NOPE", "--duration", "2"]), Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("'NOPE'") && err.contains("YUY2") && err.contains("--vcam-format"), "{err}");

    // The real thing here: the device cannot be opened. The run ends at once, in an error (exit code 1: not a
    // panic, not a signal, not a hang) that names the device and says how to make one.
    let (status, err) = run_within(live_cmd(&manifest, &["--output", "v4l2:/dev/video99", "--duration", "2"]), Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("/dev/video99") && err.contains("v4l2loopback") && err.contains("modprobe"), "{err}");
}

#[test]
fn screen_output_without_a_display_is_a_clear_error() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    let out = live_cmd(&manifest, &["--output", "screen", "--duration", "2"]).env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY").output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs a display"), "{err}");
}

#[test]
fn shipped_pipeline_files_parse_and_run() {
    let _serial = serial();
    use matteflow::live::job::JobFile;
    let dir = root().join("pipelines");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let job = JobFile::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            job.into_job().unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 4, "the four example pipelines ship");
    // A shipped file run for real, with its outputs overridden from the command line.
    let tmp = tempfile::tempdir().unwrap();
    let rec = tmp.path().join("rec.mp4");
    let out = Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .current_dir(root())
        .args(["run", "pipelines/webcam-to-rtmp-and-recording.toml", "--input", "testsrc", "--set", "input.width=320", "--set", "input.height=240"])
        .args(["--output", rec.to_str().unwrap(), "--max-frames", "45", "--report", tmp.path().join("r.json").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    // Every frame handed to the outputs is in the recording, except those a loaded machine made the output
    // queue drop (counted).
    let s = &report(&tmp.path().join("r.json"))["summary"];
    let expect = s["output"].as_u64().unwrap() - s["output_dropped"].as_u64().unwrap();
    assert_eq!(s["output"].as_u64().unwrap(), 45);
    assert_eq!(decode(&rec).len() as u64, expect, "{s}");
    // A mistake in a pipeline file names the file, the line and the field.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[input]\nsource = \"testsrc\"\n\n[matte]\nsmoth = 0.5\n").unwrap();
    let out = matteflow(&["run", bad.to_str().unwrap()]);
    let err = stderr_of(&out);
    assert!(!out.status.success() && err.contains("bad.toml") && err.contains("line 5") && err.contains("smoth"), "{err}");
}

/// Spawns a `gst-launch-1.0` pipeline (a camera, a stream server), killed by the caller.
fn gst_launch(args: &str) -> Child {
    Command::new("gst-launch-1.0")
        .arg("-q")
        .args(args.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0")
}

#[test]
fn srt_input_is_matted_and_latency_is_measured_on_every_frame() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    let port = free_port();
    // An SRT listener sending MPEG-TS, as an encoder box or OBS would (7 TS packets per SRT packet).
    let mut server = gst_launch(&format!(
        "videotestsrc is-live=true pattern=smpte ! video/x-raw,width={W},height={H},framerate=30/1 ! x264enc \
         tune=zerolatency speed-preset=ultrafast key-int-max=15 ! h264parse ! mpegtsmux alignment=7 ! srtsink \
         uri=srt://:{port} wait-for-connection=false"
    ));
    std::thread::sleep(Duration::from_millis(1500));
    let rec = dir.path().join("rec.mkv");
    let rep = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["live", "--input", &format!("srt://127.0.0.1:{port}"), "--model", manifest.to_str().unwrap()])
        .args(["--background", "green", "--smooth", "0", "--output", rec.to_str().unwrap(), "--max-frames", "60"])
        .args(["--report", rep.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let frames = check_recording(&rec, 55);
    let last = &frames.last().unwrap().rgba;
    assert!(close(px(last, W, CYAN_X, BAR_Y), GREEN_BG, 14), "cyan bar: {:?}", px(last, W, CYAN_X, BAR_Y));
    assert!(close(px(last, W, YELLOW_X, BAR_Y), YELLOW, 24), "yellow bar: {:?}", px(last, W, YELLOW_X, BAR_Y));
    // Glass-to-glass is measured from arrival for (nearly) every frame of a network stream, not only for the
    // ones that came later than the first.
    let g2g = &report(&rep)["summary"]["glass_to_glass"];
    assert!(g2g["count"].as_u64().unwrap() >= 50, "latency measured on too few frames: {g2g}");
    assert!(g2g["p95"].as_f64().unwrap() < 1000.0, "{g2g}");
}

#[test]
fn file_served_over_http_is_played_at_its_own_frame_rate() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    // 90 frames (3 s at 30 fps) of colour bars, served by a plain HTTP server.
    let clip = dir.path().join("bars.mkv");
    let mut enc = gst_launch(&format!(
        "videotestsrc num-buffers=90 pattern=smpte ! video/x-raw,width={W},height={H},framerate=30/1 ! x264enc \
         speed-preset=ultrafast ! h264parse ! matroskamux ! filesink location={}",
        clip.display()
    ));
    assert!(enc.wait().unwrap().success());
    let port = free_port();
    let mut http = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory", dir.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "HTTP server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rec = dir.path().join("rec.mkv");
    let rep = dir.path().join("report.json");
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["live", "--input", &format!("http://127.0.0.1:{port}/bars.mkv"), "--model", manifest.to_str().unwrap()])
        .args(["--background", "green", "--smooth", "0", "--output", rec.to_str().unwrap(), "--report", rep.to_str().unwrap()])
        .output()
        .unwrap();
    let took = t.elapsed();
    let _ = http.kill();
    let _ = http.wait();
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    // Not raced through: a file that is not live is paced like a camera, so (nearly) all of its frames are
    // matted and it takes about as long as it lasts.
    assert!(took >= Duration::from_millis(2500), "3 s of video took {took:?}: not paced");
    let r = report(&rep);
    let n = r["summary"]["output"].as_u64().unwrap();
    assert!((80..=90).contains(&n), "{n} of 90 frames came out: {err}");
    let frames = check_recording(&rec, 80);
    let last = &frames.last().unwrap().rgba;
    assert!(close(px(last, W, CYAN_X, BAR_Y), GREEN_BG, 14), "cyan bar: {:?}", px(last, W, CYAN_X, BAR_Y));
}

#[test]
fn disk_full_ends_that_recording_alone_and_keeps_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // A real file system that fills up: 1200 KiB hold about 5 s of the recording (the live H.264 is CBR with
    // filler, for ingest servers, so the file grows at exactly the bitrate: 2000 kbit/s here).
    let Some(disk) = SmallDisk::mount(&dir.path().join("small"), 1200) else { return };
    let manifest = known_answer(dir.path());
    let nginx = Nginx::start(dir.path(), free_port());
    let url = nginx.url("diskfull");
    let full = disk.dir.join("rec.mp4");
    let other = dir.path().join("other.mkv");
    let rep = dir.path().join("report.json");
    let mut child = live_cmd(&manifest, &["--output", &url, "--output", full.to_str().unwrap(), "--output", other.to_str().unwrap()])
        .args(["--duration", "12", "--bitrate", "2000", "--report", rep.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect_stderr(&mut child);
    wait_started(&log);
    let t = Instant::now();
    while !log.lock().unwrap().contains("frames written before are kept") {
        assert!(t.elapsed() < Duration::from_secs(20), "the disk did not fill: {}", log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    // After the disk filled, the RTMP stream goes on.
    let frames = pull_rtmp(&url, 4.0);
    let status = wait_exit(&mut child, Duration::from_secs(40));
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "the run goes on to its end: {log}");
    assert!(frames.len() >= 30, "RTMP after the disk filled: {} frames: {log}", frames.len());
    assert!(log.contains(&format!("disk full: {}", full.display())), "{log}");
    assert!(!log.contains("multiplex") && !log.contains("filesink"), "{log}");
    // The full disk's recording is kept under its name, playable, with the frames up to the failure.
    let said: usize = log.split(" frames written before are kept").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    let kept = check_recording(&full, 30);
    assert_eq!(kept.len(), said, "{log}");
    // The other recording has the whole run.
    let r = report(&rep);
    let s = &r["summary"];
    assert_rate_held(s, 12.0, 0.9);
    let whole = check_recording(&other, recorded_at_least(s));
    assert!(kept.len() < whole.len() / 2, "the full disk's recording stopped early: {} of {}", kept.len(), whole.len());
    assert_eq!(r["output_failures"].as_array().unwrap().len(), 1, "{r}");
    assert_no_partials(dir.path());
    assert_no_partials(&disk.dir);
}

#[test]
fn live_from_a_file_loses_no_frame() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    // 120 frames; the first ones used to vanish (uncounted) while the outputs were being built.
    let clip = dir.path().join("clip.mp4");
    gst_make(&format!(
        "videotestsrc num-buffers=120 pattern=ball ! video/x-raw,width={W},height={H},framerate=30/1 ! x264enc speed-preset=ultrafast ! mp4mux ! filesink location={}",
        clip.display()
    ));
    let rec = dir.path().join("rec.mkv");
    let rep = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["live", "--input", clip.to_str().unwrap(), "--model", manifest.to_str().unwrap(), "--background", "green"])
        .args(["--output", rec.to_str().unwrap(), "--report", rep.to_str().unwrap()])
        .output()
        .unwrap();
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    let s = &report(&rep)["summary"];
    let frames = decode(&rec);
    // Every frame reaches the recording, or its loss is counted: a file waits, so the source drops nothing, and
    // only the output queue may (counted) on a loaded machine.
    assert_eq!(s["captured"].as_u64().unwrap(), 120, "{s}");
    assert_eq!(s["dropped"].as_u64().unwrap(), 0, "{s}");
    assert_eq!(s["output"].as_u64().unwrap(), 120, "{s}");
    assert_eq!(frames.len() as u64 + s["output_dropped"].as_u64().unwrap(), 120, "{s}");
    if s["output_dropped"].as_u64().unwrap() == 0 {
        // The file's own timestamps, one frame apart from the first (frames 2–4 were the ones lost).
        let pts: Vec<u64> = frames.iter().map(|f| f.pts.unwrap()).collect();
        for (i, w) in pts.windows(2).enumerate() {
            let gap = (w[1] - w[0]) as f64 / 1e6;
            assert!((gap - 1000.0 / FPS).abs() < 2.0, "a {gap} ms gap after frame {i}");
        }
    }
}

#[test]
fn a_recording_left_by_kill_9_is_announced_at_the_next_start() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    let rec = dir.path().join("rec.mp4");
    let mut child = live_cmd(&manifest, &["--output", rec.to_str().unwrap()]).stderr(Stdio::piped()).spawn().unwrap();
    let log = collect_stderr(&mut child);
    wait_started(&log);
    std::thread::sleep(Duration::from_secs(3));
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let left = dir.path().join(format!(".rec.mp4.partial-{}", child.id()));
    assert!(left.exists() && !rec.exists(), "kill -9 leaves the hidden partial recording");
    // The next run says where it is, how many frames it holds and how to keep it, and leaves it alone.
    let out = live_cmd(&manifest, &["--output", rec.to_str().unwrap(), "--max-frames", "5"]).output().unwrap();
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&left.display().to_string()) && err.contains("killed"), "{err}");
    let line = err.lines().find(|l| l.contains("was killed")).unwrap();
    let frames: usize = line.split(" frames").next().unwrap().rsplit('(').next().unwrap().parse().unwrap_or_else(|_| panic!("{line}"));
    assert!(frames >= 30, "3 s of recording: {line}");
    // Following the hint keeps a playable recording with that many frames.
    let cmd = line.split('`').nth(1).unwrap_or_else(|| panic!("no command in: {line}"));
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
    let kept = dir.path().join(format!("rec-recovered-{}.mp4", child.id()));
    assert_eq!(decode(&kept).len(), frames, "{line}");
    assert_eq!(decode(&rec).len(), 5, "the new run's own recording");
}

#[test]
fn udp_mpeg_ts_stream_frames_get_their_own_mask() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    // H.264 with B-frames (ffmpeg's default), as phones and encoders send: the decoder's reordering delays each
    // frame by ~100 ms behind the stream's earliest arrival, which was charged to the 40 ms budget, so most
    // frames got an earlier frame's mask although the model keeps up easily.
    let clip = dir.path().join("clip.ts");
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i", &format!("testsrc2=size={W}x{H}:rate=25"), "-t", "10"])
        .args(["-c:v", "libx264", "-bf", "3", "-g", "25", "-pix_fmt", "yuv420p", clip.to_str().unwrap()])
        .status()
        .expect("ffmpeg");
    assert!(st.success());
    let port = free_port();
    let rep = dir.path().join("report.json");
    let rec = dir.path().join("rec.mkv");
    let mut child = Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["live", "--input", &format!("udp://127.0.0.1:{port}"), "--model", manifest.to_str().unwrap()])
        .args(["--background", "green", "--output", rec.to_str().unwrap(), "--max-frames", "150", "--report", rep.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect_stderr(&mut child);
    std::thread::sleep(Duration::from_millis(1500));
    let mut sender = Command::new("ffmpeg")
        .args(["-v", "error", "-re", "-i", clip.to_str().unwrap(), "-c", "copy", "-f", "mpegts", &format!("udp://127.0.0.1:{port}")])
        .spawn()
        .expect("ffmpeg");
    let status = wait_exit(&mut child, Duration::from_secs(40));
    let _ = sender.kill();
    let _ = sender.wait();
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "{log}");
    let s = &report(&rep)["summary"];
    let (out, reused) = (s["output"].as_u64().unwrap(), s["reused"].as_u64().unwrap());
    assert_eq!(out, 150, "{s}");
    // With a model that keeps up, at least 95 % of the frames carry their own mask.
    assert!(reused as f64 <= 0.05 * out as f64, "{reused} of {out} frames shown with an earlier frame's mask: {s}");
    assert_eq!(decode(&rec).len() as u64 + s["output_dropped"].as_u64().unwrap(), out);
}

/// Whether this machine has an NVIDIA driver (where the GPU stages, and so CUDA decoding, may run).
fn nvidia_here() -> bool {
    Path::new("/dev/nvidiactl").exists()
}

#[test]
fn live_from_a_file_says_how_its_video_was_decoded() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    let clip = dir.path().join("clip.mp4");
    gst_make(&format!(
        "videotestsrc num-buffers=30 pattern=smpte ! video/x-raw,width={W},height={H},framerate=30/1 ! x264enc speed-preset=ultrafast ! mp4mux ! filesink location={}",
        clip.display()
    ));
    // A live run from a file; returns the report's "decode" and the log.
    let run = |extra: &[&str], rec: &Path| -> (String, String) {
        let rep = dir.path().join("report.json");
        let out = Command::new(env!("CARGO_BIN_EXE_matteflow"))
            .args(["live", "--input", clip.to_str().unwrap(), "--model", manifest.to_str().unwrap(), "--background", "green"])
            .args(["--output", rec.to_str().unwrap(), "--report", rep.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        let log = stderr_of(&out);
        assert!(out.status.success(), "{log}");
        let r = report(&rep);
        let s = &r["summary"];
        // The file still plays whole into the recording (less what a loaded machine's output queue dropped).
        assert_eq!(s["output"].as_u64().unwrap(), 30, "{s}");
        assert_eq!(decode(rec).len() as u64 + s["output_dropped"].as_u64().unwrap(), 30, "{s}");
        (r["decode"].as_str().unwrap_or_else(|| panic!("no decode in the report: {r}")).to_string(), log)
    };
    let (how, log) = run(&[], &dir.path().join("a.mkv"));
    if nvidia_here() {
        assert!(how == "cuda" || how.starts_with("host: "), "{how}");
    } else {
        // Without a GPU the stages run on the CPU, and the frames are decoded into system memory: said in the
        // report and, once, at start (also without -v).
        assert_eq!(how, "host: the stages run on the CPU");
        assert_eq!(log.matches("video: decoded into system memory (the stages run on the CPU)").count(), 1, "{log}");
    }
    let (how, log) = run(&["--host-decode"], &dir.path().join("b.mkv"));
    assert_eq!(how, "host: asked for with --host-decode");
    assert!(log.contains("video: decoded into system memory (asked for with --host-decode)"), "{log}");
}

#[test]
fn a_pipeline_file_asks_for_host_decoding_in_its_own_words() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let manifest = known_answer(dir.path());
    let clip = dir.path().join("clip.mp4");
    gst_make(&format!(
        "videotestsrc num-buffers=15 pattern=smpte ! video/x-raw,width={W},height={H},framerate=30/1 ! x264enc speed-preset=ultrafast ! mp4mux ! filesink location={}",
        clip.display()
    ));
    let job = dir.path().join("job.toml");
    let rec = dir.path().join("rec.mkv");
    std::fs::write(
        &job,
        format!(
            "mode = \"live\"\n[input]\nsource = {:?}\n[model]\nname = {:?}\n[matte]\nbackground = \"green\"\n[[output]]\ntarget = {:?}\n",
            clip.to_str().unwrap(),
            manifest.to_str().unwrap(),
            rec.to_str().unwrap()
        ),
    )
    .unwrap();
    let rep = dir.path().join("report.json");
    let out = matteflow(&["run", job.to_str().unwrap(), "--set", "input.host_decode=true", "--report", rep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(report(&rep)["decode"], "host: asked for with `host_decode` under [input]");
    assert_eq!(report(&rep)["summary"]["output"], 15);
}
