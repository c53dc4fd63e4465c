//! The registry monitor: a thread that scans the registry when inotify reports a change (and
//! at least every `poll_interval`) and sends the core each taskset whose file changed (by
//! mtime, size and inode), and nothing else, so a scan's cost does not grow with tasksets
//! that did not change.

mod own_writes;

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::registry::{Fingerprint, Registry, Taskset};
use crate::sys::{self, Inotify, WakePipe};

pub use own_writes::WriteMark;
use own_writes::{Own, OwnWrites};

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
    /// has been sent, but for the core's own writes and the specs it was writing then (looked
    /// at again once that write ends). `took` is how long the pass took.
    ScanDone { took: Duration },
}

/// The monitor thread: dropping the handle stops and joins it.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    wake: Arc<WakePipe>,
    own: Arc<OwnWrites>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    pub fn spawn(registry: Registry, interval: Duration, events: Sender<RegistryEvent>) -> Monitor {
        let wake = Arc::new(WakePipe::new().expect("create the registry monitor's wake pipe"));
        let stop = Arc::new(AtomicBool::new(false));
        let own = Arc::new(OwnWrites::default());
        let (thread_wake, thread_stop, thread_own) = (wake.clone(), stop.clone(), own.clone());
        let thread = thread::Builder::new()
            .name("registry-monitor".into())
            .spawn(move || {
                let watcher = Watcher::new(&registry, thread_wake, thread_stop);
                watcher.run(&registry, interval, &events, &thread_own);
            })
            .expect("spawn registry monitor thread");
        Monitor {
            stop,
            wake,
            own,
            thread: Some(thread),
        }
    }

    /// The core is about to write a taskset it holds (and so already knows the content of):
    /// until the mark ends, scans do not read that file back, and afterwards they know the
    /// file the write left. Call it before taking the spec's lock. Writes that take no mark
    /// (control commands, start-up promotions) are read back like anyone else's: correct,
    /// only not spared.
    pub fn begin_write(&self, spec: &str) -> WriteMark {
        WriteMark::begin(&self.own, &self.wake, spec)
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

/// Collecting a writer's temp file and rename (several inotify events) before scanning saves
/// scanning twice; short next to any target latency. Also how soon a spec skipped mid-write
/// is looked at again, at the latest.
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
        own: &OwnWrites,
    ) {
        let mut known: HashMap<String, Option<Fingerprint>> = HashMap::new();
        loop {
            let Some(mid_write) = scan(registry, &mut known, events, own) else {
                log::debug!("core gone: registry monitor stops");
                return;
            };
            // After the scan, so a spec seen for the first time is watched before we wait.
            self.watch_dirs(registry, known.keys());
            // A spec skipped mid-write is looked at again soon: the end of the write wakes us.
            let wait = if mid_write { SETTLE } else { interval };
            if !self.wait(wait) {
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
            // Let a burst of changes (a writer's temp file and rename) settle.
            let _ = sys::poll_readable(&[self.wake.as_raw_fd()], Some(SETTLE));
            if let Some(inotify) = &self.inotify {
                inotify.drain();
            }
        }
        self.wake.drain();
        !self.stop.load(Ordering::SeqCst)
    }
}

/// One pass. Returns whether a spec was skipped because the core was writing it, or `None`
/// when the core is gone.
fn scan(
    registry: &Registry,
    known: &mut HashMap<String, Option<Fingerprint>>,
    events: &Sender<RegistryEvent>,
    own: &OwnWrites,
) -> Option<bool> {
    let started = std::time::Instant::now();
    let done = |events: &Sender<RegistryEvent>, mid_write| {
        let took = started.elapsed();
        events
            .send(RegistryEvent::ScanDone { took })
            .is_ok()
            .then_some(mid_write)
    };
    let specs = match registry.list_specs() {
        Ok(specs) => specs,
        Err(err) => {
            events
                .send(RegistryEvent::ScanFailed(err.to_string()))
                .ok()?;
            return done(events, false);
        }
    };
    let mut mid_write = false;
    let mut seen = HashSet::with_capacity(specs.len());
    for spec in specs {
        // A fingerprint that cannot be read (bad name, permissions) is reported by load.
        let fingerprint = registry.fingerprint(&spec).ok().flatten();
        seen.insert(spec.clone());
        let Some(old) = known.get_mut(&spec) else {
            // A first sight is always read and sent, whoever wrote it.
            send_read(registry, known, events, spec, fingerprint)?;
            continue;
        };
        if fingerprint.is_some() && *old == fingerprint {
            continue;
        }
        match own.lookup(&spec, fingerprint) {
            Own::Written => *old = fingerprint,
            Own::Writing => mid_write = true,
            Own::Not => send_read(registry, known, events, spec, fingerprint)?,
        }
    }
    let gone: Vec<String> = known
        .keys()
        .filter(|spec| !seen.contains(*spec))
        .cloned()
        .collect();
    for spec in gone {
        known.remove(&spec);
        own.forget(&spec);
        events.send(RegistryEvent::Removed { spec }).ok()?;
    }
    done(events, mid_write)
}

