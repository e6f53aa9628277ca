"""A Starlette app under uvicorn's gunicorn worker."""

import os

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


async def home(request):
    return PlainTextResponse("hello " + os.environ.get("ENVIRONMENT", "?"))


async def release(request):
    return JSONResponse({"release": os.environ.get("STAGEFLOW_RELEASE", "")})


app = Starlette(routes=[Route("/", home), Route("/release", release)])
