//! Live settings that the control endpoint changes while running: the matte settings (the engine's one type),
//! published with a generation counter so the stage threads pick changes up between frames. The budgeted
//! model scheduling itself is the engine's ([`crate::engine::budget`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use crate::engine::budget::ToWorker;
use crate::engine::MatteSettings;
use crate::error::{Error, Result};
use crate::infer::OnnxSegmenter;

/// What can change while running (through the control endpoint): the engine's matte settings.
pub type Settings = MatteSettings;

/// Settings shared between the control endpoint and the stage threads. Each change bumps a generation
/// counter so the stages pick it up between frames.
pub struct Controls {
    settings: Mutex<Settings>,
    generation: AtomicU64,
    pub(crate) worker: Mutex<Option<Sender<ToWorker>>>,
}

impl Controls {
    pub fn new(s: Settings) -> Arc<Self> {
        Arc::new(Controls { settings: Mutex::new(s), generation: AtomicU64::new(0), worker: Mutex::new(None) })
    }
    pub fn get(&self) -> Settings {
        self.settings.lock().unwrap().clone()
    }
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
    /// Applies a change; the postprocess settings also go to the model thread.
    pub fn update(&self, f: impl FnOnce(&mut Settings)) {
        let post = {
            let mut s = self.settings.lock().unwrap();
            f(&mut s);
            s.post
        };
        if let Some(w) = self.worker.lock().unwrap().as_ref() {
            let _ = w.send(ToWorker::Post(post));
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
    /// Hands a newly loaded model to the model thread, which switches between frames.
    pub fn swap_model(&self, name: String, seg: OnnxSegmenter) -> Result<()> {
        let tx = self.worker.lock().unwrap().clone().ok_or_else(|| Error::config("not running"))?;
        tx.send(ToWorker::Swap(Box::new(seg))).map_err(|_| Error::config("the model thread has stopped"))?;
        self.update(|s| s.model = name);
        Ok(())
    }
}

