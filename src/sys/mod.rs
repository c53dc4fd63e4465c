//! The few Linux system calls the dispatcher needs beyond std, each behind a safe function:
//! process-exit file descriptors (pidfd), a wake-up pipe, `poll`, and signals to processes and
//! process groups, fork for the spawn server, message sockets that carry descriptors
//! ([`socket`]). All `unsafe` of the crate lives here.

pub mod socket;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A file descriptor that becomes readable when its process exits. Unlike a pid it cannot
/// come to mean another process later, so signals sent through it never hit a stranger.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
}

impl PidFd {
    pub fn open(pid: u32) -> io::Result<PidFd> {
        let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
        // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
        Ok(PidFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// A pidfd opened elsewhere (the spawn server sends the ones of its children).
    pub fn from_owned(fd: OwnedFd) -> PidFd {
        PidFd { fd }
    }

    /// Sends `signal` to the process; an exited process is not an error.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: pidfd_send_signal with a valid descriptor, no siginfo and no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }

    /// Whether the process has exited (the descriptor is readable).
    pub fn exited(&self) -> bool {
        matches!(poll_readable(&[self.fd.as_raw_fd()], Some(Duration::ZERO)), Ok(r) if r[0])
    }
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An inotify instance: a descriptor that becomes readable when a watched directory changes.
#[derive(Debug)]
pub struct Inotify {
    fd: OwnedFd,
}

/// What makes a watched directory's descriptor readable: files created, written, renamed in
/// or out, or removed.
pub const DIR_CHANGES: u32 = libc::IN_CREATE
    | libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_ONLYDIR;

impl Inotify {
    pub fn new() -> io::Result<Inotify> {
        // SAFETY: inotify_init1 takes flags and returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us.
        Ok(Inotify {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches a directory (adding it again is harmless: the kernel keeps one watch).
    pub fn watch(&self, dir: &std::path::Path, mask: u32) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: a valid descriptor and a NUL-terminated path that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Discards the pending events: the monitor rescans rather than read them.
    pub fn drain(&self) {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a local buffer of the given length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
    }
}

impl AsRawFd for Inotify {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A non-blocking pipe used to wake a thread that waits in [`poll_readable`].
#[derive(Debug)]
pub struct WakePipe {
    read: File,
    write: File,
}

impl WakePipe {
    pub fn new() -> io::Result<WakePipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills the two-element array on success.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        Ok(unsafe {
            WakePipe {
                read: File::from_raw_fd(fds[0]),
                write: File::from_raw_fd(fds[1]),
            }
        })
    }

    /// The raw write end, for a signal handler (writing one byte is async-signal-safe).
    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    pub fn wake(&self) {
        // A full pipe already guarantees a wake-up, so a failed write is fine.
        let _ = (&self.write).write(&[1]);
    }

    /// Empties the pipe after a wake-up.
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.read).read(&mut buf), Ok(n) if n > 0) {}
    }
}

impl AsRawFd for WakePipe {
    fn as_raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

/// Waits until one of `fds` is readable or `timeout` passes (`None`: no timeout). Returns
/// which are readable. An interrupted wait returns all false.
pub fn poll_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout_ms = match timeout {
        None => -1,
        // Round up so a 0.4 ms timer does not turn into a busy loop of zero-length waits.
        Some(t) => libc::c_int::try_from(t.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX),
    };
    let count = libc::nfds_t::try_from(polls.len()).map_err(io::Error::other)?;
    // SAFETY: `polls` is a valid array of `count` pollfd structures for the whole call.
    let rc = unsafe { libc::poll(polls.as_mut_ptr(), count, timeout_ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(err);
    }
    Ok(polls.iter().map(|p| p.revents != 0).collect())
}

/// Sends `signal` to a whole process group. A group that is gone is not an error.
pub fn signal_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Whether any process of the group is still alive.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission.
    pgid > 1 && unsafe { libc::kill(-pgid, 0) } == 0
}

/// Whether a process with this pid exists (it may belong to another user).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Starts a new session for this process (the supervisor): it then has no controlling
/// terminal, so a terminal's Ctrl-C or hang-up never reaches it or its runner.
pub fn new_session() -> io::Result<()> {
    // SAFETY: setsid is async-signal-safe and has no memory effects.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes this process's standard input as a `File` (the supervisor's lock), and puts
/// `/dev/null` in its place so nothing inherits the lock by accident.
pub fn take_stdin() -> io::Result<File> {
    // SAFETY: dup of fd 0 returns a new descriptor that we own; F_DUPFD_CLOEXEC keeps it
    // from being inherited by the runner.
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created above and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    let null = File::open("/dev/null")?;
    // SAFETY: dup2 onto fd 0 replaces standard input; `null` stays valid for the call.
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// What [`fork_single_threaded`] returned in this process.
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    Child,
    Parent { child_pid: u32 },
}

/// Forks this process, which must have one thread only (checked first: after a fork the
/// child of a threaded process may only make async-signal-safe calls, so that is an error).
/// The spawn server is single-threaded by construction.
pub fn fork_single_threaded() -> io::Result<Forked> {
    if thread_count()? != 1 {
        return Err(io::Error::other(
            "fork refused: this process has several threads",
        ));
    }
    // SAFETY: with a single thread, the child is a complete copy of this process: no lock
    // can be held by a thread that does not exist in it.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            child_pid: u32::try_from(pid).map_err(io::Error::other)?,
        }),
    }
}

extern "C" {
    /// The C library's environment block, which `getenv`, `setenv`, `posix_spawnp` and
    /// Rust's `std::env` read.
    static mut environ: *mut *mut libc::c_char;
}

/// A whole environment, checked and ready to become a process's own in one step: removing
/// and setting each variable through `std::env` takes quadratic time and an allocation and
/// a lock per call. A forked supervisor takes its runner's environment this way.
#[derive(Debug)]
pub struct Environment(Vec<std::ffi::CString>);

impl Environment {
    /// `NAME=value` entries for `vars`; fails, naming the variable, on a NUL byte.
    pub fn new(vars: &[(std::ffi::OsString, std::ffi::OsString)]) -> io::Result<Environment> {
        use std::os::unix::ffi::OsStrExt;
        let mut entries = Vec::with_capacity(vars.len());
        for (name, value) in vars {
            let mut entry = Vec::with_capacity(name.len() + value.len() + 1);
            entry.extend_from_slice(name.as_bytes());
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            let entry = std::ffi::CString::new(entry).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("environment variable {name:?} holds a NUL byte"),
                )
            })?;
            entries.push(entry);
        }
        Ok(Environment(entries))
    }

    /// Makes this the whole environment of the process, for the rest of its life (the
    /// strings are leaked: the C library may keep pointers into them).
    ///
    /// # Safety
    ///
    /// The process must have exactly one thread, such as a child of
    /// [`fork_single_threaded`] that has started none: `environ` is replaced without the
    /// lock under which other threads would read it.
    pub unsafe fn install(self) {
        let mut block: Vec<*mut libc::c_char> = self
            .0
            .into_iter()
            .map(std::ffi::CString::into_raw)
            .collect();
        block.push(std::ptr::null_mut());
        // SAFETY: the caller guarantees a single thread, so nothing reads `environ` while it
        // changes; the block is a null-terminated array of NUL-terminated `NAME=value`
        // strings, leaked, and mutable as `setenv` expects.
        unsafe {
            environ = block.leak().as_mut_ptr();
        }
    }
}

