"""A Flask app with stepwell: views send events through a thread-safe blocking engine.

    flask --app examples/flask_app/app.py run      # STEPWELL_DB=... to choose the database

Here the web process also runs the functions (one process, fine for development and small
deployments); set `worker=False` and run `stepwell worker examples/flask_app/app.py:functions`
beside gunicorn to split them (docs/guides/topology.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from flask import Flask, request

import stepwell
from stepwell.integrations.flask import Stepwell

functions = stepwell.App("signup")


@dataclass
class Welcome:
    email: str
    sent: bool


def send_welcome(email: str) -> Welcome:
    return Welcome(email=email, sent=True)


@functions.function(id="welcome", trigger="signup/user.created")
def welcome(ctx: stepwell.Context, step: stepwell.SyncStep) -> dict[str, object]:
    mail = step.run("send-welcome", send_welcome, ctx.event.data["email"])
    return {"welcomed": mail.email, "sent": mail.sent}


app = Flask(__name__)
sw = Stepwell(stepwell.Engine(functions, db=os.environ.get("STEPWELL_DB",
                                                           "sqlite:///.stepwell/flask.db")),
              app)


@app.post("/signup")
def signup() -> dict[str, object]:
    body = request.get_json()
    return {"event_id": sw.send("signup/user.created", {"email": body["email"]})}


@app.get("/signup/<event_id>")
def signup_runs(event_id: str) -> dict[str, object]:
    return {"runs": [{"id": r.id, "status": r.status, "output": r.output}
                     for r in sw.runs(event_id=event_id)]}
