"""gunicorn settings for a release: marks each booted worker so the deploy knows when to switch."""

import os

_ready_dir = os.environ.get("STAGEFLOW_READY_DIR")


def post_worker_init(worker):
    if _ready_dir:
        os.makedirs(_ready_dir, exist_ok=True)
        open(os.path.join(_ready_dir, str(worker.pid)), "w").close()
