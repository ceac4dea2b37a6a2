//! `mf-audio`: the thread that takes the sound from its input, stamps it on the picture's time base, holds it
//! until the picture of its instant has gone out, and keeps one unbroken timeline from the first picture to
//! the end of the last (silence where the input has none).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::{bus_error, AudioShared, DeviceInput, BYTES_PER_FRAME, RATE};
use crate::error::{Error, Result};
use crate::live::output::ClockRef;

/// Where `mf-audio` takes sound from.
pub enum AudioIn {
    Source(gst_app::AppSink),
    Device(DeviceInput),
}

impl AudioIn {
    fn sink(&self) -> &gst_app::AppSink {
        match self {
            AudioIn::Source(s) => s,
            AudioIn::Device(d) => &d.sink,
        }
    }
}

/// The running `mf-audio` thread.
pub struct AudioFeed {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<AudioIn>>,
}

impl AudioFeed {
    /// Stops the thread and the device's pipeline (the source's tap stops with the input).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(AudioIn::Device(d)) = self.thread.take().and_then(|t| t.join().ok()) {
            let _ = d.pipeline.set_state(gst::State::Null);
        }
    }
}

fn duration_of(bytes: usize) -> gst::ClockTime {
    gst::ClockTime::SECOND.mul_div_floor(bytes as u64 / BYTES_PER_FRAME, RATE as u64).unwrap_or(gst::ClockTime::ZERO)
}

/// The feed's state: buffers held until their picture has gone out, and where the timeline has reached.
struct Feed {
    input: AudioIn,
    out: gst_app::AppSrc,
    clock: ClockRef,
    shared: Arc<AudioShared>,
    network: bool,
    /// A network source's sound that came before the stream's offset was known, on the stream's own time
    /// (stamped once the first picture fixes the offset, so the sound of that picture is not lost).
    unstamped: VecDeque<gst::Buffer>,
    held: VecDeque<gst::Buffer>,
    /// End of the last buffer sent: the timeline continues from here. It starts at the first picture.
    next: Option<gst::ClockTime>,
    /// The device stopped (unplugged, server gone): silence from then on.
    gone: bool,
    /// When the input last gave sound.
    last_sound: Instant,
    /// The device's timestamps were found on another clock (said once).
    foreign_clock: bool,
}

impl Feed {
    /// Takes a buffer from the input (waiting up to `wait`), stamped on the picture's time base. False when
    /// the input had none.
    fn take(&mut self, wait: Duration) -> bool {
        if self.gone {
            std::thread::sleep(wait);
            return false;
        }
        let Some(s) = self.input.sink().try_pull_sample(gst::ClockTime::from_nseconds(wait.as_nanos() as u64)) else {
            self.check_gone();
            return false;
        };
        let Some(mut buf) = s.buffer_owned() else { return true };
        let duration = duration_of(buf.size());
        let rt = match (crate::source::running_pts(&s), self.network) {
            (rt, true) => rt,
            (rt, false) => self.device_time(rt, arrival_dts(&s), duration),
        };
        let Some(rt) = rt else { return true };
        self.last_sound = Instant::now();
        let b = buf.make_mut();
        b.set_pts(rt);
        b.set_dts(gst::ClockTime::NONE);
        b.set_duration(duration);
        if !self.network {
            self.held.push_back(buf);
            return true;
        }
        self.unstamped.push_back(buf);
        self.stamp_unstamped();
        true
    }

    /// Moves a network source's sound onto the picture's time base once the stream's offset is known (the
    /// picture learns it from its first frame; until then at most the last second is kept).
    fn stamp_unstamped(&mut self) {
        let off = self.shared.stream_offset_ns.load(Ordering::SeqCst);
        if off == i64::MIN {
            while self.unstamped.len() > 100 {
                self.unstamped.pop_front();
            }
            return;
        }
        while let Some(mut buf) = self.unstamped.pop_front() {
            let rt = buf.pts().unwrap().nseconds() as i64;
            let Some(pts) = rt.checked_add(off).filter(|v| *v >= 0) else { continue };
            buf.make_mut().set_pts(gst::ClockTime::from_nseconds(pts as u64));
            self.held.push_back(buf);
        }
    }

    /// A device buffer's capture time. Devices stamp their sound on the shared clock; one that leaves it
    /// unstamped (pipewiresrc 0.3) or stamps it on a clock of its own (an ALSA plugin's wall-clock time) is
    /// taken at its arrival (the source's `do-timestamp`), less its length: its first sample was captured
    /// that much earlier.
    fn device_time(&mut self, pts: Option<gst::ClockTime>, arrived: Option<gst::ClockTime>, duration: gst::ClockTime) -> Option<gst::ClockTime> {
        let arrived = arrived.or_else(|| self.clock.running_now())?;
        match pts {
            Some(p) if p.nseconds().abs_diff(arrived.nseconds()) < gst::ClockTime::SECOND.nseconds() => Some(p),
            _ => {
                if pts.is_some() && !self.foreign_clock {
                    self.foreign_clock = true;
                    tracing::warn!("audio: the device stamps its sound on a clock of its own; it is timed by its arrival instead");
                }
                Some(arrived.saturating_sub(duration))
            }
        }
    }

