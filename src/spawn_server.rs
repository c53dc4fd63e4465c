//! The spawn server: one small single-threaded process, started once, that forks a
//! supervisor per runner, instead of the dispatcher exec'ing the supervisor program for
//! each. A fork of a small process costs a tenth of an exec (no loader, no relocations), and
//! the supervisor start was half of the dispatcher's CPU time per task (W1 in bench/).
//!
//! The forked supervisor is the same code with the same protocol as an exec'd one
//! ([`crate::supervisor`]): the dispatcher still writes and locks `runner.json` and opens the
//! log; it sends both descriptors (`SCM_RIGHTS`) with the runner directory, the working
//! directory and the environment in one message. The server enters the working directory,
//! forks, and answers with the supervisor's pid and a pidfd opened before the child can be
//! reaped. The child puts the lock on its standard input and the log on its standard output
//! and error, takes the environment, and supervises. The server reaps its children.
//!
//! The supervisors are the server's children, in sessions of their own: they outlive the
//! server and the dispatcher alike. The server exits when the dispatcher's end of the socket
//! closes, so it never outlives the dispatcher by more than an instant.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::supervisor::{self, RunnerDir};
use crate::sys::socket::MessageSocket;
use crate::sys::{self, Forked, PidFd, WakePipe};

/// The hidden first argument that turns the binary into the spawn server.
pub const SPAWN_SERVER_ARG: &str = "__spawn-server";

/// The longest request: a runner's environment may be large, but not larger than this.
const MAX_REQUEST: usize = 1 << 20;
/// The longest answer (an error message).
const MAX_ANSWER: usize = 16 << 10;

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
    /// The server refused (the working directory cannot be entered, fork failed): nothing
    /// was started.
    #[error("{0}")]
    Refused(String),
    /// The request was sent but no answer came (the server died): a supervisor may or may not
    /// have been forked. Only the runner's lock can tell.
    #[error("the spawn server did not answer: {0}")]
    Unconfirmed(io::Error),
}

// ----- the dispatcher's side ---------------------------------------------------------------

/// The dispatcher's connection to its spawn server, started on first use and again after
/// the server was lost. Requests are serialised: the server forks one child at a time.
pub struct SpawnServer {
    program: PathBuf,
    connection: Mutex<Option<Connection>>,
}

struct Connection {
    socket: MessageSocket,
    server: Child,
    /// Nothing was sent to it yet: a failed send is not a server lost since.
    fresh: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Closing the socket ends a healthy server; a wedged one is killed. Reaped either way.
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl SpawnServer {
    /// A server run by `program` (which must handle [`SPAWN_SERVER_ARG`] through
    /// [`supervisor::run_if_requested`]); nothing is started yet.
    pub fn new(program: PathBuf) -> SpawnServer {
        SpawnServer {
            program,
            connection: Mutex::new(None),
        }
    }

    /// Asks the server for a supervisor of `request.dir`, handing it `lock` (the locked
    /// `runner.json`) and `log`. The caller keeps its own copies and closes them after.
    pub fn spawn(
        &self,
        request: &SpawnRequest,
        lock: &impl AsRawFd,
        log: &impl AsRawFd,
    ) -> Result<Spawned, SpawnFailure> {
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let bytes = encode_request(request);
        let fds = [lock.as_raw_fd(), log.as_raw_fd()];
        // A server lost since the last request shows here, as a failed send: nothing reached
        // it, so the request goes to a new one.
        let live = loop {
            let live = match connection.take() {
                Some(live) => live,
                None => self.start().map_err(SpawnFailure::NotSent)?,
            };
            match live.socket.send(&bytes, &fds) {
                Ok(()) => break connection.insert(live),
                Err(err) if live.fresh => return Err(SpawnFailure::NotSent(err)),
                Err(err) => log::warn!("the spawn server is gone ({err}); starting another"),
            }
        };
        live.fresh = false;
        let (mut answer, mut fds) = ([0; MAX_ANSWER], Vec::new());
        match live.socket.recv(&mut answer, &mut fds) {
            Ok(Some(len)) => decode_answer(&answer[..len], fds),
            Ok(None) => {
                *connection = None;
                Err(SpawnFailure::Unconfirmed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server exited",
                )))
            }
            Err(err) => {
                *connection = None;
                Err(SpawnFailure::Unconfirmed(err))
            }
        }
    }

    fn start(&self) -> io::Result<Connection> {
        let (ours, theirs) = MessageSocket::pair()?;
        let server = Command::new(&self.program)
            .arg(SPAWN_SERVER_ARG)
            .stdin(Stdio::from(theirs.into_owned()))
            .stdout(Stdio::null())
            // Its own group: a terminal's Ctrl-C is the dispatcher's to handle; the server
            // ends when the dispatcher's end of the socket closes.
            .process_group(0)
            .spawn()?;
        log::debug!(
            "spawn server {} started ({})",
            server.id(),
            self.program.display()
        );
        Ok(Connection {
            socket: ours,
            server,
            fresh: true,
        })
    }
}

