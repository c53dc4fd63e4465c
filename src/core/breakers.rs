//! Per-pool circuit breakers and the runner's own account of a failure: after each ended
//! attempt the result file and the pool's output patterns decide its failure class; a
//! `rate_limited` or `auth_expired` failure opens the pool's breaker, so the pool takes no
//! new task until the provider's `retry_after` (or the pool's `breaker_cooldown`) has passed.
//! Open breakers are kept in `<state_dir>/breakers.json` across restarts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

use super::{Core, Finish, Running};
use crate::registry::Event;
use crate::runner_report::{self, ResultStatus, RunnerResult};
use crate::supervisor::{Exit, FailureClass};
use crate::timefmt;

/// The exit code by which a runner says "temporary failure, try later" (sysexits' EX_TEMPFAIL).
pub const EX_TEMPFAIL: i32 = 75;
/// How much of the end of an attempt's log the pool's patterns are matched against.
const CLASSIFY_TAIL_BYTES: u64 = 64 * 1024;

/// An open breaker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Breaker {
    pub class: FailureClass,
    pub message: String,
    pub opened_at: String,
    /// When the pool takes tasks again.
    pub until: String,
}

impl Breaker {
    fn until(&self) -> Option<NaiveDateTime> {
        timefmt::parse(&self.until)
    }
}

impl Core {
    /// Records an attempt's end: reads what the runner reported, classifies the failure,
    /// opens the pool's breaker if the failure says so, and queues the registry write.
    pub(super) fn finish(&mut self, run: Running, mut exit: Exit) {
        if exit.stopped.is_some() && exit.reason.is_none() {
            exit.reason.clone_from(&run.stop_detail);
        }
        let result = self.assess(&run, &mut exit);
        if let (Some(class), Some(pool)) = (exit.class, run.pool) {
            if class.opens_breaker() {
                let retry_after = result.as_ref().and_then(|r| r.retry_after);
                let message = exit.describe();
                self.open_breaker(pool, class, retry_after, &message);
            }
        }
        self.pending.push(Finish { run, exit, result });
    }

    /// The result file and the failure class of an ended attempt. A stopped attempt (timeout,
    /// cancel, drain) keeps its reason; the result file's artifacts and spend still count.
    fn assess(&self, run: &Running, exit: &mut Exit) -> Option<RunnerResult> {
        let path = self.state.runner_dir(&run.runner_id).join("result.json");
        let result = match runner_report::read_result(&path) {
            Ok(result) => result,
            Err(err) => {
                log::warn!("task {}: {err}; its exit code decides", run.key);
                None
            }
        };
        if exit.stopped.is_some() || exit.class.is_some() || exit.error.is_some() {
            return result;
        }
        let said = result.as_ref().and_then(|r| r.status);
        let class = match said {
            Some(ResultStatus::Failed(class)) => Some(class),
            Some(ResultStatus::Succeeded) => None,
            None if exit.exit_code == Some(EX_TEMPFAIL) => Some(FailureClass::RateLimited),
            None => None,
        };
        let class = class.or_else(|| {
            if exit.succeeded() {
                return None;
            }
            let classify = &self.pool_config(run)?.agent.classify;
            if classify.is_empty() {
                return None;
            }
            let tail = runner_report::log_tail(&run.log_path, CLASSIFY_TAIL_BYTES);
            // An attempt that did not count shares its log with the next one: only what this
            // runner wrote (after its own header line) may classify its end.
            let header = format!("# dispatcher: runner {} ", run.runner_id);
            let own = tail.rfind(&header).map_or(tail.as_str(), |at| &tail[at..]);
            classify.class_of(own)
        });
        if let Some(class) = class {
            exit.class = Some(class);
            if exit.reason.is_none() {
                let message = result.as_ref().and_then(|r| r.message.clone());
                exit.reason = Some(match message {
                    Some(message) => format!("{}: {message}", class.as_str()),
                    None => class.as_str().to_string(),
                });
            }
        }
        result
    }

    fn pool_config(&self, run: &Running) -> Option<&crate::config::PoolConfig> {
        let pool = run.pool?;
        self.config.agent_pools.get(&self.pools[pool].name)
    }

