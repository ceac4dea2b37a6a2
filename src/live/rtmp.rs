//! RTMP streams. Each URL gets a pipeline of its own, fed with the shared H.264 stream by one thread, so a
//! server going away cannot stall or fail the recording and the other outputs:
//!
//! ```text
//! [h264 appsink] ─▶ feeder thread ─▶ appsrc ─ flvmux ─ rtmp2sink     (one per URL; rebuilt at a keyframe
//!                                                                     after the server drops)
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::output::OutputOptions;
use super::stats::{LiveStats, RtmpOutput, RtmpState};
use crate::error::{Error, Result};

fn make(name: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(name)
        .build()
        .map_err(|_| Error::Gst(format!("element '{name}' is missing: install {}", crate::sink::package_of(name))))
}

/// One RTMP destination and its (re)connection state.
struct RtmpStream {
    url: String,
    live: Option<Connection>,
    /// Subtracted from timestamps so each connection's stream starts at 0.
    offset: Option<gst::ClockTime>,
    next_try: Instant,
    /// The connection broke at least once (so the next good one counts as a reconnection).
    broken: bool,
    /// When the current connection started pushing; it counts as up after a second without error.
    since: Option<Instant>,
    announced: bool,
    /// Set by the watcher thread while the server refuses TCP connections.
    refused: Arc<AtomicBool>,
    /// What the control endpoint shows: state and bytes sent.
    status: Arc<RtmpOutput>,
}

