"""gunicorn hooks for a release of any service (stdlib only; shipped into each release's .stageflow
folder). Each worker, once it loaded the app, asks it its ready path in-process (an ASGI app on
its serving event loop, at lifespan startup) and marks the outcome; then it serves through a middleware that names the release on every response and counts
statuses and latencies into a per-worker file the deploy's verify window reads."""

from __future__ import annotations

import asyncio
import bisect
import inspect
import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

# gunicorn halts the master when a worker exits with this code: a release that is not ready
# never takes a request from the shared socket
WORKER_BOOT_ERROR = 3
EDGES_MS = (1, 2, 3, 5, 8, 13, 20, 30, 50, 80, 130, 200, 300, 500, 800, 1300, 2000, 3000, 5000, 8000, 13000)  # fmt: skip
FLUSH_EVERY_S = 0.5  # the counters file is at most this old while requests arrive
PROBE_TIMEOUT_S = 20.0  # below gunicorn's --timeout 30: the master does not kill the worker first
HEADER = "X-Stageflow-Release"
# how long a stopping ASGI worker waits for a connection it accepted to send its request
ACCEPTED_GRACE_S = 2.0

_READY_DIR = os.environ.get("STAGEFLOW_READY_DIR", "")
_READY_PATH = os.environ.get("STAGEFLOW_READY_PATH", "") or "/"
# the health path standing in for the ready path: a redirect is an answer, as for health
_READY_BELOW = 400 if os.environ.get("STAGEFLOW_READY_REDIRECTS") == "1" else 300
_RELEASE = os.environ.get("STAGEFLOW_RELEASE_ID", "")
_METRICS_DIR = os.environ.get("STAGEFLOW_METRICS_DIR", "")
_ASGI = os.environ.get("STAGEFLOW_ASGI") == "1"

_counters: list[Counters] = []  # this worker's, for worker_exit

# gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl), so the
# masters of every environment would take it over in turn, and `gunicornc` could reload or stop
# whichever started last. stageflow drives its masters by confirmed pid and signal only.
control_socket_disable = True


# -- counters --------------------------------------------------------------------------------------


class Counters:
    """One worker's responses: counted in memory, written to <dir>/<pid>.json atomically by a
    thread of the worker every FLUSH_EVERY_S while there is something new, and at exit. Never on
    a request's path: a response is counted after the server sent it, and counting is a few
    additions under a lock."""

    def __init__(self, release: str, directory: str, pid: int) -> None:
        self.release, self.pid = release, pid
        self.path = os.path.join(directory, f"{pid}.json") if directory else ""
        self.requests = self.errors = 0
        self.status: dict[str, int] = {}
        self.counts = [0] * (len(EDGES_MS) + 1)
        self._unflushed = 0
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def add(self, status: int, ms: float) -> None:
        with self._lock:
            self.requests += 1
            if status >= 500:
                self.errors += 1
            key = str(status)
            self.status[key] = self.status.get(key, 0) + 1
            self.counts[bisect.bisect_left(EDGES_MS, ms)] += 1  # counts[i]: ms <= EDGES_MS[i]
            self._unflushed += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._unflushed = 0
            self._last_flush = time.monotonic()
            return {
                "release": self.release,
                "pid": self.pid,
                "requests": self.requests,
                "errors": self.errors,
                "status": dict(self.status),
                "edges_ms": list(EDGES_MS),
                "counts": list(self.counts),
                "updated": time.time(),
            }

    def flush(self) -> None:
        if not self.path:
            return
        data = json.dumps(self.snapshot(), separators=(",", ":"))
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        except OSError:
            pass  # counting must never fail a request; the next flush tries again

    def flush_if_new(self) -> None:
        with self._lock:
            new = self._unflushed
        if new:
            self.flush()

    def start_flusher(self) -> None:
        """What was counted is on disk within FLUSH_EVERY_S, however fast or slowly requests
        arrive."""

        def loop() -> None:
            while True:
                time.sleep(FLUSH_EVERY_S)
                self.flush_if_new()

        threading.Thread(target=loop, name="stageflow-counters", daemon=True).start()