    /// Opens (or keeps open for longer) a pool's breaker.
    fn open_breaker(
        &mut self,
        pool: usize,
        class: FailureClass,
        retry_after: Option<NaiveDateTime>,
        message: &str,
    ) {
        let name = self.pools[pool].name.clone();
        let cooldown = self
            .config
            .agent_pools
            .get(&name)
            .map(|p| p.agent.breaker_cooldown)
            .unwrap_or_default();
        let now = timefmt::now();
        let until = retry_after.unwrap_or_else(|| {
            now + chrono::Duration::from_std(cooldown).unwrap_or(chrono::Duration::MAX)
        });
        let runtime = &mut self.pools[pool];
        if let Some(open) = &runtime.breaker {
            if open.until().is_some_and(|known| known >= until) {
                return;
            }
        }
        let until_text = timefmt::format(until);
        log::warn!(
            "pool {name}: breaker open until {until_text} ({}): {message}",
            class.as_str()
        );
        runtime.breaker = Some(Breaker {
            class,
            message: message.to_string(),
            opened_at: timefmt::format(now),
            until: until_text.clone(),
        });
        crate::control::append_dispatcher_event(
            &self.state,
            &Event::new("PoolBreakerOpened", "", None)
                .with("pool", name.as_str())
                .with("class", class.as_str())
                .with("until", until_text.as_str())
                .with("message", message),
        );
        self.notify(
            crate::notify::Notice::new(
                "breaker_opened",
                format!(
                    "pool {name} takes no tasks until {until_text}: {} ({message})",
                    class.as_str()
                ),
            )
            .with("pool", name.as_str())
            .with("class", class.as_str())
            .with("until", until_text.as_str()),
        );
        self.save_breakers();
        self.snapshot_dirty = true;
    }

    /// Closes the breakers whose time has come.
    pub(super) fn close_due_breakers(&mut self) {
        let now = timefmt::now();
        let mut closed = Vec::new();
        for pool in &mut self.pools {
            let due = pool
                .breaker
                .as_ref()
                .is_some_and(|b| b.until().is_none_or(|until| until <= now));
            if due {
                pool.breaker = None;
                closed.push(pool.name.clone());
            }
        }
        if closed.is_empty() {
            return;
        }
        for name in &closed {
            log::info!("pool {name}: breaker closed; it takes tasks again");
            crate::control::append_dispatcher_event(
                &self.state,
                &Event::new("PoolBreakerClosed", "", None).with("pool", name.as_str()),
            );
            self.notify(
                crate::notify::Notice::new(
                    "breaker_closed",
                    format!("pool {name} takes tasks again"),
                )
                .with("pool", name.as_str()),
            );
        }
        self.save_breakers();
        self.snapshot_dirty = true;
    }

    /// When the next breaker closes, for the core's wake-up.
    pub(super) fn next_breaker_close(&self) -> Option<NaiveDateTime> {
        self.pools
            .iter()
            .filter_map(|p| p.breaker.as_ref()?.until())
            .min()
    }

    fn breakers_path(&self) -> PathBuf {
        self.state.root().join("breakers.json")
    }

    fn save_breakers(&self) {
        let open: BTreeMap<&str, &Breaker> = self
            .pools
            .iter()
            .filter_map(|p| Some((p.name.as_str(), p.breaker.as_ref()?)))
            .collect();
        let written = serde_json::to_vec_pretty(&open)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::fsutil::write_atomic(&self.breakers_path(), &bytes));
        if let Err(err) = written {
            log::warn!("cannot write {}: {err}", self.breakers_path().display());
        }
    }

    /// Breakers a previous dispatcher opened and that are still open.
    pub(super) fn load_breakers(&mut self) {
        let Ok(bytes) = std::fs::read(self.breakers_path()) else {
            return;
        };
        let open: BTreeMap<String, Breaker> = match serde_json::from_slice(&bytes) {
            Ok(open) => open,
            Err(err) => {
                log::warn!(
                    "{} cannot be read ({err}); no breaker is open",
                    self.breakers_path().display()
                );
                return;
            }
        };
        for (name, breaker) in open {
            if let Some(pool) = self.pools.iter_mut().find(|p| p.name == name) {
                log::info!(
                    "pool {name}: breaker still open until {} ({})",
                    breaker.until,
                    breaker.class.as_str()
                );
                pool.breaker = Some(breaker);
            }
        }
        self.close_due_breakers();
    }
}
