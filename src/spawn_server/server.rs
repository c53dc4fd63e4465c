//! The spawn server process: waits for requests on its standard input (a message socket),
//! forks a supervisor for each, answers with its pid and pidfd, and reaps the supervisors
//! that end. Single-threaded by construction: that is what makes its forks sound.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use super::wire::{decode_request, encode_error, encode_pid, MAX_REQUEST};
use super::SpawnRequest;
use crate::supervisor::{self, RunnerDir};
use crate::sys::socket::MessageSocket;
use crate::sys::{self, Forked, PidFd, WakePipe};

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
    // The local time zone, read once here: a supervisor forked later inherits it instead of
    // reading and parsing the zone file for its first timestamp. (Past a second, chrono
    // checks `TZ` and /etc/localtime again, so a runner environment with another `TZ` still
    // sets the zone of its supervisor's timestamps, as it did before.)
    crate::timefmt::now();
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
        // A request that does not fit is answered like any bad one; its descriptors close
        // with `fds`.
        let received = match socket.recv(&mut buf, &mut fds) {
            Ok(None) => return Ok(()),
            Ok(Some(len)) => decode_request(&buf[..len]),
            Err(err) if err.kind() == io::ErrorKind::InvalidData => Err(err.to_string()),
            Err(err) => return Err(err),
        };
        let answer = match received {
            Ok(request) => match <[OwnedFd; 2]>::try_from(std::mem::take(&mut fds)) {
                // Our copies of the lock and log close at the end of this arm, before the
                // answer goes out: the lock belongs to its open file, and only the supervisor
                // may keep that open.
                Ok([lock, log]) => match fork_supervisor(&request) {
                    Ok(Forked::Child) => {
                        // The server's descriptors are not the supervisor's to keep.
                        drop((socket, reap));
                        become_supervisor(request, lock, log);
                    }
                    Ok(Forked::Parent { child_pid }) => Ok(child_pid),
                    Err(err) => Err(err),
                },
                Err(_) => Err("a request without its lock and log".to_string()),
            },
            Err(err) => Err(err),
        };
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
    sys::fork_single_threaded().map_err(|err| {
        format!(
            "cannot fork a supervisor for {}: {err}",
            request.dir.display()
        )
    })
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
    // Names and values were checked for `=` and NUL when the request was made.
    let environment = match sys::Environment::new(&request.env) {
        Ok(environment) => environment,
        Err(err) => {
            eprintln!("# dispatcher-supervisor: cannot take the runner's environment: {err}");
            std::process::exit(1);
        }
    };
    // SAFETY: this process was just forked from the spawn server, which
    // `fork_single_threaded` found single-threaded, and it has started no thread since.
    unsafe { environment.install() };
    supervisor::supervise_and_exit(&RunnerDir::new(request.dir));
}
