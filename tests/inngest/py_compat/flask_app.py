"""The compatibility app (functions.py) served by Flask with `inngest.flask.serve`.

Run: `python flask_app.py [PORT]` (0 picks a free port); prints
`<app id> listening on http://127.0.0.1:NNNNN`. `GET /_test/ledger` lists what steps did.
"""

from __future__ import annotations

import sys

import flask
import inngest.flask
from functions import APP_ID, FUNCTIONS, LEDGER, client
from werkzeug.serving import make_server

app = flask.Flask(__name__)


@app.get("/_test/ledger")
def ledger() -> flask.Response:
    return flask.jsonify(LEDGER)


inngest.flask.serve(app, client, FUNCTIONS)

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = make_server("127.0.0.1", port, app, threaded=True)
    print(f"{APP_ID} listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()