/// Reads a taskset whose file changed and sends it to the core; `None` when the core is gone.
fn send_read(
    registry: &Registry,
    known: &mut HashMap<String, Option<Fingerprint>>,
    events: &Sender<RegistryEvent>,
    spec: String,
    fingerprint: Option<Fingerprint>,
) -> Option<()> {
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
    events.send(changed).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_support::copy_fixture_registry;
    use crossbeam_channel::Receiver;

    fn changed(events: &Receiver<RegistryEvent>) -> Vec<String> {
        events
            .try_iter()
            .filter_map(|event| match event {
                RegistryEvent::Changed { spec, .. } => Some(spec),
                _ => None,
            })
            .collect()
    }

    /// A copy of the fixture registry and what a scan of it needs.
    struct Fixture {
        _tmp: tempfile::TempDir,
        registry: Registry,
        own: Arc<OwnWrites>,
        wake: Arc<WakePipe>,
        tx: Sender<RegistryEvent>,
        rx: Receiver<RegistryEvent>,
        known: HashMap<String, Option<Fingerprint>>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let (_tmp, root) = copy_fixture_registry();
            let (tx, rx) = crossbeam_channel::unbounded();
            Fixture {
                _tmp,
                registry: Registry::new(&root),
                own: Arc::new(OwnWrites::default()),
                wake: Arc::new(WakePipe::new().unwrap()),
                tx,
                rx,
                known: HashMap::new(),
            }
        }
    }

    fn touch(registry: &Registry, spec: &str, n: u64) -> Option<Fingerprint> {
        registry
            .update(spec, |t| {
                t.metadata.insert("n".into(), n.into());
                ((), true)
            })
            .unwrap();
        registry.fingerprint(spec).unwrap()
    }

    #[test]
    fn the_cores_own_writes_are_not_read_back_but_other_writes_are() {
        let Fixture {
            _tmp,
            registry,
            own,
            wake,
            tx,
            rx,
            mut known,
        } = Fixture::new();
        assert_eq!(scan(&registry, &mut known, &tx, &own), Some(false));
        let first = changed(&rx);
        assert!(first.contains(&"tiny".to_string()), "{first:?}");

        // Written by the core: known from the mark, not read, even with the core's next
        // write already under way.
        let mark = WriteMark::begin(&own, &wake, "tiny");
        let fingerprint = touch(&registry, "tiny", 1);
        mark.written(fingerprint);
        let next = WriteMark::begin(&own, &wake, "tiny");
        assert_eq!(scan(&registry, &mut known, &tx, &own), Some(false));
        assert!(changed(&rx).is_empty());
        assert_eq!(known["tiny"], fingerprint);
        drop(next);

        // Written by someone else: read and sent.
        touch(&registry, "tiny", 2);
        assert_eq!(scan(&registry, &mut known, &tx, &own), Some(false));
        assert_eq!(changed(&rx), ["tiny"]);
    }

    #[test]
    fn a_spec_met_mid_write_is_skipped_until_the_write_ends() {
        let Fixture {
            _tmp,
            registry,
            own,
            wake,
            tx,
            rx,
            mut known,
        } = Fixture::new();
        scan(&registry, &mut known, &tx, &own);
        changed(&rx);

        let mark = WriteMark::begin(&own, &wake, "tiny");
        touch(&registry, "tiny", 1);
        assert_eq!(scan(&registry, &mut known, &tx, &own), Some(true));
        assert!(changed(&rx).is_empty());
        // A write that records no fingerprint (it failed after the rename, say): the file is
        // read like anyone else's, and the end of the mark asked for that scan.
        drop(mark);
        assert!(sys::poll_readable(&[wake.as_raw_fd()], Some(Duration::ZERO)).unwrap()[0]);
        assert_eq!(scan(&registry, &mut known, &tx, &own), Some(false));
        assert_eq!(changed(&rx), ["tiny"]);
    }
}