/// The number of threads of this process (`/proc/self/stat`, field 20).
fn thread_count() -> io::Result<u64> {
    // One read: the file is far shorter than the buffer and comes whole from one call.
    let mut buf = [0u8; 1024];
    let len = File::open("/proc/self/stat")?.read(&mut buf)?;
    let stat = String::from_utf8_lossy(&buf[..len]);
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name
        .split_ascii_whitespace()
        .nth(17)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::other("cannot read the thread count in /proc/self/stat"))
}

/// Reaps every child that has exited, without waiting. Returns how many.
pub fn reap_exited_children() -> usize {
    std::iter::from_fn(try_wait_any_child).count()
}

/// A child of this process that has ended, reaped without waiting: its pid and whether it
/// exited with status 0. `None` when none has ended (or there is no child).
pub fn try_wait_any_child() -> Option<(u32, bool)> {
    wait_for_child(libc::WNOHANG).ok().flatten()
}

/// Waits for any child of this process to end. Returns its pid and whether it exited with
/// status 0.
pub fn wait_any_child() -> io::Result<(u32, bool)> {
    wait_for_child(0)?.ok_or_else(|| io::Error::other("waitpid returned no child"))
}

/// `waitpid(-1, …, flags)`, retried on EINTR: the ended child, or `None` when WNOHANG found
/// none.
fn wait_for_child(flags: libc::c_int) -> io::Result<Option<(u32, bool)>> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, flags) };
        if pid > 0 {
            let pid = u32::try_from(pid).map_err(io::Error::other)?;
            let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            return Ok(Some((pid, ok)));
        }
        if pid == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Makes `target` (0, 1 or 2) a copy of `fd`, inheritable.