    fn check_gone(&mut self) {
        let AudioIn::Device(d) = &self.input else { return };
        if self.gone {
            return;
        }
        let why = bus_error(&d.pipeline).or_else(|| d.sink.is_eos().then(|| "it ended".to_string()));
        if let Some(why) = why {
            self.gone = true;
            tracing::warn!("audio device {} stopped ({why}): the stream goes on with silence", d.name);
        }
    }

    /// Where the sound's timeline has reached. It starts with the first picture: a capture device opens only
    /// after the input gave its first frame, and a stream's sound may begin later than its picture; containers
    /// start every track at zero, so a track that began later would play early by the difference (the hole is
    /// filled with silence). `None` while no picture is out (the last second of sound is kept meanwhile).
    fn timeline(&mut self) -> Option<gst::ClockTime> {
        if self.network {
            self.stamp_unstamped();
        }
        let first = self.shared.first_video_ns.load(Ordering::SeqCst);
        if first == u64::MAX {
            while self.held.len() > 100 {
                self.held.pop_front();
            }
            return None;
        }
        Some(*self.next.get_or_insert(gst::ClockTime::from_nseconds(first)))
    }

    /// Sends every held buffer whose picture has reached the outputs by now.
    fn release(&mut self) {
        let Some(next) = self.timeline() else { return };
        let Some(now) = self.clock.running_now() else { return };
        let delay = gst::ClockTime::from_nseconds(self.shared.video_delay_ns.load(Ordering::Relaxed));
        let Some(due) = now.checked_sub(delay) else { return };
        self.fill_starved(next, due);
        self.send_until(due, false);
    }

    /// At the end of the run: the sound up to where the last picture ends and no further, so a recording's
    /// tracks end together (what the input has not given by then is silence).
    fn finish(&mut self) {
        while self.take(Duration::ZERO) {}
        let (Some(next), end) = (self.timeline(), self.shared.video_end_ns.load(Ordering::SeqCst)) else { return };
        if end == u64::MAX {
            return;
        }
        let end = gst::ClockTime::from_nseconds(end);
        self.send_until(end, true);
        let next = self.next.unwrap_or(next);
        if end > next {
            self.push(silence(next, end - next));
        }
    }

    /// Sends the held buffers that start by `due` (`cut`: and nothing of them past it).
    fn send_until(&mut self, due: gst::ClockTime, cut: bool) {
        while self.held.front().is_some_and(|b| b.pts().is_some_and(|p| p <= due)) {
            let b = self.held.pop_front().unwrap();
            // One unbroken timeline from the first picture on: MP4 fragments and FLV players place sound by
            // its length, not its timestamps, so a hole would put everything after it early and an overlap late.
            // Timestamps jitter (FLV's are whole milliseconds, capture clocks wander): within the tolerance a
            // buffer continues the timeline where the last one ended.
            let n = self.next.unwrap();
            let b = if b.pts().unwrap().nseconds().abs_diff(n.nseconds()) <= TOLERANCE.nseconds() { restamp(b, n) } else { b };
            let Some(b) = trim_before(b, n) else { continue };
            let Some(b) = (if cut { trim_after(b, due) } else { Some(b) }) else { continue };
            let (pts, dur) = (b.pts().unwrap(), b.duration().unwrap_or(gst::ClockTime::ZERO));
            if pts > n {
                tracing::debug!("audio: {} ms hole before {pts}, filled with silence", (pts - n).mseconds());
                self.push(silence(n, pts - n));
            }
            self.next = Some(pts + dur);
            self.push(b);
        }
    }

    /// Silence from `next` on when the input gives nothing: up to `due` once the device is gone, and while it
    /// has been quiet for [`STARVED`] (a device still starting or stalled, a stream whose sound starts later) up
    /// to that far behind `due`, so the muxers (told to wait a second for sound) never hold the picture up.
    /// Sound that turns up for time already filled is cut off when it is released. Sound that keeps coming,
    /// however late its stream carries it, is never replaced.
    fn fill_starved(&mut self, next: gst::ClockTime, due: gst::ClockTime) {
        let until = match (self.gone, self.last_sound.elapsed() >= Duration::from_nanos(STARVED.nseconds())) {
            (true, _) => due,
            (false, true) => due.saturating_sub(STARVED),
            (false, false) => return,
        };
        let covered = self.held.front().and_then(|b| b.pts()).is_some_and(|p| p <= until);
        if covered || until <= next + TOLERANCE {
            return;
        }
        if !self.gone {
            tracing::debug!("audio: no sound for {next}..{until}: silence");
        }
        let gap = silence(next, until - next);
        self.next = Some(next + gap.duration().unwrap_or(gst::ClockTime::ZERO));
        self.push(gap);
    }