class WSGIMiddleware:
    def __init__(self, app: Callable[..., Iterable[bytes]], counters: Counters) -> None:
        self.app, self.counters = app, counters
        self.header = (HEADER, counters.release)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        began = time.perf_counter()
        seen = [500]

        def named(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            try:
                seen[0] = int(status[:3])
            except ValueError:
                seen[0] = 500
            return start_response(status, [*headers, self.header], exc_info)

        def done() -> None:
            self.counters.add(seen[0], (time.perf_counter() - began) * 1000)

        try:
            body = self.app(environ, named)
        except BaseException:
            done()
            raise
        wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(wrapper, type) and isinstance(body, wrapper):
            done()  # a file gunicorn sends itself: kept unwrapped, counted now
            return body
        return _Counted(body, done)


class _Counted:
    """A body, counted when the server closes it: after the response was sent, so counting is
    not part of the client's wait, and a stream's latency includes the stream."""

    __slots__ = ("body", "done")

    def __init__(self, body: Iterable[bytes], done: Callable[[], None]) -> None:
        self.body, self.done = body, done

    def __iter__(self) -> Any:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.done()


class ASGIMiddleware:
    def __init__(self, app: Callable[..., Any], counters: Counters) -> None:
        self.app, self.counters = app, counters
        self.header = (HEADER.lower().encode(), counters.release.encode())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        seen = [0]

        async def named(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                seen[0] = int(message.get("status", 500))
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        try:
            await self.app(scope, receive, named)
        finally:
            self.counters.add(seen[0] or 500, (time.perf_counter() - began) * 1000)


# -- the ready probe, in-process ------------------------------------------------------------------


def is_asgi(app: Any) -> bool:
    return (
        _ASGI
        or inspect.iscoroutinefunction(app)
        or inspect.iscoroutinefunction(
            getattr(app, "__call__", None)  # noqa: B004 - an object whose __call__ is a coroutine
        )
    )


def wsgi_get(app: Callable[..., Iterable[bytes]], path: str) -> tuple[int, bytes]:
    """One GET through the app as a WSGI server would call it."""
    route, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": route,
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "localhost",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    seen: dict[str, str] = {}

    def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
        seen["status"] = status
        return lambda _data: None

    body = app(environ, start_response)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return int(seen.get("status", "500")[:3]), data


async def _asgi_session(app: Callable[..., Any], path: str) -> tuple[int, bytes]:
    """Lifespan startup, one GET, lifespan shutdown, as a test client runs them. An app without
    lifespan support (it raises or returns on the lifespan scope) is asked the GET alone."""
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    lifespan_scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
    lifespan = asyncio.ensure_future(app({**lifespan_scope, "state": state}, inbox.get, outbox.put))
    reply = asyncio.ensure_future(outbox.get())
    await asyncio.wait({lifespan, reply}, return_when=asyncio.FIRST_COMPLETED)
    supported = reply.done()
    if supported:
        message = reply.result()
        if message.get("type") == "lifespan.startup.failed":
            return 500, f"lifespan startup failed: {message.get('message', '')}".encode()
    else:
        reply.cancel()
        if not lifespan.cancelled():
            lifespan.exception()  # retrieved: a lifespan the app refuses is not an error
    try:
        return await _asgi_get(app, path, state)
    finally:
        if supported and not lifespan.done():
            await inbox.put({"type": "lifespan.shutdown"})
            await asyncio.wait({lifespan}, timeout=5)
        if not lifespan.done():
            lifespan.cancel()


async def _asgi_get(app: Callable[..., Any], path: str, state: dict[str, Any]) -> tuple[int, bytes]:
    route, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 0),
        "server": ("localhost", 80),
        "state": dict(state),
    }
    sent = asyncio.Event()
    requested = [False]
    status = [500]
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if not requested[0]:
            requested[0] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status[0] = int(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                sent.set()

    await app(scope, receive, send)
    return status[0], b"".join(chunks)


def asgi_get(app: Callable[..., Any], path: str) -> tuple[int, bytes]:
    """The ASGI session on a fresh event loop in its own thread: the worker's loop (uvicorn's)
    is neither started nor touched."""
    out: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        try:
            out["reply"] = loop.run_until_complete(
                asyncio.wait_for(_asgi_session(app, path), PROBE_TIMEOUT_S)
            )
        except BaseException as exc:  # reported as the mark, raised nowhere
            out["error"] = exc
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="stageflow-ready", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 5)
    if "error" in out:
        raise out["error"]
    if "reply" not in out:
        raise TimeoutError(f"no answer within {PROBE_TIMEOUT_S:g}s")
    return out["reply"]