// ----- the wire format ---------------------------------------------------------------------
//
// A request is a sequence of fields, each a little-endian u32 length and its bytes: the
// runner directory, the working directory, then one `NAME=value` per environment variable.
// It carries two descriptors: the locked `runner.json`, the log. An answer is `P` and the
// supervisor's pid (u32, with its pidfd attached when there is one), or `E` and a message.

fn encode_request(request: &SpawnRequest) -> Vec<u8> {
    let mut out = Vec::new();
    let mut field = |bytes: &[u8]| {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
    };
    field(request.dir.as_os_str().as_bytes());
    field(request.cwd.as_os_str().as_bytes());
    for (name, value) in &request.env {
        let mut pair = name.as_bytes().to_vec();
        pair.push(b'=');
        pair.extend_from_slice(value.as_bytes());
        field(&pair);
    }
    out
}

fn decode_request(mut bytes: &[u8]) -> Result<SpawnRequest, String> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or("a request field is cut short")?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err("a request field is cut short".into());
        }
        let (field, rest) = rest.split_at(len);
        fields.push(field);
        bytes = rest;
    }
    let [dir, cwd, env @ ..] = fields.as_slice() else {
        return Err("a request without its directories".into());
    };
    let path = |bytes: &[u8]| PathBuf::from(OsStr::from_bytes(bytes));
    let env = env
        .iter()
        .map(|pair| {
            // A name never holds `=` (nor does it start a value), so the first one splits.
            let at = pair
                .iter()
                .position(|&b| b == b'=')
                .filter(|&at| at > 0)
                .ok_or("an environment entry without NAME=")?;
            Ok((
                OsString::from_vec(pair[..at].to_vec()),
                OsString::from_vec(pair[at + 1..].to_vec()),
            ))
        })
        .collect::<Result<_, String>>()?;
    Ok(SpawnRequest {
        dir: path(dir),
        cwd: path(cwd),
        env,
    })
}

fn encode_pid(pid: u32) -> Vec<u8> {
    let mut out = vec![b'P'];
    out.extend_from_slice(&pid.to_le_bytes());
    out
}

fn encode_error(message: &str) -> Vec<u8> {
    let mut out = vec![b'E'];
    out.extend_from_slice(message.as_bytes());
    out
}

fn decode_answer(answer: &[u8], mut fds: Vec<OwnedFd>) -> Result<Spawned, SpawnFailure> {
    match answer.split_first() {
        Some((b'P', pid)) => {
            let pid = <[u8; 4]>::try_from(pid)
                .map(u32::from_le_bytes)
                .map_err(|_| SpawnFailure::Unconfirmed(io::Error::other("a malformed answer")))?;
            Ok(Spawned {
                pid,
                pidfd: fds.pop().map(PidFd::from_owned),
            })
        }
        Some((b'E', message)) => Err(SpawnFailure::Refused(
            String::from_utf8_lossy(message).into_owned(),
        )),
        _ => Err(SpawnFailure::Unconfirmed(io::Error::other(
            "a malformed answer",
        ))),
    }
}

// ----- the server --------------------------------------------------------------------------

static REAP_WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_child_exit(_: libc::c_int) {
    sys::write_byte_from_handler(REAP_WAKE_FD.load(Ordering::Relaxed));
}

/// Runs the server on the socket that is this process's standard input, and exits when the
/// other end closes.
pub fn serve() -> ! {
    match serve_until_closed() {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            eprintln!("dispatcher spawn server: {err}");
            std::process::exit(1);
        }
    }
}

