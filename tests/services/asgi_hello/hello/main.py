"""A Starlette app under uvicorn's gunicorn worker."""

import asyncio
import os

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

# Stands for an async client pool (an async engine's asyncpg connections): made on first use and
# bound to that event loop, it fails on any other.
_pool_loop: list[asyncio.AbstractEventLoop] = []


async def home(request):
    loop = asyncio.get_running_loop()
    if _pool_loop and _pool_loop[0] is not loop:
        return PlainTextResponse("attached to a different loop", status_code=500)
    _pool_loop[:] = [loop]
    return PlainTextResponse("hello " + os.environ.get("ENVIRONMENT", "?"))


async def release(request):
    return JSONResponse({"release": os.environ.get("STAGEFLOW_RELEASE", "")})


app = Starlette(routes=[Route("/", home), Route("/release", release)])
