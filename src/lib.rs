//! `dispatcher` runs long-running agent programs (AI coding agents and the like) for a
//! NecroCode task registry: it takes every task whose dependencies are done, orders it by a
//! scheduling policy, routes it by skill to an agent pool, runs it as a subprocess, watches
//! it, retries failures with backoff, and drains cleanly on shutdown.
//!
//! Threads: the registry monitor ([`monitor`]) and the runner watchdog ([`watchdog`]) send
//! messages to the core ([`core`]), which alone owns the scheduling state.

pub mod attempts;
pub mod authoring;
pub mod bootstrap;
pub mod config;
pub mod control;
pub mod core;
pub mod deadlock;
pub mod dispatcher;
pub mod engine;
pub mod events_view;
pub mod fsutil;
pub mod graph;
pub mod http;
pub mod launch_pool;
pub mod launcher;
pub mod live;
pub mod metrics;
pub mod monitor;
pub mod names;
pub mod notify;
pub mod placeholders;
pub mod procfs;
pub mod progress_probe;
pub mod registry;
pub mod runner_env;
pub mod runner_report;
pub mod scheduler;
pub mod slot_worker;
pub mod slots;
pub mod spawn_server;
pub mod statedir;
pub mod status;
pub mod subprocess;
pub mod supervisor;
pub mod sys;
pub mod table;
pub mod timefmt;
pub mod view;
pub mod watchdog;

pub use crate::config::Config;
pub use crate::core::RunOutcome;
pub use crate::dispatcher::{ControlHandle, DispatchError, Dispatcher};
pub use crate::status::StatusReport;