/// Watches whether an RTMP server still accepts TCP connections (every 2 s). rtmp2sink usually reports a
/// server that went away, but not always (seen about 1 in 6 when the server process was killed): a refused
/// connection is a sure sign the stream is gone, whatever the sink thinks.
fn watch_server(url: &str, stop: Arc<AtomicBool>) -> Arc<AtomicBool> {
    let refused = Arc::new(AtomicBool::new(false));
    let target = server_addr(url);
    let r = refused.clone();
    let _ = std::thread::Builder::new().name("mf-rtmp-watch".into()).spawn(move || {
        use std::net::ToSocketAddrs;
        while !stop.load(Ordering::SeqCst) {
            if let Some(addr) = target.to_socket_addrs().ok().and_then(|mut a| a.next()) {
                let refused_now = matches!(
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
                );
                r.store(refused_now, Ordering::SeqCst);
            }
            for _ in 0..20 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    refused
}

/// The first error an RTMP pipeline reported (set from GStreamer's thread by a bus sync handler, so it is
/// seen even while nobody pops the bus).
type ErrorSlot = Arc<std::sync::Mutex<Option<String>>>;

/// One connection's pipeline: the picture's appsrc, the sound's (when the run has sound), and its error slot.
struct Connection {
    pipeline: gst::Pipeline,
    video: gst_app::AppSrc,
    audio: Option<gst_app::AppSrc>,
    slot: ErrorSlot,
}

fn stream_src(caps: &gst::Caps) -> gst_app::AppSrc {
    gst_app::AppSrc::builder()
        .caps(caps)
        .format(gst::Format::Time)
        .is_live(true)
        .block(false)
        .max_buffers(120)
        .max_bytes(0)
        .max_time(gst::ClockTime::ZERO)
        .leaky_type(gst_app::AppLeakyType::Downstream)
        .build()
}

fn rtmp_pipeline(url: &str, caps: &gst::Caps, audio_caps: Option<&gst::Caps>, status: &Arc<RtmpOutput>) -> Result<Connection> {
    let p = gst::Pipeline::with_name("matteflow-rtmp");
    let slot: ErrorSlot = Default::default();
    {
        let slot = slot.clone();
        p.bus().unwrap().set_sync_handler(move |_, msg| {
            if let gst::MessageView::Error(e) = msg.view() {
                slot.lock().unwrap().get_or_insert_with(|| e.error().to_string());
            }
            gst::BusSyncReply::Pass
        });
    }
    let src = stream_src(caps);
    let mux = make("flvmux")?;
    mux.set_property("streamable", true);
    let sink = make("rtmp2sink")?;
    sink.set_property("location", url);
    sink.set_property("sync", false);
    sink.set_property("async", false);
    count_bytes(&sink, status.clone());
    p.add_many([src.upcast_ref(), &mux, &sink])?;
    gst::Element::link_many([src.upcast_ref(), &mux, &sink])?;
    let audio = match audio_caps {
        Some(c) => {
            let a = stream_src(c);
            p.add(&a)?;
            let pad = mux.request_pad_simple("audio").ok_or_else(|| Error::Gst("flvmux gave no audio pad".into()))?;
            a.static_pad("src").unwrap().link(&pad).map_err(|e| Error::Gst(format!("the sound ({c}) does not go into FLV: {e:?}")))?;
            // The sound is encoded sooner than the picture of the same instant: let the muxer wait for it.
            super::audio::let_muxers_wait(&p);
            Some(a)
        }
        None => None,
    };
    p.set_state(gst::State::Playing)?;
    Ok(Connection { pipeline: p, video: src, audio, slot })
}

/// Counts the bytes going into the sink (the bitrate the panel shows is what was really sent).
fn count_bytes(sink: &gst::Element, status: Arc<RtmpOutput>) {
    let pad = sink.static_pad("sink").expect("rtmp2sink has a sink pad");
    pad.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST, move |_, info| {
        match &info.data {
            Some(gst::PadProbeData::Buffer(b)) => status.count(b.size() as u64),
            Some(gst::PadProbeData::BufferList(l)) => status.count(l.calculate_size() as u64),
            _ => {}
        }
        gst::PadProbeReturn::Ok
    });
}

/// A buffer's timestamps as running time on its sample's segment (encoders may shift both, e.g. x264enc by
/// 1000 h), less `offset`; `None` when it lies before `offset`.
fn rebased(sample: &gst::Sample, offset: gst::ClockTime) -> Option<gst::Buffer> {
    let buf = sample.buffer()?;
    let seg = sample.segment().and_then(|s| s.downcast_ref::<gst::ClockTime>().cloned());
    let rt = |t: Option<gst::ClockTime>| match (&seg, t) {
        (Some(s), Some(t)) => s.to_running_time(t),
        (None, t) => t,
        _ => None,
    };
    let pts = rt(buf.pts()).map(|t| t.checked_sub(offset));
    if pts == Some(None) {
        return None;
    }
    let mut b = buf.copy();
    let bm = b.make_mut();
    bm.set_pts(pts.flatten());
    bm.set_dts(rt(buf.dts()).map(|t| t.saturating_sub(offset)));
    Some(b)
}

/// A sample's start as running time.
fn running_start(sample: &gst::Sample) -> Option<gst::ClockTime> {
    let buf = sample.buffer()?;
    let t = buf.dts_or_pts()?;
    match sample.segment().and_then(|s| s.downcast_ref::<gst::ClockTime>().cloned()) {
        Some(s) => s.to_running_time(t),
        None => Some(t),
    }
}

/// The last second of encoded sound, so a connection that starts (or restarts) at a keyframe gets the sound
/// of that keyframe's instant even when it was encoded before the picture.
struct SoundBacklog {
    sink: gst_app::AppSink,
    recent: std::collections::VecDeque<gst::Sample>,
    caps: Option<gst::Caps>,
}

impl SoundBacklog {
    /// Takes what the encoder has; returns the new samples.
    fn drain(&mut self) -> Vec<gst::Sample> {
        let mut new = Vec::new();
        while let Some(s) = self.sink.try_pull_sample(gst::ClockTime::ZERO) {
            if self.caps.is_none() {
                self.caps = s.caps_owned();
            }
            self.recent.push_back(s.clone());
            new.push(s);
        }
        let newest = self.recent.back().and_then(running_start);
        while let (Some(n), Some(o)) = (newest, self.recent.front().and_then(running_start)) {
            if n.saturating_sub(o) <= gst::ClockTime::SECOND {
                break;
            }
            self.recent.pop_front();
        }
        new
    }
}

fn wait_error(slot: &ErrorSlot, wait: Duration) -> Option<String> {
    let end = Instant::now() + wait;
    loop {
        if let Some(e) = slot.lock().unwrap().clone() {
            return Some(e);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}


pub(crate) fn spawn_feeder(
    sink: gst_app::AppSink,
    audio: Option<gst_app::AppSink>,
    urls: Vec<String>,
    opts: OutputOptions,
    stop: Arc<AtomicBool>,
    stats: Arc<LiveStats>,
) -> Result<std::thread::JoinHandle<()>> {
    let retry = Duration::from_secs(opts.rtmp_retry_s.max(1) as u64);
    let mut streams: Vec<RtmpStream> = urls
        .into_iter()
        .map(|url| {
            let refused = watch_server(&url, stop.clone());
            let status = RtmpOutput::new(&url);
            stats.rtmp.lock().unwrap().push(status.clone());
            RtmpStream { url, live: None, offset: None, next_try: Instant::now(), broken: false, since: None, announced: false, refused, status }
        })
        .collect();
    let mut sound = audio.map(|sink| SoundBacklog { sink, recent: Default::default(), caps: None });
    std::thread::Builder::new()
        .name("mf-rtmp".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for s in &streams {
                    s.status.tick();
                }
                let new_sound = sound.as_mut().map(|s| s.drain()).unwrap_or_default();
                for s in streams.iter_mut() {
                    push_sound(s, &new_sound);
                }
                let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(20)) else {
                    // An appsink that has not started yet answers at once and calls itself at end of stream:
                    // only believe it once the output pipeline is running (this thread starts before it is).
                    if sink.current_state() < gst::State::Paused {
                        std::thread::sleep(Duration::from_millis(20));
                    } else if sink.is_eos() {
                        break;
                    }
                    continue;
                };
                for s in streams.iter_mut() {
                    feed_stream(s, &sample, sound.as_ref(), retry, &stats);
                }
            }
            for s in streams {
                if let Some(c) = s.live {
                    let _ = c.video.end_of_stream();
                    if let Some(a) = &c.audio {
                        let _ = a.end_of_stream();
                    }
                    let _ = c.pipeline.bus().map(|b| b.timed_pop_filtered(gst::ClockTime::from_seconds(2), &[gst::MessageType::Eos, gst::MessageType::Error]));
                    let _ = c.pipeline.set_state(gst::State::Null);
                }
            }
        })
        .map_err(|e| Error::io("starting the RTMP thread", e))
}

/// Sends newly encoded sound to a connected stream.
fn push_sound(s: &RtmpStream, new: &[gst::Sample]) {
    let (Some(c), Some(off)) = (&s.live, s.offset) else { return };
    let Some(a) = &c.audio else { return };
    for smp in new {
        if let Some(b) = rebased(smp, off) {
            let _ = a.push_buffer(b);
        }
    }
}

/// Hands one encoded frame to one RTMP destination: drops a broken connection, reconnects at a keyframe
/// (with the sound from that keyframe's instant on), and announces the state changes.
fn feed_stream(s: &mut RtmpStream, sample: &gst::Sample, sound: Option<&SoundBacklog>, retry: Duration, stats: &LiveStats) {
    let (Some(buf), Some(caps)) = (sample.buffer(), sample.caps()) else { return };
    let keyframe = !buf.flags().contains(gst::BufferFlags::DELTA_UNIT);
    // A broken connection: drop it and try again later, at a keyframe.
    if let Some(c) = &s.live {
        // The watcher's answer may predate this connection: only trust it once the connection has been up
        // longer than one probe interval.
        let settled = s.since.is_some_and(|t| t.elapsed() > Duration::from_secs(3));
        let e = wait_error(&c.slot, Duration::ZERO)
            .or_else(|| (settled && s.refused.load(Ordering::SeqCst)).then(|| "the server stopped accepting connections".to_string()));
        if let Some(e) = e {
            let _ = c.pipeline.set_state(gst::State::Null);
            s.live = None;
            s.since = None;
            if !s.broken || s.announced {
                tracing::warn!("RTMP {}: {e}; other outputs continue, reconnecting every {} s", s.url, retry.as_secs());
            }
            s.broken = true;
            s.announced = false;
            s.status.set_state(RtmpState::Reconnecting);
            s.next_try = Instant::now() + retry;
        }
    }
    // With sound, a connection starts once the sound's format is known (its first encoded buffer).
    let sound_ready = sound.is_none_or(|a| a.caps.is_some());
    if s.live.is_none() && keyframe && sound_ready && Instant::now() >= s.next_try {
        match rtmp_pipeline(&s.url, &caps.to_owned(), sound.and_then(|a| a.caps.as_ref()), &s.status) {
            Ok(c) => {
                s.offset = running_start(sample);
                s.live = Some(c);
                s.since = Some(Instant::now());
                if let Some(a) = sound {
                    push_sound(s, &a.recent.iter().cloned().collect::<Vec<_>>());
                }
            }
            Err(e) => {
                tracing::warn!("RTMP {}: {e}", s.url);
                s.next_try = Instant::now() + retry;
            }
        }
    }
    let Some(c) = &s.live else { return };
    if let Some(b) = rebased(sample, s.offset.unwrap_or(gst::ClockTime::ZERO)) {
        let _ = c.video.push_buffer(b);
    }
    if let Some(t) = s.since {
        if !s.announced && t.elapsed() > Duration::from_secs(1) {
            s.announced = true;
            s.status.set_state(RtmpState::Connected);
            if s.broken {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("RTMP {}: reconnected, streaming again", s.url);
            } else {
                tracing::info!("RTMP {}: streaming", s.url);
            }
        }
    }
}

fn server_addr(url: &str) -> String {
    let rest = url.split_once("://").map(|x| x.1).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or("").to_string();
    let default_port = if url.to_ascii_lowercase().starts_with("rtmps") { 443 } else { 1935 };
    if hostport.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        hostport
    } else {
        format!("{hostport}:{default_port}")
    }
}

/// Checks that an RTMP server accepts connections (before going live), within `timeout` (0 = one try). Only
/// a TCP connection is made: publishing a test stream under the same key would make the server refuse the
/// real one while it still holds the test publisher.
pub fn check_rtmp(url: &str, timeout: Duration) -> Result<()> {
    use std::net::ToSocketAddrs;
    let deadline = Instant::now() + timeout;
    let target = server_addr(url);
    let mut announced = false;
    loop {
        let r = target
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {target}: {e}"))
            .and_then(|mut a| a.next().ok_or_else(|| format!("no address for {target}")))
            .and_then(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string()));
        match r {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::Output {
                    path: url.into(),
                    reason: format!(
                        "the RTMP server cannot be reached ({e}). Is it running and is the URL right? To wait for it, \
                         pass {}",
                        crate::hint::RTMP_START_TIMEOUT.to("SECONDS")
                    ),
                })
            }
            Err(e) => {
                if !announced {
                    tracing::warn!("RTMP {url}: {e}; retrying until it answers");
                    announced = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}
