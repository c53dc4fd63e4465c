//! Running a short helper command with a deadline: draining its pipes on threads of their
//! own and killing its whole process group when the deadline passes (git, engine CLIs).

use std::io::{self, Read};
use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

/// Reads a pipe to its end on a thread of its own, so that neither pipe can fill up and block
/// the child while the other is being read.
pub fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error only truncates what we show; the exit status still decides.
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// The exit status, or `None` when the deadline passed and the process group was killed.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(child);
            child.wait()?;
            return Ok(None);
        }
        // Polling is the portable way to wait with a deadline; the pause grows so that a long
        // clone costs a wake-up every 50 ms at most, while quick commands return promptly.
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn kill_group(child: &Child) {
    match i32::try_from(child.id()) {
        // SAFETY: plain syscall; the group was created by `process_group(0)` for this child
        // and still exists, since the child has not been reaped.
        Ok(pid) => unsafe {
            libc::kill(-pid, libc::SIGKILL);
        },
        Err(_) => log::warn!("cannot kill process {}: pid out of range", child.id()),
    }
}
