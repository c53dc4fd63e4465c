//! The dispatcher's side of the spawn server: starts it on first use, sends requests one at a
//! time, and tells a lost server (start another) from a refused request (nothing ran) and
//! from an unanswered one (only the runner's lock can tell).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::wire::{decode_answer, encode_request, MAX_ANSWER};
use super::{SpawnFailure, SpawnRequest, Spawned, SPAWN_SERVER_ARG};
use crate::sys;
use crate::sys::socket::MessageSocket;

/// How long an answer may take: a fork takes a millisecond, so a server silent this long is
/// stopped or stuck (say, entering a directory on a hung network mount).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The dispatcher's connection to its spawn server, started on first use and again after
/// the server was lost. Requests are serialised: the server forks one child at a time.
pub struct SpawnServer {
    program: PathBuf,
    answer_timeout: Duration,
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
        // A connection is only dropped when its server is lost, stuck or untrustworthy: kill
        // it (its supervisors live on) and reap it.
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl SpawnServer {
    /// A server run by `program` (which must handle [`SPAWN_SERVER_ARG`] through
    /// [`crate::supervisor::run_if_requested`]); nothing is started yet.
    pub fn new(program: PathBuf) -> SpawnServer {
        SpawnServer::with_answer_timeout(program, ANSWER_TIMEOUT)
    }

    fn with_answer_timeout(program: PathBuf, answer_timeout: Duration) -> SpawnServer {
        SpawnServer {
            program,
            answer_timeout,
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
        let bytes = encode_request(request)?;
        let fds = [lock.as_raw_fd(), log.as_raw_fd()];
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A server lost since the last request shows here, as a send to a closed socket:
        // nothing reached it, so the request goes to a new one.
        let live = loop {
            let live = match connection.take() {
                Some(live) => live,
                None => self.start().map_err(SpawnFailure::NotSent)?,
            };
            match live.socket.send(&bytes, &fds) {
                Ok(()) => break connection.insert(live),
                Err(err) if !is_closed(&err) => {
                    // Not the server's fault: it stays.
                    *connection = Some(live);
                    return Err(SpawnFailure::NotSent(err));
                }
                Err(err) if live.fresh => return Err(SpawnFailure::NotSent(err)),
                Err(err) => log::warn!("the spawn server is gone ({err}); starting another"),
            }
        };
        live.fresh = false;
        let answer = self.answer(&live.socket);
        if matches!(answer, Err(SpawnFailure::Unconfirmed(_))) {
            *connection = None;
        }
        answer
    }

    fn answer(&self, socket: &MessageSocket) -> Result<Spawned, SpawnFailure> {
        let ready = sys::poll_readable(&[socket.as_raw_fd()], Some(self.answer_timeout))
            .map_err(SpawnFailure::Unconfirmed)?;
        if !ready[0] {
            return Err(SpawnFailure::Unconfirmed(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {:?}", self.answer_timeout),
            )));
        }
        let (mut answer, mut fds) = ([0; MAX_ANSWER], Vec::new());
        match socket.recv(&mut answer, &mut fds) {
            Ok(Some(len)) => decode_answer(&answer[..len], fds),
            Ok(None) => Err(SpawnFailure::Unconfirmed(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server exited",
            ))),
            Err(err) => Err(SpawnFailure::Unconfirmed(err)),
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

/// Whether a send failed because the other end is gone (as opposed to, say, a message too
/// big for the socket, which another server would refuse as well).
fn is_closed(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN | libc::ECONNREFUSED)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for the server program (a real process, not the dispatcher's server): a
    /// script run with the socket as its standard input.
    fn script(dir: &std::path::Path, body: &str) -> PathBuf {
        let path = dir.join("server.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn request(dir: &std::path::Path) -> SpawnRequest {
        SpawnRequest {
            dir: dir.join("runner"),
            cwd: dir.to_path_buf(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        }
    }

    #[test]
    fn a_server_that_reads_and_exits_leaves_the_request_unconfirmed() {
        let dir = tempfile::tempdir().unwrap();
        // Reads one message (the request, with its descriptors) and exits without answering.
        let server = SpawnServer::new(script(dir.path(), "head -c 1 >/dev/null"));
        let (lock, log) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        let failure = server.spawn(&request(dir.path()), &lock, &log).unwrap_err();
        assert!(matches!(failure, SpawnFailure::Unconfirmed(_)), "{failure}");
        assert!(
            server.connection.lock().unwrap().is_none(),
            "the server is dropped"
        );
    }

    #[test]
    fn a_silent_server_times_out_and_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let server = SpawnServer::with_answer_timeout(
            script(dir.path(), "exec sleep 600"),
            Duration::from_millis(200),
        );
        let (lock, log) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        let failure = server.spawn(&request(dir.path()), &lock, &log).unwrap_err();
        assert!(
            matches!(&failure, SpawnFailure::Unconfirmed(e) if e.kind() == io::ErrorKind::TimedOut),
            "{failure}"
        );
        assert!(server.connection.lock().unwrap().is_none());
    }

    #[test]
    fn a_program_that_cannot_start_is_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let server = SpawnServer::new(dir.path().join("missing"));
        let (lock, log) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        let failure = server.spawn(&request(dir.path()), &lock, &log).unwrap_err();
        assert!(matches!(failure, SpawnFailure::NotSent(_)), "{failure}");
    }
}
