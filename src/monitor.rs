//! The registry monitor: a thread that scans the registry when inotify reports a change (and
//! at least every `poll_interval`) and sends the core each taskset whose file changed (by
//! mtime, size and inode), and nothing else, so a scan's cost does not grow with tasksets
//! that did not change.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::registry::{Fingerprint, Registry, Taskset};
use crate::sys::{self, Inotify, WakePipe};

pub enum RegistryEvent {
    /// A taskset was read (first sight or changed file), or could not be.
    Changed {
        spec: String,
        taskset: Result<Arc<Taskset>, String>,
        /// The file's fingerprint, taken just before it was read.
        fingerprint: Option<Fingerprint>,
    },
    /// A taskset's file disappeared.
    Removed { spec: String },
    /// The tasksets directory itself could not be listed.
    ScanFailed(String),
    /// One full pass over the registry is complete; everything changed before it started
    /// has been sent. `took` is how long the pass took.
    ScanDone { took: Duration },
}

/// The monitor thread: dropping the handle stops and joins it.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    wake: Arc<WakePipe>,
    written: Sender<(String, Fingerprint)>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    pub fn spawn(registry: Registry, interval: Duration, events: Sender<RegistryEvent>) -> Monitor {
        let wake = Arc::new(WakePipe::new().expect("create the registry monitor's wake pipe"));
        let stop = Arc::new(AtomicBool::new(false));
        let (written, written_rx) = crossbeam_channel::unbounded();
        let (thread_wake, thread_stop) = (wake.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name("registry-monitor".into())
            .spawn(move || {
                let watcher = Watcher::new(&registry, thread_wake, thread_stop);
                watcher.run(&registry, interval, &events, &written_rx);
            })
            .expect("spawn registry monitor thread");
        Monitor {
            stop,
            wake,
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
        self.wake.wake();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Collecting the rename of a writer's temp file and the core's note about its own write
/// before scanning saves reading a file twice; short next to any target latency.
const SETTLE: Duration = Duration::from_millis(10);

/// Waits for the next reason to scan: a change inotify reports in the tasksets directory or
/// a spec's directory, a wake-up, or the poll interval (which also covers filesystems where
/// inotify sees nothing, such as network mounts).
struct Watcher {
    inotify: Option<Inotify>,
    wake: Arc<WakePipe>,
    stop: Arc<AtomicBool>,
    watched: HashSet<PathBuf>,
}

impl Watcher {
    fn new(registry: &Registry, wake: Arc<WakePipe>, stop: Arc<AtomicBool>) -> Watcher {
        let inotify = match Inotify::new() {
            Ok(inotify) => Some(inotify),
            Err(err) => {
                log::warn!(
                    "cannot watch {} for changes ({err}); polling only",
                    registry.root().display()
                );
                None
            }
        };
        Watcher {
            inotify,
            wake,
            stop,
            watched: HashSet::new(),
        }
    }

    fn run(
        mut self,
        registry: &Registry,
        interval: Duration,
        events: &Sender<RegistryEvent>,
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
            // After the scan, so a spec seen for the first time is watched before we wait.
            self.watch_dirs(registry, known.keys());
            if !self.wait(interval) {
                return;
            }
        }
    }

    /// Watches the registry root (until `tasksets/` exists), `tasksets/` and each spec's
    /// directory. A directory that cannot be watched is still polled.
    fn watch_dirs<'a>(&mut self, registry: &Registry, specs: impl Iterator<Item = &'a String>) {
        let Some(inotify) = &self.inotify else {
            return;
        };
        let tasksets = registry.root().join("tasksets");
        let mut dirs = vec![registry.root().to_path_buf(), tasksets.clone()];
        dirs.extend(specs.map(|spec| tasksets.join(spec)));
        for dir in dirs {
            if self.watched.contains(&dir) && dir.is_dir() {
                continue;
            }
            match inotify.watch(&dir, sys::DIR_CHANGES) {
                Ok(()) => {
                    self.watched.insert(dir);
                }
                Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => {
                    log::warn!(
                        "inotify watch limit reached at {}; polling it",
                        dir.display()
                    );
                }
                Err(_) => {
                    self.watched.remove(&dir);
                }
            }
        }
    }

    /// Returns false when the monitor must stop.
    fn wait(&self, interval: Duration) -> bool {
        let mut fds = vec![self.wake.as_raw_fd()];
        if let Some(inotify) = &self.inotify {
            fds.push(inotify.as_raw_fd());
        }
        let ready = sys::poll_readable(&fds, Some(interval)).unwrap_or_default();
        if self.stop.load(Ordering::SeqCst) {
            return false;
        }
        if ready.get(1).copied().unwrap_or(false) {
            // Let a burst of changes (a writer's temp file and rename, our own notes) settle.
            let _ = sys::poll_readable(&[self.wake.as_raw_fd()], Some(SETTLE));
            if let Some(inotify) = &self.inotify {
                inotify.drain();
            }
        }
        self.wake.drain();
        !self.stop.load(Ordering::SeqCst)
    }
}

/// One pass. Returns false when the core is gone.
fn scan(
    registry: &Registry,
    known: &mut HashMap<String, Option<Fingerprint>>,
    events: &Sender<RegistryEvent>,
) -> bool {
    let started = std::time::Instant::now();
    let specs = match registry.list_specs() {
        Ok(specs) => specs,
        Err(err) => {
            return events
                .send(RegistryEvent::ScanFailed(err.to_string()))
                .is_ok()
                && events
                    .send(RegistryEvent::ScanDone {
                        took: started.elapsed(),
                    })
                    .is_ok();
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
        let changed = RegistryEvent::Changed {
            spec,
            taskset,
            fingerprint,
        };
        if events.send(changed).is_err() {
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
    events
        .send(RegistryEvent::ScanDone {
            took: started.elapsed(),
        })
        .is_ok()
}
