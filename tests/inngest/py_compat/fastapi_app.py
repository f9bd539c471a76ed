"""The compatibility app (functions.py) served by FastAPI with `inngest.fast_api.serve`.

Run: `python fastapi_app.py [PORT]` (0 picks a free port); prints
`<app id> listening on http://127.0.0.1:NNNNN`. `GET /_test/ledger` lists what steps did.
"""

from __future__ import annotations

import socket
import sys

import fastapi
import inngest.fast_api
import uvicorn
from functions import APP_ID, FUNCTIONS, LEDGER, client

app = fastapi.FastAPI()


@app.get("/_test/ledger")
def ledger() -> list[dict[str, object]]:
    return LEDGER


inngest.fast_api.serve(app, client, FUNCTIONS)

if __name__ == "__main__":
    sock = socket.socket()
    sock.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    print(f"{APP_ID} listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
