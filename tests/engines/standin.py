"""What the stand-in `docker` and `kubectl` executables share (TEST DOUBLES: no Docker
engine and no Kubernetes API server run where these tests run).

A stand-in "container" is a directory of the state dir ($STANDIN_STATE) holding
`container.json` (argv, environment, working directory, the mounts it was given), and, once
it runs, `pid` (the runner's process group), `out` (its stdout and stderr, in the order
written), `idx` (one "OFFSET EPOCH" line per chunk of `out`, for `--since`) and `exit`
(`{"code": N, "signal": S|null, "finished_at": EPOCH}`) when the program ended.

The program runs as a real local process under a detached shim (`standin.py shim DIR`), as
the container's main process would: the shim copies its output, and when the main process
ends it kills the rest of its process group, as an engine tears down a container. Mount
points are emulated by rewriting: a value in argv or env that names a container path of a
mount (`/workspace/...`) is given the host path instead, and the working directory is the
host path of the mount that holds it.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

# The PATH of a typical image (the stand-in does not pull images).
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log_argv(program, args):
    """Appends the invocation to $STANDIN_LOG, one JSON array per line."""
    path = os.environ.get("STANDIN_LOG")
    if not path:
        return
    line = json.dumps([program] + list(args)) + "\n"
    # One write of an O_APPEND descriptor: lines of concurrent calls do not interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def state_dir(*parts):
    root = os.environ.get("STANDIN_STATE")
    if not root:
        fail("STANDIN_STATE is not set (the stand-in keeps its containers there)", 125)
    path = os.path.join(root, *parts)
    os.makedirs(path, exist_ok=True)
    return path


def flag(name):
    """Whether the test switched on `name` (a file in the state dir)."""
    root = os.environ.get("STANDIN_STATE", "")
    return os.path.exists(os.path.join(root, name))


def fail(message, code=1):
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    sys.exit(code)


def write_atomic(path, text):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def host_path(value, mounts):
    """`value` with a container mount point replaced by its host path."""
    for host, inside in mounts:
        if value == inside:
            return host
        if value.startswith(inside.rstrip("/") + "/"):
            return host + value[len(inside.rstrip("/")):]
    return value


def start(cdir, argv, env, workdir, mounts):
    """Records the container in `cdir` and starts its program under a detached shim."""
    env = {k: host_path(v, mounts) for k, v in env.items()}
    argv = [host_path(a, mounts) for a in argv]
    cwd = host_path(workdir, mounts) if workdir else None
    spec = {"argv": argv, "env": env, "cwd": cwd, "started_at": time.time()}
    write_atomic(os.path.join(cdir, "container.json"), json.dumps(spec, indent=2))
    subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "shim", cdir],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    # An engine answers once the container is started: wait for its pid (or its end).
    deadline = time.time() + 10
    while time.time() < deadline:
        if os.path.exists(os.path.join(cdir, "pid")) or os.path.exists(os.path.join(cdir, "exit")):
            return
        time.sleep(0.01)
    fail("stand-in: the container's program did not start within 10s", 125)


def shim(cdir):
    spec = read_json(os.path.join(cdir, "container.json"))
    out = open(os.path.join(cdir, "out"), "ab", buffering=0)
    idx = open(os.path.join(cdir, "idx"), "a", buffering=1)
    try:
        child = subprocess.Popen(
            spec["argv"],
            cwd=spec["cwd"],
            env=spec["env"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as err:
        out.write(("stand-in: cannot start %s: %s\n" % (spec["argv"], err)).encode())
        write_atomic(
            os.path.join(cdir, "exit"),
            json.dumps({"code": 127, "signal": None, "finished_at": time.time()}),
        )
        return
    write_atomic(os.path.join(cdir, "pid"), str(child.pid))

    def copy():
        offset = 0
        while True:
            chunk = os.read(child.stdout.fileno(), 65536)
            if not chunk:
                return
            idx.write("%d %.6f\n" % (offset, time.time()))
            out.write(chunk)
            offset += len(chunk)

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    code = child.wait()
    # The container ends with its main process: whatever it left behind goes too.
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except OSError:
        pass
    reader.join(5)
    sig = -code if code < 0 else None
    status = 128 + sig if sig else code
    write_atomic(
        os.path.join(cdir, "exit"),
        json.dumps({"code": status, "signal": sig, "finished_at": time.time()}),
    )


def exit_of(cdir):
    return read_json(os.path.join(cdir, "exit"))


def pid_of(cdir):
    try:
        with open(os.path.join(cdir, "pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def terminate(cdir, grace):
    """TERM to the program's group now, KILL after `grace` seconds, from a detached helper
    (so the caller can answer at once, as `kubectl delete --wait=false` does)."""
    subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "kill", cdir, str(grace)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def kill(cdir, grace):
    pid = pid_of(cdir)
    if pid is None or exit_of(cdir) is not None:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.time() + grace
    while time.time() < deadline:
        if exit_of(cdir) is not None:
            return
        time.sleep(0.02)
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def follow(cdir, since=None):
    """Copies the container's output to stdout until it ended, from the first chunk written
    at or after `since` (an epoch) when given."""
    out_path = os.path.join(cdir, "out")
    offset = 0
    if since is not None:
        offset = None
        try:
            with open(os.path.join(cdir, "idx")) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and float(parts[1]) >= since:
                        offset = int(parts[0])
                        break
        except OSError:
            pass
        if offset is None:
            offset = os.path.getsize(out_path) if os.path.exists(out_path) else 0
    stdout = sys.stdout.buffer
    while True:
        ended = exit_of(cdir) is not None or not os.path.isdir(cdir)
        try:
            with open(out_path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            data = b""
        if data:
            stdout.write(data)
            stdout.flush()
            offset += len(data)
        elif ended:
            return
        else:
            time.sleep(0.05)


if __name__ == "__main__":
    if sys.argv[1] == "shim":
        shim(sys.argv[2])
    elif sys.argv[1] == "kill":
        kill(sys.argv[2], float(sys.argv[3]))
