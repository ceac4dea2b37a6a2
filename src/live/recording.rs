//! Recordings in the live output pipeline. Each one is a bin of its own behind a tee pad, so a recording that
//! fails (a full disk, a file system gone) ends alone: what it wrote is kept (made playable and renamed into
//! place) and RTMP, the virtual camera, the screen and the other recordings go on.
//!
//! ```text
//! tee ─[pad probe: drops everything once the bin failed]─ bin record<N> ( queue ─ [encoder] ─ mux ─ filesink )
//! ```
//!
//! The failure is noticed where it happens: a bus sync handler sees the error in the streaming thread that
//! posts it (before the error travels back up to the tee), and the tee pad's probe drops from then on, so the
//! shared H.264 encoder and the other branches never see it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::output::RecordFormat;
use crate::config::Format;
use crate::error::{Error, Result};
use crate::sink::StagedOutput;

/// One recording branch.
pub(super) struct Recording {
    staged: Option<StagedOutput>,
    bin: gst::Bin,
    tee_pad: gst::Pad,
    /// The sound tee's pad feeding this recording, when it has sound.
    audio_pad: Option<gst::Pad>,
    failed: Arc<AtomicBool>,
    format: RecordFormat,
    /// What went wrong, once the failure was handled.
    failure: Option<String>,
    /// Trims, renames and counts a failed recording off the frame loop's thread.
    salvage: Option<std::thread::JoinHandle<Option<PathBuf>>>,
}

fn make(name: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(name)
        .build()
        .map_err(|_| Error::Gst(format!("element '{name}' is missing: install {}", crate::sink::package_of(name))))
}