def described(exc: BaseException) -> str:
    """An exception the app raised, as one line that starts with the first of its chain: a
    framework whose error handling fails as well (Django's 400 view, say) raises the second
    failure, while the first (DisallowedHost) is the one to fix."""
    first, seen = exc, {id(exc)}
    while True:
        before = first.__cause__ or (None if first.__suppress_context__ else first.__context__)
        if before is None or id(before) in seen:
            break
        first = before
        seen.add(id(first))
    said = f"{type(first).__name__}: {first}"
    if first is not exc:
        said += f" (then {type(exc).__name__}: {exc})"
    return said[:300]


def probe(app: Any, path: str) -> tuple[bool, str]:
    """(ready, what to report): the status and the start of the body, or the exception."""
    try:
        status, body = asgi_get(app, path) if is_asgi(app) else wsgi_get(app, path)
    except Exception as exc:
        return False, described(exc)
    detail = f"{status} {body.decode('utf-8', errors='replace')[:200]}"
    return 200 <= status < _READY_BELOW, detail


class ReadyAtStartup:
    """An ASGI app asked its ready path once on the serving event loop, between its own lifespan
    startup and the server's first request. A probe on an event loop of its own would leave what
    the app binds to its loop (an async engine's pooled asyncpg connections) on a loop that is
    gone, and every request after it would fail. A release that is not ready fails the lifespan
    startup: uvicorn's worker then exits with the boot error that halts the master. An app without
    lifespan support (it raises or returns on the lifespan scope) is answered for, as uvicorn
    would serve it without one."""

    def __init__(self, app: Callable[..., Any], path: str, report: Callable[[bool, str], None]):
        self.app, self.path, self.report = app, path, report

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "lifespan":
            await self.app(scope, receive, send)
            return
        state = scope.get("state")
        heard: list[str] = []
        replied = [False]

        async def listen() -> dict[str, Any]:
            message = await receive()
            heard.append(message.get("type", ""))
            return message

        async def reply(message: dict[str, Any]) -> None:
            replied[0] = True
            if message.get("type") == "lifespan.startup.complete":
                message = await self.verdict(state)
            elif message.get("type") == "lifespan.startup.failed":
                self.report(False, f"lifespan startup failed: {message.get('message', '')}"[:200])
            await send(message)

        try:
            await self.app(scope, listen, reply)
        except Exception:
            if replied[0]:
                raise
        if replied[0]:
            return
        if "lifespan.startup" not in heard:
            await receive()
        answer = await self.verdict(state)
        await send(answer)
        if answer["type"] == "lifespan.startup.complete":
            await receive()  # the shutdown
            await send({"type": "lifespan.shutdown.complete"})

    async def verdict(self, state: dict[str, Any] | None) -> dict[str, Any]:
        """The ready path's answer, reported, as the lifespan message the server gets."""
        try:
            status, body = await asyncio.wait_for(
                _asgi_get(self.app, self.path, state or {}), PROBE_TIMEOUT_S
            )
            ok = 200 <= status < _READY_BELOW
            detail = f"{status} {body.decode('utf-8', 'replace')[:200]}"
        except Exception as exc:
            ok, detail = False, described(exc)
        self.report(ok, detail)
        if ok:
            return {"type": "lifespan.startup.complete"}
        return {"type": "lifespan.startup.failed", "message": f"not ready: {detail}"}


