//! Atomic file replacement (temp file, fsync, rename, fsync dir; or without the fsyncs) and
//! `flock(2)` locks that interoperate with Python's `filelock.UnixFileLock`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// Replaces `path` with `bytes` so that readers see either the old or the new content, and the
/// new content survives a crash once this returns.
///
/// The temp file is `<dir>/<stem>.tmp` (`taskset.json` → `taskset.tmp`), the name NecroCode
/// uses, so a leftover from either tool is recognisable. Callers serialise writers with a lock.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, &mut [IoSlice::new(bytes)], true)
}

/// [`write_atomic`] of a file given as pieces, written in order with vectored writes (no
/// buffer joins them).
pub fn write_atomic_pieces(path: &Path, pieces: &mut [IoSlice<'_>]) -> io::Result<()> {
    replace_file(path, pieces, true)
}

/// [`write_atomic`] without the fsyncs: readers still see the old or the new content, but a
/// crash of the machine may lose it. For files that mean nothing after one — a local
/// supervisor's own record dies with its processes — where two fsyncs per write are the cost
/// of a runner start on a slow disk.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, &mut [IoSlice::new(bytes)], false)
}

fn replace_file(path: &Path, pieces: &mut [IoSlice<'_>], durable: bool) -> io::Result<()> {
    let dir = parent_dir(path);
    let tmp = temp_path(path);
    let result = write_temp(&tmp, pieces, durable).and_then(|()| fs::rename(&tmp, path));
    if let Err(err) = result {
        // Best effort: a stale temp file is harmless but confusing to someone inspecting the dir.
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    if !durable {
        return Ok(());
    }
    // The rename is only durable once the directory entry is on disk.
    File::open(dir)?.sync_all()
}

fn write_temp(tmp: &Path, pieces: &mut [IoSlice<'_>], durable: bool) -> io::Result<()> {
    let mut file = create_in_dir(tmp, |path| File::create(path))?;
    write_all_pieces(&mut file, pieces)?;
    if durable {
        file.sync_all()?;
    }
    Ok(())
}

/// `write_all` for pieces: vectored writes until every byte is written (std passes at most
/// `IOV_MAX` pieces per call).
fn write_all_pieces(file: &mut File, mut pieces: &mut [IoSlice<'_>]) -> io::Result<()> {
    // Drops leading empty pieces (advancing drops every piece it has fully passed), so that
    // a write of nothing writes nothing instead of failing with WriteZero.
    IoSlice::advance_slices(&mut pieces, 0);
    while !pieces.is_empty() {
        match file.write_vectored(pieces) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut pieces, written),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// `open(path)`, creating the missing parent directories when that is why it failed. The
/// directory nearly always exists: trying first spares a mkdir and a stat on every write.
/// NotFound is taken to mean a missing directory; when it means something else (a dangling
/// symlink), the second open fails the same way and its error is returned.
pub fn create_in_dir<T>(path: &Path, open: impl Fn(&Path) -> io::Result<T>) -> io::Result<T> {
    match open(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(parent_dir(path))?;
            open(path)
        }
        other => other,
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_stem().unwrap_or(path.as_os_str()).to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// An exclusive `flock(2)` on a lock file, released when dropped.
///
/// Same protocol as Python `filelock`'s `UnixFileLock`: open read-write (creating it), `flock`
/// with `LOCK_EX`, and never delete the file, since deleting it would let a second process lock a
/// fresh inode while a third still holds the old one.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Waits up to `timeout` for the lock; fails with `ErrorKind::TimedOut` naming the path.
    pub fn acquire(path: &Path, timeout: Duration) -> io::Result<FileLock> {
        let file = open_lock_file(path)?;
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(1);
        loop {
            if try_flock(&file)? {
                return Ok(FileLock { file });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "timed out after {timeout:?} waiting for lock {}",
                        path.display()
                    ),
                ));
            }
            thread::sleep(backoff.min(deadline - now));
            backoff = (backoff * 2).min(Duration::from_millis(20));
        }
    }

    /// Takes the lock if it is free; `None` when another open file holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<FileLock>> {
        let file = open_lock_file(path)?;
        Ok(try_flock(&file)?.then_some(FileLock { file }))
    }

    /// The open lock file (the dispatcher writes its pid into its own lock file).
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too, but an explicit unlock also covers copies of
        // the descriptor that a forked child may still hold.
        // SAFETY: the descriptor is owned by `self.file` and open for the whole call.
        unsafe {
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    create_in_dir(path, |path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    })
}

/// One non-blocking attempt; `Ok(false)` when the lock is held elsewhere.
fn try_flock(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: the descriptor is owned by `file`, which outlives the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(code) if code == libc::EWOULDBLOCK || code == libc::EAGAIN => return Ok(false),
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    #[test]
    fn write_atomic_replaces_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/taskset.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!dir.path().join("sub/taskset.tmp").exists());
        assert_eq!(temp_path(&path), dir.path().join("sub/taskset.tmp"));
    }

    #[test]
    fn pieces_are_written_in_order_past_iov_max_and_empty_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taskset.json");
        // More pieces than one writev takes (1024), some of them empty.
        let texts: Vec<String> = (0..3000)
            .map(|n| {
                if n % 7 == 0 {
                    String::new()
                } else {
                    format!("{n},")
                }
            })
            .collect();
        let mut pieces: Vec<IoSlice> = texts.iter().map(|t| IoSlice::new(t.as_bytes())).collect();
        write_atomic_pieces(&path, &mut pieces).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), texts.concat());
        assert!(!dir.path().join("taskset.tmp").exists());

        // Nothing but empty pieces: an empty file, not an error.
        write_atomic_pieces(&path, &mut [IoSlice::new(b""), IoSlice::new(b"")]).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn replace_swaps_the_file_by_rename_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runner/supervisor.json");
        replace(&path, b"one").unwrap();
        let first = fs::metadata(&path).unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!dir.path().join("runner/supervisor.tmp").exists());
        // A new inode each time: a reader holding the old file never sees it change.
        use std::os::unix::fs::MetadataExt;
        assert_ne!(fs::metadata(&path).unwrap().ino(), first.ino());
    }

    #[test]
    fn held_lock_blocks_try_acquire_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/spec.lock");
        let held = FileLock::try_acquire(&path).unwrap().expect("lock is free");
        assert!(FileLock::try_acquire(&path).unwrap().is_none());
        let err = FileLock::acquire(&path, Duration::from_millis(30)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        drop(held);
        assert!(FileLock::acquire(&path, Duration::from_secs(1)).is_ok());
        assert!(path.exists(), "the lock file is never deleted");
    }

    /// Runs a Python snippet with the lock path as `sys.argv[1]`.
    fn python(script: &str, path: &Path) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).arg(path);
        cmd
    }

    const PY_HOLD: &str = "import fcntl, sys\n\
        f = open(sys.argv[1], 'a+')\n\
        fcntl.flock(f, fcntl.LOCK_EX)\n\
        print('locked', flush=True)\n\
        sys.stdin.read()\n";

    const PY_PROBE: &str = "import fcntl, sys\n\
        f = open(sys.argv[1], 'a+')\n\
        try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('free')\n\
        except BlockingIOError:\n    print('busy')\n";

    fn probe(path: &Path) -> String {
        let out = python(PY_PROBE, path).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn lock_held_by_python_blocks_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.lock");
        let mut child: Child = python(PY_HOLD, &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        assert!(FileLock::try_acquire(&path).unwrap().is_none());
        // Closing stdin lets the Python process exit, which releases its lock.
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        assert!(FileLock::acquire(&path, Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn lock_held_by_us_blocks_python() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.lock");
        let held = FileLock::acquire(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(probe(&path), "busy");
        drop(held);
        assert_eq!(probe(&path), "free");
    }
}