    fn push(&mut self, mut b: gst::Buffer) {
        if self.shared.muted.load(Ordering::Relaxed) {
            if let Ok(mut m) = b.make_mut().map_writable() {
                m.as_mut_slice().fill(0);
            }
        }
        let _ = self.out.push_buffer(b);
    }
}

/// The running time a buffer's DTS says (what `do-timestamp` on a live source sets: its arrival).
fn arrival_dts(s: &gst::Sample) -> Option<gst::ClockTime> {
    let dts = s.buffer()?.dts()?;
    match s.segment().and_then(|g| g.downcast_ref::<gst::ClockTime>().cloned()) {
        Some(seg) => seg.to_running_time(dts),
        None => Some(dts),
    }
}

/// How far a buffer's timestamp may stray from where the timeline has reached and still be taken as following
/// on (below one frame at 60 fps).
const TOLERANCE: gst::ClockTime = gst::ClockTime::from_mseconds(15);

/// How long an input may give no sound before silence stands in for it, and how far behind the picture's
/// instant the silence then runs: longer than a capture device's own delay, well inside the second the muxers
/// wait.
const STARVED: gst::ClockTime = gst::ClockTime::from_mseconds(400);

fn restamp(mut b: gst::Buffer, pts: gst::ClockTime) -> gst::Buffer {
    b.make_mut().set_pts(pts);
    b
}

/// `length` of silence at `pts` (whole samples).
fn silence(pts: gst::ClockTime, length: gst::ClockTime) -> gst::Buffer {
    let frames = length.nseconds().mul_div_floor(RATE as u64, gst::ClockTime::SECOND.nseconds()).unwrap_or(0);
    let mut b = gst::Buffer::from_mut_slice(vec![0u8; (frames * BYTES_PER_FRAME) as usize]);
    let bm = b.get_mut().unwrap();
    bm.set_pts(pts);
    bm.set_duration(duration_of(bm.size()));
    b
}

/// The part of `b` from `start` on (`None`: all of it is earlier).
fn trim_before(b: gst::Buffer, start: gst::ClockTime) -> Option<gst::Buffer> {
    let pts = b.pts()?;
    if pts >= start {
        return Some(b);
    }
    let skip = (start - pts).nseconds().mul_div_floor(RATE as u64, gst::ClockTime::SECOND.nseconds())? * BYTES_PER_FRAME;
    if skip >= b.size() as u64 {
        return None;
    }
    let mut t = b.copy_region(gst::BufferCopyFlags::MEMORY | gst::BufferCopyFlags::FLAGS, skip as usize..).ok()?;
    let tm = t.make_mut();
    tm.set_pts(start);
    tm.set_duration(duration_of(tm.size()));
    Some(t)
}

/// The part of `b` before `end` (`None`: none of it).
fn trim_after(b: gst::Buffer, end: gst::ClockTime) -> Option<gst::Buffer> {
    let pts = b.pts()?;
    if pts >= end {
        return None;
    }
    if pts + b.duration()? <= end {
        return Some(b);
    }
    let keep = (end - pts).nseconds().mul_div_floor(RATE as u64, gst::ClockTime::SECOND.nseconds())? * BYTES_PER_FRAME;
    let mut t = b.copy_region(gst::BufferCopyFlags::MEMORY | gst::BufferCopyFlags::FLAGS, ..keep as usize).ok()?;
    let tm = t.make_mut();
    tm.set_pts(pts);
    tm.set_duration(duration_of(tm.size()));
    Some(t)
}

/// Starts `mf-audio`: `input` → hold for the picture's measured delay → `out`.
pub fn spawn_feed(input: AudioIn, out: gst_app::AppSrc, clock: ClockRef, shared: Arc<AudioShared>, network: bool) -> Result<AudioFeed> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let mut feed = Feed { input, out, clock, shared, network, unstamped: VecDeque::new(), held: VecDeque::new(), next: None, gone: false, last_sound: Instant::now(), foreign_clock: false };
    let thread = std::thread::Builder::new()
        .name("mf-audio".into())
        .spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                feed.take(Duration::from_millis(10));
                feed.release();
            }
            feed.finish();
            feed.input
        })
        .map_err(|e| Error::io("starting the audio thread", e))?;
    Ok(AudioFeed { stop, thread: Some(thread) })
}