fn serve_until_closed() -> io::Result<()> {
    let socket = MessageSocket::from_owned(OwnedFd::from(sys::take_stdin()?));
    let reap = WakePipe::new()?;
    REAP_WAKE_FD.store(reap.write_fd(), Ordering::Relaxed);
    sys::install_signal_handler(libc::SIGCHLD, on_child_exit);
    // Allocated once: a fork copies the page tables of whatever the server has touched.
    let (mut buf, mut fds) = (vec![0; MAX_REQUEST], Vec::new());
    loop {
        let ready = sys::poll_readable(&[socket.as_raw_fd(), reap.as_raw_fd()], None)?;
        if ready[1] {
            reap.drain();
            sys::reap_exited_children();
        }
        if !ready[0] {
            continue;
        }
        let Some(len) = socket.recv(&mut buf, &mut fds)? else {
            return Ok(());
        };
        let answer = match decode_request(&buf[..len]) {
            Ok(decoded) => match <[OwnedFd; 2]>::try_from(std::mem::take(&mut fds)) {
                Ok([lock, log]) => match fork_supervisor(&decoded) {
                    Ok(Forked::Child) => {
                        // The server's descriptors are not the supervisor's to keep.
                        drop((socket, reap));
                        become_supervisor(decoded, lock, log);
                    }
                    Ok(Forked::Parent { child_pid }) => Ok(child_pid),
                    Err(err) => Err(err),
                },
                Err(_) => Err("a request without its lock and log".to_string()),
            },
            Err(err) => Err(err),
        };
        // Our copies of the lock and log must close now: the lock is held by its open file,
        // and only the supervisor may keep it open.
        fds.clear();
        match answer {
            Ok(pid) => {
                // Opened before the next reaping, so it cannot name a reused pid.
                let pidfd = PidFd::open(pid).ok();
                let attached: Vec<RawFd> = pidfd.iter().map(AsRawFd::as_raw_fd).collect();
                socket.send(&encode_pid(pid), &attached)?;
            }
            Err(message) => socket.send(&encode_error(&message), &[])?,
        }
    }
}

/// Enters the runner's working directory (inherited by the child) and forks.
fn fork_supervisor(request: &SpawnRequest) -> Result<Forked, String> {
    std::env::set_current_dir(&request.cwd)
        .map_err(|err| format!("cannot enter {}: {err}", request.cwd.display()))?;
    sys::fork_single_threaded().map_err(|err| format!("cannot fork a supervisor: {err}"))
}

/// The forked child: takes the lock, the log and the environment, then supervises.
fn become_supervisor(request: SpawnRequest, lock: OwnedFd, log: OwnedFd) -> ! {
    let placed = sys::dup_onto(&lock, 0)
        .and_then(|()| sys::dup_onto(&log, 1))
        .and_then(|()| sys::dup_onto(&log, 2));
    if let Err(err) = placed {
        eprintln!("# dispatcher-supervisor: cannot take the runner's lock and log: {err}");
        std::process::exit(1);
    }
    drop((lock, log));
    // This process has one thread, so changing the environment cannot race a reader.
    for (name, _) in std::env::vars_os() {
        std::env::remove_var(name);
    }
    for (name, value) in &request.env {
        std::env::set_var(name, value);
    }
    supervisor::supervise_and_exit(&RunnerDir::new(request.dir));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_back_as_it_was_written() {
        let request = SpawnRequest {
            dir: PathBuf::from("/state/runners/r-1"),
            cwd: PathBuf::from("/work/slot 1"),
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("EMPTY".into(), "".into()),
                ("WITH_EQUALS".into(), "a=b=c".into()),
                ("BYTES".into(), OsString::from_vec(vec![0xff, b'x'])),
            ],
        };
        assert_eq!(decode_request(&encode_request(&request)).unwrap(), request);
    }

    #[test]
    fn malformed_requests_and_answers_are_errors() {
        assert!(decode_request(&[5, 0, 0, 0, b'a']).is_err());
        assert!(decode_request(&[1, 0, 0]).is_err());
        let only_dir = encode_request(&SpawnRequest {
            dir: "/d".into(),
            cwd: "/c".into(),
            env: vec![],
        });
        assert!(decode_request(&only_dir[..6]).is_err());
        let mut nameless = only_dir.clone();
        nameless.extend_from_slice(&[2, 0, 0, 0, b'=', b'x']);
        assert!(decode_request(&nameless).is_err());
        assert!(matches!(
            decode_answer(b"E no room", vec![]),
            Err(SpawnFailure::Refused(m)) if m == " no room"
        ));
        assert!(matches!(
            decode_answer(b"P12", vec![]),
            Err(SpawnFailure::Unconfirmed(_))
        ));
        assert_eq!(decode_answer(&encode_pid(42), vec![]).unwrap().pid, 42);
    }
}
