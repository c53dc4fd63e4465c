//! The core's own taskset writes, as the registry monitor must know them: the specs the core
//! is writing now, and the file each of its writes left, so that a scan neither reads such a
//! file back nor sends it to the core as someone else's change. (A channel of notes sent
//! after each write was always a little late: at a write per millisecond, a scan read one
//! file in eight back.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::registry::Fingerprint;
use crate::sys::WakePipe;

#[derive(Default)]
pub(super) struct OwnWrites {
    specs: Mutex<HashMap<String, OwnWrite>>,
}

#[derive(Default)]
struct OwnWrite {
    /// Between the start and the end of a [`WriteMark`]. The core holds the spec's lock
    /// meanwhile (and takes it only after the mark), so no other writer can change the file
    /// until the write is done.
    writing: bool,
    /// A scan skipped the spec mid-write and waits to be woken when the write ends.
    skipped: bool,
    /// The file the core's last write left, until a scan has seen it.
    written: Option<Fingerprint>,
}

/// What a scan makes of a changed file.
pub(super) enum Own {
    /// The core wrote this very file: nothing to read.
    Written,
    /// The core is writing it: look again once it is done.
    Writing,
    /// Someone else's change.
    Not,
}

impl OwnWrites {
    pub(super) fn lookup(&self, spec: &str, fingerprint: Option<Fingerprint>) -> Own {
        let mut specs = self.specs.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(own) = specs.get_mut(spec) else {
            return Own::Not;
        };
        // First the file the core left: if that is what is there, nobody wrote since, even
        // when the core's next write is already under way.
        if fingerprint.is_some() && own.written == fingerprint {
            // Seen once: the scan now knows it, and a later file that happened to look the
            // same (a reused inode, same size, same clock tick) must not be taken for ours.
            own.written = None;
            return Own::Written;
        }
        if own.writing {
            own.skipped = true;
            return Own::Writing;
        }
        Own::Not
    }

    fn begin(&self, spec: &str) {
        let mut specs = self.specs.lock().unwrap_or_else(PoisonError::into_inner);
        specs.entry(spec.to_string()).or_default().writing = true;
    }

    /// Ends a write; returns whether a scan waits for that.
    fn end(&self, spec: &str, written: Option<Fingerprint>) -> bool {
        let mut specs = self.specs.lock().unwrap_or_else(PoisonError::into_inner);
        let own = specs.entry(spec.to_string()).or_default();
        own.writing = false;
        if written.is_some() {
            own.written = written;
        }
        std::mem::take(&mut own.skipped)
    }

    pub(super) fn forget(&self, spec: &str) {
        let mut specs = self.specs.lock().unwrap_or_else(PoisonError::into_inner);
        if specs.get(spec).is_some_and(|own| !own.writing) {
            specs.remove(spec);
        }
    }
}

/// A write of the core in progress (see [`super::Monitor::begin_write`]). Dropped without
/// [`WriteMark::written`], it records nothing: the write failed or changed nothing. At most
/// one mark per spec at a time: only the core thread writes with marks, one write at a time.
pub struct WriteMark {
    own: Arc<OwnWrites>,
    wake: Arc<WakePipe>,
    spec: String,
    written: Option<Fingerprint>,
}

impl WriteMark {
    pub(super) fn begin(own: &Arc<OwnWrites>, wake: &Arc<WakePipe>, spec: &str) -> WriteMark {
        own.begin(spec);
        WriteMark {
            own: own.clone(),
            wake: wake.clone(),
            spec: spec.to_string(),
            written: None,
        }
    }

    /// The write left the file with this fingerprint.
    pub fn written(mut self, fingerprint: Option<Fingerprint>) {
        self.written = fingerprint;
    }
}

impl Drop for WriteMark {
    fn drop(&mut self) {
        if self.own.end(&self.spec, self.written) {
            self.wake.wake();
        }
    }
}