def _mark(kind: str, pid: int, text: str) -> None:
    path = os.path.join(_READY_DIR, f"{kind}-{pid}")
    # written under a hidden name, then renamed: the deploy never reads a mark before its text
    draft = os.path.join(_READY_DIR, f".{kind}-{pid}.draft")
    with open(draft, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(draft, path)


# -- gunicorn's hooks -----------------------------------------------------------------------------


def _reporter(worker: Any) -> Callable[[bool, str], None]:
    def report(ok: bool, detail: str) -> None:
        try:
            _mark("ok" if ok else "fail", worker.pid, detail)
        except OSError:
            pass  # the deploy stopped waiting (and removed the dir): its verdict is made
        if not ok:
            worker.log.error("release %s is not ready: %s", _RELEASE, detail)

    return report


def post_worker_init(worker: Any) -> None:
    app = worker.wsgi
    # The deploy makes the ready dir before the master starts and removes it once every worker
    # answered: a worker gunicorn replaces later (a crash, max_requests) is not probed, so a
    # passing database blip cannot halt a release that already serves.
    if _READY_DIR and os.path.isdir(_READY_DIR):
        if is_asgi(app):
            app = ReadyAtStartup(app, _READY_PATH, _reporter(worker))
        else:
            ok, detail = probe(app, _READY_PATH)
            _reporter(worker)(ok, detail)
            if not ok:
                sys.exit(WORKER_BOOT_ERROR)
    if _METRICS_DIR:
        os.makedirs(_METRICS_DIR, exist_ok=True)
    _serve_what_was_accepted(worker)
    counters = Counters(_RELEASE, _METRICS_DIR, worker.pid)
    counters.start_flusher()
    _counters.append(counters)
    worker.wsgi = ASGIMiddleware(app, counters) if is_asgi(app) else WSGIMiddleware(app, counters)


def _serve_what_was_accepted(worker: Any) -> None:
    """A stopping uvicorn worker answers the connections it already accepted.

    Old and new masters accept from one shared socket, so until its SIGTERM an old worker still
    takes connections. uvicorn's shutdown closes every connection that has no request yet, and a
    client whose request was a moment behind its connect gets no answer. Here the worker first
    stops accepting, then gives such connections ACCEPTED_GRACE_S to send their request (served,
    then closed), and only then runs uvicorn's own shutdown. Nothing changes for other workers,
    nor where uvicorn's internals are not as expected."""
    if not type(worker).__module__.startswith("uvicorn"):
        return
    try:
        from uvicorn.server import Server
    except ImportError:
        return
    original = Server.shutdown
    if getattr(original, "stageflow", False):
        return

    async def shutdown(self: Any, sockets: Any = None) -> None:
        worker.log.info("stopping: no new connections; answering those already accepted")
        for server in getattr(self, "servers", None) or []:
            server.close()  # no new connection: the other master's workers take them
        state = getattr(self, "server_state", None)
        deadline = time.monotonic() + ACCEPTED_GRACE_S
        while state is not None and time.monotonic() < deadline:
            if not any(getattr(c, "cycle", True) is None for c in list(state.connections)):
                break
            await asyncio.sleep(0.02)
        await original(self, sockets)

    shutdown.stageflow = True  # type: ignore[attr-defined]
    Server.shutdown = shutdown  # type: ignore[method-assign]


def child_exit(server: Any, worker: Any) -> None:
    """In the master, as a worker ends. One that ends before it answered the ready path (its
    module exited, a signal) would be replaced, and fail again, until the deploy gave up: its
    missing answer is reported as a failure, so the deploy halts the release at once. The deploy
    reads why from the service's log (releases.EXITED_BEFORE_READY)."""
    if not (_READY_DIR and os.path.isdir(_READY_DIR)):
        return  # every worker answered: one that ends later is gunicorn's to replace
    if any(os.path.exists(os.path.join(_READY_DIR, f"{k}-{worker.pid}")) for k in ("ok", "fail")):
        return
    try:
        _mark("fail", worker.pid, "a worker exited before it answered the ready path")
    except OSError:
        pass  # the deploy stopped waiting (and removed the dir): its verdict is made


def worker_exit(server: Any, worker: Any) -> None:
    for counters in _counters:
        counters.flush()
