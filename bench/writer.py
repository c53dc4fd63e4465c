#!/usr/bin/env python3
"""The external writer of the latency workload (W3): flips blocked tasks to ready one at a time
with NecroCode's protocol (flock locks/<spec>.lock, re-read, change, bump version, write
taskset.tmp, fsync, rename) and prints "<task_id> <ns since the epoch>" right after each rename.

  writer.py REGISTRY SPEC COUNT INTERVAL_MS > ready.txt
"""

import datetime
import fcntl
import json
import os
import sys
import time


def flip(root, spec, tid):
    lock_path = os.path.join(root, "locks", f"{spec}.lock")
    path = os.path.join(root, "tasksets", spec, "taskset.json")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(path) as f:
            doc = json.load(f)
        now = datetime.datetime.now().isoformat(timespec="microseconds")
        for t in doc["tasks"]:
            if t["id"] == tid:
                t["state"] = "ready"
                t["updated_at"] = now
        doc["version"] += 1
        doc["updated_at"] = now
        tmp = path[: -len("taskset.json")] + "taskset.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        stamp = time.time_ns()
    return stamp


def main():
    root, spec, count, interval_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for i in range(count):
        stamp = flip(root, spec, str(i))
        print(f"{i} {stamp}", flush=True)
        time.sleep(interval_ms / 1000.0)


if __name__ == "__main__":
    main()