impl Recording {
    /// Builds the recording's bin, links it to `feed` (the H.264 tee for .mp4/.flv, the raw tee otherwise) and
    /// returns it with the pad the encoder's input arrives on (for latency probes).
    pub(super) fn attach(
        pipeline: &gst::Pipeline,
        feed: &gst::Element,
        format: RecordFormat,
        staged: StagedOutput,
        sound: Option<&mut super::audio::AudioBranch>,
    ) -> Result<(Recording, gst::Pad)> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let bin = gst::Bin::with_name(&format!("record{}", N.fetch_add(1, Ordering::Relaxed)));
        let q = super::output::queue(if matches!(format, RecordFormat::Convert(_)) { "encode" } else { "mux" }, false)?;
        q.set_property("max-size-buffers", 0u32);
        q.set_property("max-size-time", 2 * gst::ClockTime::SECOND.nseconds());
        bin.add(&q)?;
        let (head, audio_target) = match format {
            RecordFormat::Mp4 | RecordFormat::Flv => {
                let mux = if format == RecordFormat::Mp4 {
                    let m = make("mp4mux")?;
                    // Fragments: a recording cut short by a crash or a full disk still plays.
                    m.set_property("fragment-duration", 1000u32);
                    m
                } else {
                    let m = make("flvmux")?;
                    m.set_property("streamable", false);
                    m
                };
                let sink = make("filesink")?;
                sink.set_property("location", staged.temp_path.display().to_string());
                sink.set_property("sync", false);
                sink.set_property("async", false);
                bin.add_many([&mux, &sink])?;
                // The video pad by name: the queue's caps are not known yet, so linking by caps could take audio.
                q.link_pads(Some("src"), &mux, Some(if format == RecordFormat::Mp4 { "video_%u" } else { "video" }))?;
                mux.link(&sink)?;
                // Sound (the shared AAC stream) through a queue of the bin's own, so a failure takes it too.
                let audio = match sound.is_some() {
                    true => {
                        let aq = super::audio::audio_queue()?;
                        bin.add(&aq)?;
                        aq.link_pads(Some("src"), &mux, Some(if format == RecordFormat::Mp4 { "audio_%u" } else { "audio" }))?;
                        aq.static_pad("sink")
                    }
                    false => None,
                };
                (q.static_pad("sink").unwrap(), audio)
            }
            RecordFormat::Convert(f) => {
                let (head, audio) = crate::sink::encoder_chain(&bin, f, &staged.temp_path, false)?;
                q.link(&head)?;
                if f == Format::Prores {
                    fragment_qtmux(&bin);
                }
                (head.static_pad("sink").unwrap(), audio.filter(|_| sound.is_some()))
            }
        };
        let ghost = gst::GhostPad::with_target(&q.static_pad("sink").unwrap())?;
        bin.add_pad(&ghost)?;
        // Ghosted only when there is sound: linking the encoder's audio queue is what makes its muxer wait for it.
        let audio_ghost = audio_target.map(|t| gst::GhostPad::builder_with_target(&t).map(|b| b.name("audio").build())).transpose()?;
        if let Some(g) = &audio_ghost {
            bin.add_pad(g)?;
        }
        pipeline.add(&bin)?;
        let linking = |e| Error::Gst(format!("linking the recording {}: {e:?}", staged.final_path.display()));
        let tee_pad = feed.request_pad_simple("src_%u").ok_or_else(|| Error::Gst("the output tee gave no pad".into()))?;
        tee_pad.link(&ghost).map_err(linking)?;
        let failed = Arc::new(AtomicBool::new(false));
        drop_when_failed(&tee_pad, &failed);
        let audio_pad = match (sound, audio_ghost) {
            (Some(a), Some(g)) => {
                let aac = matches!(format, RecordFormat::Mp4 | RecordFormat::Flv);
                let p = a.tee_pad(pipeline, aac)?;
                p.link(&g).map_err(linking)?;
                drop_when_failed(&p, &failed);
                Some(p)
            }
            _ => None,
        };
        let rec = Recording { staged: Some(staged), bin, tee_pad, audio_pad, failed, format, failure: None, salvage: None };
        Ok((rec, head))
    }

    /// Marks, in the thread that posts it, a recording whose bin posted an error, so its tee pad drops before
    /// the error reaches the tee. Returns the handler to install on the output pipeline's bus.
    pub(super) fn sync_handler(recs: &[Recording]) -> impl Fn(&gst::Bus, &gst::Message) -> gst::BusSyncReply + Send + Sync + 'static {
        let watched: Vec<(gst::glib::WeakRef<gst::Bin>, Arc<AtomicBool>)> = recs.iter().map(|r| (r.bin.downgrade(), r.failed.clone())).collect();
        move |_, msg| {
            if let (gst::MessageView::Error(_), Some(src)) = (msg.view(), msg.src()) {
                for (bin, failed) in &watched {
                    if bin.upgrade().is_some_and(|b| src.has_as_ancestor(&b)) {
                        failed.store(true, Ordering::SeqCst);
                    }
                }
            }
            gst::BusSyncReply::Pass
        }
    }

    /// Whether `src` (an error's source) is inside this recording.
    pub(super) fn owns(&self, src: Option<&gst::Object>) -> bool {
        src.is_some_and(|s| s.has_as_ancestor(&self.bin))
    }

    pub(super) fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Ends a recording whose bin failed: detaches it from the tee and the pipeline (the other outputs go on),
    /// then keeps what it wrote on a thread of its own (see [`salvage`], which says what was kept). Later
    /// errors from the same bin are ignored.
    pub(super) fn fail(&mut self, pipeline: &gst::Pipeline, err: &gst::message::Error) {
        if self.failure.is_some() {
            return;
        }
        self.failed.store(true, Ordering::SeqCst);
        let Some(staged) = self.staged.take() else { return };
        let path = staged.final_path.clone();
        let msg = if err.error().matches(gst::ResourceError::NoSpaceLeft) {
            format!("disk full: {} ({})", path.display(), crate::sink::disk_of(&path))
        } else {
            format!("recording {} failed: {}", path.display(), err.error())
        };
        for pad in std::iter::once(&self.tee_pad).chain(self.audio_pad.as_ref()) {
            if let Some(ghost) = pad.peer() {
                let _ = pad.unlink(&ghost);
            }
            if let Some(tee) = pad.parent_element() {
                tee.release_request_pad(pad);
            }
        }
        let _ = self.bin.set_state(gst::State::Null);
        let _ = pipeline.remove(&self.bin);
        let (format, m) = (self.format, msg.clone());
        self.salvage = std::thread::Builder::new()
            .name("mf-salvage".into())
            .spawn(move || salvage(staged, format, &m))
            .ok();
        self.failure = Some(msg);
    }

    /// Commits a recording that finished normally, or waits for a failed one's salvage. Returns its path.
    pub(super) fn finish(mut self) -> Result<Option<PathBuf>> {
        if let Some(t) = self.salvage.take() {
            return Ok(t.join().ok().flatten());
        }
        match self.staged.take() {
            Some(st) => st.commit().map(Some),
            None => Ok(None),
        }
    }
}

/// Drops what a tee pushes into a recording once it failed, before the failure can reach the tee.
fn drop_when_failed(tee_pad: &gst::Pad, failed: &Arc<AtomicBool>) {
    let f = failed.clone();
    tee_pad.add_probe(gst::PadProbeType::DATA_DOWNSTREAM, move |_, _| {
        if f.load(Ordering::SeqCst) {
            gst::PadProbeReturn::Drop
        } else {
            gst::PadProbeReturn::Ok
        }
    });
}

/// Live .mov recordings are fragmented like .mp4 ones, so a crash or a full disk leaves a playable file.
fn fragment_qtmux(bin: &gst::Bin) {
    for e in bin.iterate_elements().into_iter().flatten() {
        if e.factory().is_some_and(|f| f.name() == "qtmux") {
            e.set_property("fragment-duration", 1000u32);
        }
    }
}

