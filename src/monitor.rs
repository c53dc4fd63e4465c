//! The registry monitor: a thread that polls the registry every `poll_interval` and sends
//! the core each taskset whose file changed (by mtime, size and inode), and nothing else,
//! so a poll's cost does not grow with tasksets that did not change.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{select, Receiver, Sender};

use crate::registry::{Fingerprint, Registry, Taskset};

pub enum RegistryEvent {
    /// A taskset was read (first sight or changed file), or could not be.
    Changed {
        spec: String,
        taskset: Result<Arc<Taskset>, String>,
    },
    /// A taskset's file disappeared.
    Removed { spec: String },
    /// The tasksets directory itself could not be listed.
    ScanFailed(String),
    /// One full pass over the registry is complete; everything changed before it started
    /// has been sent.
    ScanDone,
}

/// The monitor thread: dropping the handle stops and joins it.
pub struct Monitor {
    wake: Option<Sender<()>>,
    written: Sender<(String, Fingerprint)>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    pub fn spawn(registry: Registry, interval: Duration, events: Sender<RegistryEvent>) -> Monitor {
        let (wake, wake_rx) = crossbeam_channel::bounded(1);
        let (written, written_rx) = crossbeam_channel::unbounded();
        let thread = thread::Builder::new()
            .name("registry-monitor".into())
            .spawn(move || run(&registry, interval, &events, &wake_rx, &written_rx))
            .expect("spawn registry monitor thread");
        Monitor {
            wake: Some(wake),
            written,
            thread: Some(thread),
        }
    }

    /// Tells the monitor that the core itself wrote this version of a taskset (and already
    /// knows its content), so the next scan does not read it again.
    pub fn note_written(&self, spec: &str, fingerprint: Fingerprint) {
        let _ = self.written.send((spec.to_string(), fingerprint));
    }

    /// Asks for a scan now instead of at the next interval.
    pub fn wake(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.wake.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    registry: &Registry,
    interval: Duration,
    events: &Sender<RegistryEvent>,
    wake: &Receiver<()>,
    written: &Receiver<(String, Fingerprint)>,
) {
    let mut known: HashMap<String, Option<Fingerprint>> = HashMap::new();
    loop {
        for (spec, fingerprint) in written.try_iter() {
            // Only for tasksets already seen: a first sight must always be read and sent.
            if let Some(entry) = known.get_mut(&spec) {
                *entry = Some(fingerprint);
            }
        }
        if !scan(registry, &mut known, events) {
            log::debug!("core gone: registry monitor stops");
            return;
        }
        select! {
            recv(wake) -> msg => if msg.is_err() { return },
            default(interval) => {}
        }
    }
}

/// One pass. Returns false when the core is gone.
fn scan(
    registry: &Registry,
    known: &mut HashMap<String, Option<Fingerprint>>,
    events: &Sender<RegistryEvent>,
) -> bool {
    let specs = match registry.list_specs() {
        Ok(specs) => specs,
        Err(err) => {
            return events
                .send(RegistryEvent::ScanFailed(err.to_string()))
                .is_ok()
                && events.send(RegistryEvent::ScanDone).is_ok();
        }
    };
    let mut seen = HashSet::with_capacity(specs.len());
    for spec in specs {
        // A fingerprint that cannot be read (bad name, permissions) is reported by load.
        let fingerprint = registry.fingerprint(&spec).ok().flatten();
        let unchanged =
            fingerprint.is_some() && known.get(&spec).is_some_and(|old| *old == fingerprint);
        seen.insert(spec.clone());
        if unchanged {
            continue;
        }
        let taskset = registry
            .load(&spec)
            .map(Arc::new)
            .map_err(|err| err.to_string());
        known.insert(spec.clone(), fingerprint);
        if events
            .send(RegistryEvent::Changed { spec, taskset })
            .is_err()
        {
            return false;
        }
    }
    let gone: Vec<String> = known
        .keys()
        .filter(|spec| !seen.contains(*spec))
        .cloned()
        .collect();
    for spec in gone {
        known.remove(&spec);
        if events.send(RegistryEvent::Removed { spec }).is_err() {
            return false;
        }
    }
    events.send(RegistryEvent::ScanDone).is_ok()
}