pub fn dup_onto(fd: &impl AsRawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 of a descriptor we hold onto a standard descriptor number.
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this open file's flock(2) lock is held by this descriptor's open file
/// description: a non-blocking exclusive lock attempt on it succeeds.
pub fn holds_flock(file: &File) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Installs `handler` for `signal` (the supervisor's SIGCHLD/SIGTERM/SIGINT). The handler
/// must only do async-signal-safe work.
pub fn install_signal_handler(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: a zeroed sigaction with a plain handler and SA_RESTART is a valid argument.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

/// Caps this process's address space (inherited by its children): allocations past it
/// fail. For `CommandExt::pre_exec`.
pub fn limit_address_space(bytes: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads the struct we pass; it is async-signal-safe.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A set of signals that one thread waits for (`wait`) while every other thread has them
/// blocked: signal handling without async-signal-safety concerns.
#[derive(Clone, Copy)]
pub struct SignalSet {
    set: libc::sigset_t,
}

impl SignalSet {
    /// Blocks `signals` in the calling thread (and every thread it starts afterwards).
    pub fn block(signals: &[libc::c_int]) -> io::Result<SignalSet> {
        // SAFETY: sigemptyset/sigaddset initialise the set in place; pthread_sigmask reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &signal in signals {
                libc::sigaddset(&mut set, signal);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(SignalSet { set })
        }
    }

    /// Unblocks every signal in the calling thread: a process started by a thread that had
    /// some blocked inherits that mask, and a supervisor must hear SIGTERM.
    pub fn unblock_all() -> io::Result<()> {
        // SAFETY: an empty set, initialised in place, then read by pthread_sigmask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
        }
        Ok(())
    }

    /// Waits for the next signal of the set.
    pub fn wait(&self) -> io::Result<libc::c_int> {
        let mut signal: libc::c_int = 0;
        // SAFETY: sigwait reads the initialised set and writes one int.
        let rc = unsafe { libc::sigwait(&self.set, &mut signal) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(signal)
    }
}

/// This machine's host name ("localhost" if it cannot be read).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname NUL-terminates within it
    // or truncates, and we stop at the first NUL either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Writes one byte to `fd` from a signal handler.
pub fn write_byte_from_handler(fd: RawFd) {
    let byte = 1u8;
    // SAFETY: write(2) is async-signal-safe; the buffer is a valid one-byte local.
    unsafe {
        libc::write(fd, std::ptr::addr_of!(byte).cast(), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn an_environment_is_built_entry_by_entry_and_a_nul_byte_is_refused_by_name() {
        // Installing needs a process with one thread: the forked supervisors of the
        // integration tests do it (their runners get exactly the requested variables).
        let good = [("A".into(), "1".into()), ("B".into(), "x=y".into())];
        let environment = Environment::new(&good).unwrap();
        let entries: Vec<&[u8]> = environment
            .0
            .iter()
            .map(std::ffi::CString::as_bytes)
            .collect();
        assert_eq!(entries, [b"A=1".as_slice(), b"B=x=y"]);

        let bad = [
            ("GOOD".into(), "value".into()),
            ("BAD".into(), "a\0b".into()),
        ];
        let err = Environment::new(&bad).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("\"BAD\""), "{err}");
    }

    #[test]
    fn pidfd_becomes_readable_when_the_process_exits() {
        let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
        let pidfd = PidFd::open(child.id()).unwrap();
        assert!(!pidfd.exited());
        let ready = poll_readable(&[pidfd.as_raw_fd()], Some(Duration::from_secs(30))).unwrap();
        assert!(ready[0]);
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn wake_pipe_wakes_a_poll() {
        let pipe = WakePipe::new().unwrap();
        assert!(!poll_readable(&[pipe.as_raw_fd()], Some(Duration::ZERO)).unwrap()[0]);
        pipe.wake();
        assert!(poll_readable(&[pipe.as_raw_fd()], Some(Duration::ZERO)).unwrap()[0]);
        pipe.drain();
        assert!(!poll_readable(&[pipe.as_raw_fd()], Some(Duration::ZERO)).unwrap()[0]);
    }
}