/// Keeps what a failed recording wrote: an MP4/MOV is cut after its last complete box (the fragment being
/// written when the disk filled is incomplete), then the file is renamed into place and its frames counted.
fn salvage(staged: StagedOutput, format: RecordFormat, msg: &str) -> Option<PathBuf> {
    let temp = staged.temp_path.clone();
    if matches!(format, RecordFormat::Mp4 | RecordFormat::Convert(Format::Prores)) {
        if let Err(e) = trim_to_complete_boxes(&temp) {
            tracing::warn!("{msg}: trimming the incomplete last fragment of {} failed: {e}", temp.display());
        }
    }
    match staged.commit() {
        Ok(p) => {
            let frames = count_frames(&p);
            tracing::warn!(
                "{msg}: that recording stopped; the {} written before are kept in {} (playable). The other outputs go on.",
                frames.map_or("frames".into(), |n| format!("{n} frames")),
                p.display()
            );
            Some(p)
        }
        Err(e) => {
            tracing::warn!("{msg}: the recording could not be kept: {e}");
            None
        }
    }
}

/// Cuts an ISO-BMFF file (MP4, MOV) after its last complete top-level box. Returns the length kept.
pub fn trim_to_complete_boxes(path: &Path) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let len = f.metadata()?.len();
    let mut pos = 0u64;
    // A trailing moof without its mdat is cut too: keep up to the end of the last complete mdat or moov.
    let mut keep = 0u64;
    while pos + 8 <= len {
        let mut head = [0u8; 16];
        f.seek(SeekFrom::Start(pos))?;
        let n = f.read(&mut head)?;
        let mut size = u32::from_be_bytes(head[..4].try_into().unwrap()) as u64;
        if size == 1 && n >= 16 {
            size = u64::from_be_bytes(head[8..16].try_into().unwrap());
        } else if size == 0 {
            size = len - pos;
        }
        if size < 8 || pos + size > len {
            break;
        }
        pos += size;
        if &head[4..8] != b"moof" {
            keep = pos;
        }
    }
    if keep < len {
        f.set_len(keep)?;
    }
    Ok(keep)
}

/// How many video frames a recording holds, read by GStreamer's demuxers and parsers (nothing is decoded).
pub fn count_frames(path: &Path) -> Option<u64> {
    gst::init().ok()?;
    let p = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc").property("location", path.display().to_string()).build().ok()?;
    let parse = gst::ElementFactory::make("parsebin").build().ok()?;
    p.add_many([&src, &parse]).ok()?;
    src.link(&parse).ok()?;
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (pw, c) = (p.downgrade(), count.clone());
    parse.connect_pad_added(move |_, pad| {
        let Some(p) = pw.upgrade() else { return };
        let video = pad.current_caps().or_else(|| Some(pad.query_caps(None))).is_some_and(|caps| {
            caps.structure(0).is_some_and(|s| s.name().starts_with("video/") || s.name().starts_with("image/"))
        });
        let Ok(sink) = gst::ElementFactory::make("fakesink").property("sync", false).build() else { return };
        if p.add(&sink).is_err() || sink.sync_state_with_parent().is_err() {
            return;
        }
        if video {
            let c = c.clone();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                c.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
        }
        let _ = pad.link(&sink.static_pad("sink").unwrap());
    });
    p.set_state(gst::State::Playing).ok()?;
    let bus = p.bus()?;
    // A file cut short may end in an error after its last whole frame: the frames before it count.
    let _ = bus.timed_pop_filtered(gst::ClockTime::from_seconds(60), &[gst::MessageType::Eos, gst::MessageType::Error]);
    let _ = p.set_state(gst::State::Null);
    Some(count.load(Ordering::Relaxed))
}

/// Says so when earlier runs that were killed (`kill -9`, a crash, power loss) left recordings of `final_path`
/// behind as `.NAME.partial-PID` (hidden, their process gone): where each is, how many frames it holds and how
/// to keep it. They are left alone: a fragmented MP4 or MOV cut short still plays.
pub(super) fn announce_leftovers(final_path: &Path) {
    let (Some(name), Some(parent)) = (final_path.file_name(), final_path.parent()) else { return };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let prefix = format!(".{}.partial-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue; // ours, or a run still writing it
        }
        let temp = entry.path();
        let frames = if temp.is_dir() {
            std::fs::read_dir(&temp).map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "png")).count() as u64).ok()
        } else {
            count_frames(&temp)
        };
        let stem = final_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let ext = final_path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
        let keep = parent.join(format!("{stem}-recovered-{pid}{ext}"));
        tracing::warn!(
            "an earlier run (process {pid}) was killed while recording {}: what it wrote is in {} ({} frames, \
             playable up to where it stopped). Keep it with `mv -n '{}' '{}'`, or delete it; matteflow leaves it alone",
            final_path.display(),
            temp.display(),
            frames.map_or("unknown number of".into(), |n| n.to_string()),
            temp.display(),
            keep.display()
        );
    }
}
