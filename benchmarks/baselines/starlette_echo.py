"""Baseline: a bare Starlette + uvicorn POST handler that only reads the body (the ceiling)."""

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def echo(request: Request) -> Response:
    await request.body()
    return Response(b'{"ok":true}', media_type="application/json")


app = Starlette(routes=[Route("/{path:path}", echo, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
