"""Flask (and any sync WSGI code): a thread-safe, blocking engine for views.

    sw = Stepwell(stepwell.Engine(functions, db="sqlite:///app.db"))
    app = Flask(__name__)
    sw.init_app(app)

    @app.post("/orders")
    def create():
        return {"event_id": sw.send("shop/order.created", request.get_json())}

The engine runs on stepwell's loop thread beside Flask's own threads. `Engine(..., worker=False)`
makes each web process a sender only, with `stepwell worker` running the functions (the
topology guide says when to choose which). Flask is not imported here: `init_app` only uses
`app.extensions`.
"""

from __future__ import annotations

from typing import Any

from stepwell.integrations.blocking import BlockingEngine
from stepwell.runtime.engine import Engine


class Stepwell(BlockingEngine):
    """A `BlockingEngine` that registers itself as the app's `extensions["stepwell"]`."""

    def __init__(self, engine: Engine, app: Any = None) -> None:
        super().__init__(engine)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        """Register on a Flask app and start the engine (so a worker engine runs its
        functions from the first request on, not from the first send)."""
        app.extensions["stepwell"] = self
        self.start()
