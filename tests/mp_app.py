"""Auth0's Flask quickstart plus the two lines, configured from the environment.

Used by ``tests/system/test_multiprocess.py``: copied into a temporary directory and run as a real
server, under ``gunicorn --preload -w 4`` or Flask's own werkzeug server
(``python mp_app.py PORT``). Everything below the quickstart is test-only instrumentation:
an ``X-Worker-Pid`` response header and a ``/healthz`` readiness probe.

Environment: ``APP_SECRET_KEY``, ``AUTH0_CLIENT_ID``, ``AUTH0_CLIENT_SECRET``,
``AUTH0_METADATA_URL`` (the emulator speaks plain http, so the quickstart's
``https://{AUTH0_DOMAIN}/...`` is given whole) and the ``FLASK_KEEN_*`` keys read by
``app.config.from_prefixed_env()``.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import typing as t

from authlib.integrations.flask_client import OAuth
from flask import Flask
from flask import redirect
from flask import session
from flask import url_for

from flask_keen_signup import KeenSignup

app = Flask(__name__)
app.secret_key = os.environ["APP_SECRET_KEY"]
app.config.from_prefixed_env()  # FLASK_KEEN_PROJECT_ID -> KEEN_PROJECT_ID, ...

oauth = OAuth(app)
oauth.register(
    "auth0",
    client_id=os.environ["AUTH0_CLIENT_ID"],
    client_secret=os.environ["AUTH0_CLIENT_SECRET"],
    client_kwargs={"scope": "openid profile email"},
    server_metadata_url=os.environ["AUTH0_METADATA_URL"],
)
signup = KeenSignup(app)  # line 1


@app.route("/login")
def login() -> t.Any:
    return oauth.auth0.authorize_redirect(redirect_uri=url_for("callback", _external=True))


@app.route("/callback", methods=["GET", "POST"])
@signup.track  # line 2
def callback() -> t.Any:
    token = oauth.auth0.authorize_access_token()
    session["user"] = token
    return redirect("/")


@app.route("/")
def home() -> t.Any:
    return "hello"


# -- test-only instrumentation ------------------------------------------------------------


@app.after_request
def worker_pid(response: t.Any) -> t.Any:
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@app.route("/healthz")
def healthz() -> t.Any:
    return {"pid": os.getpid(), **signup.health()}


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # tests/system/test_metrics_multiprocess.py
    from prometheus_client import CONTENT_TYPE_LATEST
    from prometheus_client import CollectorRegistry
    from prometheus_client import generate_latest
    from prometheus_client import multiprocess

    # docs/metrics.md's form, at module level: outside any app context, without app=.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    signup.register_metrics(registry)

    @app.route("/metrics")
    def metrics() -> t.Any:
        return generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}


faulthandler.register(signal.SIGUSR1, all_threads=True)  # dump stacks when a test hangs

if __name__ == "__main__":
    print(f"mp_app pid {os.getpid()}", file=sys.stderr, flush=True)
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
