"""The thermoml API plus one no-op route (the HTTP floor), for bench/serving.py."""

from __future__ import annotations

import sys

import uvicorn
from fastapi import Request
from fastapi.responses import JSONResponse

from service.config import get_settings
from service.main import create_app

app = create_app(get_settings())


@app.post("/_bench/noop", include_in_schema=False)
async def noop(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"ok": True})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
