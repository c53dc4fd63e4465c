//! The spawn server: one small single-threaded process, started once, that forks a
//! supervisor per runner, instead of the dispatcher exec'ing the supervisor program for
//! each. A fork of a small process costs a tenth of an exec (no loader, no relocations), and
//! the supervisor start was half of the dispatcher's CPU time per task (W1 in bench/).
//!
//! The forked supervisor is the same code with the same protocol as an exec'd one
//! ([`crate::supervisor`]): the dispatcher still writes and locks `runner.json` and opens the
//! log; it sends both descriptors (`SCM_RIGHTS`) with the runner directory, the working
//! directory and the environment in one message ([`wire`]). The server enters the working
//! directory, forks, and answers with the supervisor's pid and a pidfd opened before the
//! child can be reaped ([`server`]). The child puts the lock on its standard input and the
//! log on its standard output and error, takes the environment, and supervises. The server
//! reaps its children.
//!
//! The supervisors are the server's children, in sessions of their own: they outlive the
//! server and the dispatcher alike. The server exits when the dispatcher's end of the socket
//! closes ([`client`]), so it never outlives the dispatcher by more than an instant.

mod client;
mod server;
mod wire;

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

pub use client::SpawnServer;
pub use server::serve;

use crate::sys::PidFd;

/// The hidden first argument that turns the binary into the spawn server.
pub const SPAWN_SERVER_ARG: &str = "__spawn-server";

/// What the dispatcher asks for: a supervisor for the runner of `dir`.
#[derive(Debug, PartialEq)]
pub struct SpawnRequest {
    pub dir: PathBuf,
    pub cwd: PathBuf,
    pub env: Vec<(OsString, OsString)>,
}

/// A supervisor the server started.
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    /// Opened by the server while the child could not yet be reaped; `None` if that failed.
    pub pidfd: Option<PidFd>,
}

/// Why no supervisor is known to run.
#[derive(Debug, thiserror::Error)]
pub enum SpawnFailure {
    /// The request never reached a server: nothing was started, the caller may start the
    /// supervisor another way.
    #[error("the spawn server did not take the request: {0}")]
    NotSent(io::Error),
    /// The request cannot be served (an environment variable with a NUL byte, a working
    /// directory that cannot be entered, a failed fork): nothing was started.
    #[error("{0}")]
    Refused(String),
    /// The request was sent but no answer came (the server died or hung): a supervisor may
    /// or may not have been forked. Only the runner's lock can tell.
    #[error("the spawn server did not answer: {0}")]
    Unconfirmed(io::Error),
}
