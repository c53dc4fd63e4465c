//! The embeddable dispatcher: build a [`Config`], `Dispatcher::new(config)`, `start()` (spawns
//! the threads and returns), `status()`, and `stop(timeout)` (the drain) or `wait()`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::config::Config;
use crate::core::{Control, Core, CoreParts, RunOutcome};
use crate::statedir::{StateDir, StateDirError};
use crate::status::StatusReport;
use crate::watchdog::Watchdog;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("the dispatcher is already started")]
    AlreadyStarted,
    #[error("the dispatcher is not running")]
    NotRunning,
    #[error("the core thread panicked")]
    CorePanicked,
    #[error("the core did not answer within {0:?}")]
    Busy(Duration),
    #[error("cannot start a dispatcher thread: {0}")]
    Thread(std::io::Error),
}

/// A dispatcher over one registry and one state directory.
pub struct Dispatcher {
    config: Arc<Config>,
    until_idle: bool,
    started: Option<Started>,
}

struct Started {
    control: Sender<Control>,
    core: JoinHandle<RunOutcome>,
    shutdowns: Arc<AtomicUsize>,
}

/// Steers a running dispatcher from another thread (a signal handler, say); cheap to clone.
#[derive(Clone)]
pub struct ControlHandle {
    control: Sender<Control>,
    requests: Arc<AtomicUsize>,
}

impl ControlHandle {
    /// Asks for a shutdown. The first request drains (waits for runners up to
    /// `graceful_shutdown_timeout`), the second stops the runners at once. Returns how many
    /// shutdown requests there have been, this one included.
    pub fn shutdown(&self) -> usize {
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.control.send(Control::Shutdown { force: n > 1 });
        n
    }

    /// Applies a new configuration without stopping running runners: pools (list, limits,
    /// quotas, commands for new launches), skill mapping, policy, retry and timeouts. The
    /// registry, state dir, slot pools and poll interval take effect at the next start.
    pub fn reload(&self, config: Config) {
        let _ = self.control.send(Control::Reload(Box::new(config)));
    }

    /// The same report as `dispatcher status --json`, answered by the core, for threads
    /// other than the embedder's (the HTTP endpoint). Gives up after `timeout` so that a
    /// busy core cannot pile up waiting clients.
    pub fn status(&self, timeout: Duration) -> Result<StatusReport, DispatchError> {
        ask_status(&self.control, timeout)
    }
}

/// Sends `Control::Status` with its own reply channel and waits up to `timeout` for it.
fn ask_status(control: &Sender<Control>, timeout: Duration) -> Result<StatusReport, DispatchError> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    control
        .send(Control::Status(reply))
        .map_err(|_| DispatchError::NotRunning)?;
    answer.recv_timeout(timeout).map_err(|err| match err {
        crossbeam_channel::RecvTimeoutError::Timeout => DispatchError::Busy(timeout),
        crossbeam_channel::RecvTimeoutError::Disconnected => DispatchError::NotRunning,
    })
}

/// How long `Dispatcher::status` waits for the core: it answers between two events, so
/// anything near this means the core is stuck.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);

impl Dispatcher {
    pub fn new(config: Config) -> Dispatcher {
        Dispatcher {
            config: Arc::new(config),
            until_idle: false,
            started: None,
        }
    }

    /// Ends the run by itself once nothing is ready, running or waiting for a retry.
    #[must_use]
    pub fn until_idle(mut self, until_idle: bool) -> Dispatcher {
        self.until_idle = until_idle;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Takes the state directory's lock and starts the core, monitor and watchdog threads.
    pub fn start(&mut self) -> Result<(), DispatchError> {
        if self.started.is_some() {
            return Err(DispatchError::AlreadyStarted);
        }
        let state = StateDir::new(&self.config.dispatcher.state_dir);
        let lock = state.lock()?;
        let (control_tx, control_rx) = crossbeam_channel::unbounded();
        let core = Core::new(self.config.clone(), state, self.until_idle);
        let (runner_tx, runner_events) = crossbeam_channel::unbounded();
        let watchdog = Watchdog::spawn(runner_tx.clone()).map_err(DispatchError::Thread)?;
        let parts = CoreParts {
            lock,
            control: control_rx,
            watchdog,
            runner_events,
            runner_events_tx: runner_tx,
        };
        let core = thread::Builder::new()
            .name("core".into())
            .spawn(move || core.run(parts))
            .expect("spawn core thread");
        self.started = Some(Started {
            control: control_tx,
            core,
            shutdowns: Arc::new(AtomicUsize::new(0)),
        });
        Ok(())
    }

    pub fn control_handle(&self) -> Result<ControlHandle, DispatchError> {
        let started = self.started.as_ref().ok_or(DispatchError::NotRunning)?;
        Ok(ControlHandle {
            control: started.control.clone(),
            requests: started.shutdowns.clone(),
        })
    }

    /// The same report as `dispatcher status --json`, answered by the core itself.
    pub fn status(&self) -> Result<StatusReport, DispatchError> {
        let started = self.started.as_ref().ok_or(DispatchError::NotRunning)?;
        ask_status(&started.control, STATUS_TIMEOUT)
    }

    /// Drains: no new tasks; running runners get up to `timeout` to finish, then are
    /// stopped and their tasks go back to ready. Returns when every thread is joined.
    pub fn stop(&mut self, timeout: Duration) -> Result<RunOutcome, DispatchError> {
        let started = self.started.as_ref().ok_or(DispatchError::NotRunning)?;
        let _ = started.control.send(Control::Drain { timeout });
        self.wait()
    }

    /// Waits for the run to end (by itself with `until_idle`, or after a shutdown request).
    pub fn wait(&mut self) -> Result<RunOutcome, DispatchError> {
        let started = self.started.take().ok_or(DispatchError::NotRunning)?;
        let Started { control, core, .. } = started;
        let outcome = core.join().map_err(|_| DispatchError::CorePanicked);
        drop(control);
        outcome
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        // Never leave runners behind: an embedder that forgets to stop gets a drain with
        // the configured timeout.
        if self.started.is_some() {
            let timeout = self.config.dispatcher.graceful_shutdown_timeout;
            let _ = self.stop(timeout);
        }
    }
}
