"""The shop's background worker: a heartbeat in Redis twice a second until it is stopped."""

import os
import signal
import time

import redis


def main() -> None:
    cache = redis.Redis.from_url(os.environ["REDIS_URL"])
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    release = os.environ.get("STAGEFLOW_RELEASE", "")
    while running:
        cache.set("shop:worker:beat", f"{release} {os.getpid()} {time.time():.1f}")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
