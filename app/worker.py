"""A background worker of the reference service: a heartbeat in Redis for as long as it runs.

stageflow runs it as a process of [service.processes] (`python -m app.worker`) from the release's
venv, with the same settings as the web workers; it writes {"release", "pid", "at"} under
`worker:heartbeat` every second until it is told to stop (TERM).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from types import FrameType

import redis

from app.config import ConfigInvalid, load_config
from app.store import redis_client

HEARTBEAT_KEY = "worker:heartbeat"
INTERVAL_S = 1.0


def main() -> int:
    try:
        config = load_config(os.environ)
    except ConfigInvalid as err:
        sys.stderr.write(f"worker: {err}\n")
        return 2
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    client = redis_client(config)
    release = os.environ.get("STAGEFLOW_RELEASE", "")
    print(f"worker of {release or 'no release'} started (pid {os.getpid()})", flush=True)
    while not stopping:
        beat = {"release": release, "pid": os.getpid(), "at": time.time()}
        try:
            client.set(HEARTBEAT_KEY, json.dumps(beat), ex=30)
        except (redis.RedisError, OSError) as exc:  # Redis restarting: the next beat tries again
            print(f"worker: heartbeat not written ({exc.__class__.__name__})", flush=True)
        deadline = time.monotonic() + INTERVAL_S
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.05)
    print("worker stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
