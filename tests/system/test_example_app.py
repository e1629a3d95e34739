"""The offline demo as a person uses it: a real Chromium, real HTTP, the bundled emulators.

* ``test_signup_in_a_real_browser``: home page → Login → the Auth0 emulator's form → back
  logged in → /signups lists the signup; log out, log in again → still exactly one signup.
* ``test_python_m_example_app``: ``python -m example_app`` (what ``make demo`` runs) serves
  the home page, and SIGTERM stops it cleanly.

Chromium is the system one (``scripts/install-test-deps.sh``); Playwright drives it, as its own
browser download is not used. With ``CI=true`` a missing browser or Playwright fails the test;
elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import typing as t
from pathlib import Path

import _paths
import pytest
import requests
from _waits import wait_for

from flask_keen_signup import signup_state
from flask_keen_signup.health import health_of
from flask_keen_signup.testing._server import ThreadedServer

if t.TYPE_CHECKING:  # pragma: no cover
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIEnvironment
    from flask import Flask
    from playwright.sync_api import BrowserContext
    from playwright.sync_api import Page

ROOT = Path(_paths.ROOT)
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Headless on a closed network: without the background-networking flags Chromium keeps
# trying to reach Google's services.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_CI = os.environ.get("CI", "").lower() == "true"
# Every wait is capped. Generous, for a loaded 2-core CI machine; a pass takes a few seconds.
ACTION_TIMEOUT_MS = 20_000
DELIVERY_TIMEOUT = 30.0
STARTUP_TIMEOUT = 60.0
EXIT_TIMEOUT = 20.0


def _unavailable(reason: str) -> t.NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the browser test must run in CI)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def browser(tmp_path: Path) -> t.Iterator[BrowserContext]:
    """A fresh headless Chromium (its own profile under ``tmp_path``) driven by Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"no Chromium at {CHROMIUM} (scripts/install-test-deps.sh installs it)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 900},
            timeout=ACTION_TIMEOUT_MS * 3,  # the browser's own start
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        context.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


class _LateApp:
    """A WSGI app bound later: the server picks its free port before the app exists, so the
    app can be built for that port (no race between choosing a port and binding it)."""

    app: Flask | None = None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        assert self.app is not None
        return self.app(environ, start_response)


@pytest.fixture
def offline_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> t.Iterator[tuple[str, t.Any, t.Any, Flask]]:
    """``start_offline_app`` served on ``http://localhost:<free port>`` in this process."""
    monkeypatch.syspath_prepend(str(ROOT))  # example_app/ is beside the package, not in it
    from example_app.offline import APP_HOST
    from example_app.offline import start_offline_app

    late = _LateApp()
    server = ThreadedServer(late, host=APP_HOST, port=0)
    server.start()
    try:
        app, auth0, keen = start_offline_app(
            app_port=server.port, instance_path=str(tmp_path / "instance")
        )
        late.app = app
        try:
            yield server.url, auth0, keen, app
        finally:
            signup_state(app).sender.shutdown(timeout=5)
            auth0.stop()
            keen.stop()
    finally:
        server.stop()


def _log_in(page: Page, base: str, email: str, password: str, name: str) -> None:
    """What a person does: click Login, fill the Auth0 emulator's form, click Continue."""
    page.goto(f"{base}/")
    page.get_by_role("link", name="Login").click()
    page.wait_for_url("http://127.0.0.1:*/authorize?*")  # the emulator's hosted login page
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(f"{base}/")
    assert page.locator("h1").inner_text() == f"Welcome {name}!"


def _signup_rows(page: Page, base: str, name: str) -> int:
    page.goto(f"{base}/signups")
    return page.locator("tbody tr", has_text=name).count()


@pytest.mark.slow
def test_signup_in_a_real_browser(
    browser: BrowserContext,
    offline_demo: tuple[str, t.Any, t.Any, Flask],
    tmp_path: Path,
) -> None:
    base, auth0, keen, app = offline_demo
    assert base.startswith("http://localhost:")
    state = signup_state(app)
    page = browser.new_page()

    # A guest sees the Login button and the offline banner.
    page.goto(f"{base}/")
    assert page.locator("h1").inner_text() == "Welcome Guest"
    assert "Offline demo" in page.locator(".banner").inner_text()

    # Sign up through the emulator's form; the app's session cookie survives the round trip.
    _log_in(page, base, "ada@example.com", "correct horse", "Ada Lovelace")
    [user] = auth0.users()
    assert user["email"] == "ada@example.com" and user["logins_count"] == 1

    # The background sender delivers it; /signups reads it back through Keen's query API.
    # Reload the page as a person would, a bounded number of times.
    wait_for(
        lambda: _signup_rows(page, base, "Ada Lovelace") == 1,
        DELIVERY_TIMEOUT,
        "the signup on /signups",
        interval=0.5,
    )
    row = page.locator("tbody tr", has_text="Ada Lovelace")
    assert user["user_id"] in row.inner_text()
    assert "1 signup." in page.locator("body").inner_text()
    assert page.locator("svg.chart rect.bar:not(.zero)").count() == 1  # today's bar
    shot = tmp_path / "signups.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Log out (through the emulator's /v2/logout, back home), then log in again.
    page.goto(f"{base}/")
    page.get_by_role("link", name="Logout").click()
    page.wait_for_url(f"{base}/")
    assert page.locator("h1").inner_text() == "Welcome Guest"
    _log_in(page, base, "ada@example.com", "correct horse", "Ada Lovelace")
    assert auth0.get_user(user["user_id"])["logins_count"] == 2

    # The returning user is not a signup: nothing is queued, nothing more reaches Keen.
    wait_for(
        lambda: health_of(state)["pending"] == 0 and health_of(state)["in_flight"] == 0,
        DELIVERY_TIMEOUT,
        "an idle outbox",
    )
    assert health_of(state)["delivered"] == 1
    assert health_of(state)["dead"] == 0
    [event] = keen.events("signups")
    assert event["userId"] == user["user_id"] and event["name"] == "Ada Lovelace"
    assert keen.duplicates_rejected == 0
    assert _signup_rows(page, base, "Ada Lovelace") == 1
    assert page.locator("#signup-list tbody tr").count() == 1


def _clean_env(tmp_path: Path, port: int) -> dict[str, str]:
    """The environment of a new user's shell: no real Auth0 or Keen settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTH0_", "FLASK_", "KEEN_", "EXAMPLE_"))
    }
    env.update(
        PORT=str(port),
        EXAMPLE_INSTANCE_PATH=str(tmp_path / "instance"),
        EXAMPLE_OFFLINE="1",  # even if the checkout has a developer's .env
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.mark.slow
def test_python_m_example_app(tmp_path: Path) -> None:
    port = _free_port()
    out = (tmp_path / "stdout.txt").open("wb")
    err = (tmp_path / "stderr.txt").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "example_app"],
        cwd=ROOT,
        env=_clean_env(tmp_path, port),
        stdout=out,
        stderr=err,
    )

    def output() -> str:
        out.flush()
        err.flush()
        return (
            (tmp_path / "stdout.txt").read_text(errors="replace")
            + (tmp_path / "stderr.txt").read_text(errors="replace")
        )[-4000:]

    try:
        home: list[requests.Response] = []

        def answers() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"python -m example_app exited with {proc.returncode}:\n{output()}")
            try:
                home.append(requests.get(f"http://localhost:{port}/", timeout=5))
            except requests.ConnectionError:
                return False
            return True

        wait_for(answers, STARTUP_TIMEOUT, f"the demo on port {port}:\n{output()}", interval=0.25)
        response = home[-1]
        assert response.status_code == 200
        assert 'href="/login"' in response.text and ">Login</a>" in response.text
        assert "Offline demo" in response.text
        assert (tmp_path / "instance" / "keen-emulator.sqlite3").exists()
        assert (tmp_path / "instance" / "keen_signup.sqlite3").exists()

        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"SIGTERM did not stop the demo within {EXIT_TIMEOUT:.0f}s:\n{output()}")
        assert code == 0, output()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=EXIT_TIMEOUT)
        out.close()
        err.close()


# -- attribution and the chart, through a real browser ---------------------------------------

MARKETING_HOST = "127.0.0.2"  # another site: neither the app (localhost) nor the IdP (127.0.0.1)


def _marketing_site(app_base: str) -> t.Callable[..., t.Any]:
    """A newsletter's landing page on another host, linking to the app with UTM parameters."""
    page = (
        "<!doctype html><title>Launch newsletter</title><h1>We launched</h1>"
        f'<a id="cta" href="{app_base}/?utm_source=newsletter&amp;utm_medium=email'
        '&amp;utm_campaign=launch">Try it</a>'
    ).encode()

    def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [page]

    return wsgi


@pytest.fixture
def chromium() -> t.Iterator[t.Any]:
    """A headless Chromium for tests that need several independent browsers (contexts)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"no Chromium at {CHROMIUM} (scripts/install-test-deps.sh installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield browser
        finally:
            browser.close()


def _fill_signup_form(page: Page, base: str, email: str, name: str) -> None:
    page.wait_for_url("http://127.0.0.1:*/authorize?*")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill("correct horse")
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(f"{base}/")
    assert page.locator("h1").inner_text() == f"Welcome {name}!"


@pytest.mark.slow
def test_attribution_through_the_real_login_and_the_chart(
    chromium: t.Any,
    offline_demo: tuple[str, t.Any, t.Any, Flask],
    tmp_path: Path,
) -> None:
    base, auth0, keen, app = offline_demo
    marketing = ThreadedServer(_marketing_site(base), host=MARKETING_HOST, port=0)
    marketing.start()
    try:
        # Browser 1: the newsletter's link, then the app's "Sign up" button (screen_hint).
        first = chromium.new_context(viewport={"width": 1200, "height": 900})
        first.set_default_timeout(ACTION_TIMEOUT_MS)
        page = first.new_page()
        page.goto(f"{marketing.url}/")
        page.locator("#cta").click()
        page.wait_for_url(f"{base}/?utm_source=newsletter*")
        assert "source newsletter" in " ".join(page.locator("#touch").inner_text().split())
        page.goto(f"{base}/")  # browsing on does not replace the first touch
        page.get_by_role("link", name="Sign up").click()
        _fill_signup_form(page, base, "nia@example.com", "Nia Campaign")

        # Browser 2: no campaign, straight to Login.
        second = chromium.new_context(viewport={"width": 1200, "height": 900})
        second.set_default_timeout(ACTION_TIMEOUT_MS)
        other = second.new_page()
        other.goto(f"{base}/")
        assert other.locator("#touch").count() == 0
        other.get_by_role("link", name="Login").click()
        _fill_signup_form(other, base, "odo@example.com", "Odo Direct")

        users = {u["email"]: u["user_id"] for u in auth0.users()}
        wait_for(lambda: len(keen.events("signups")) == 2, DELIVERY_TIMEOUT, "2 signups")
        events = {e["userId"]: e for e in keen.events("signups")}
        nia, odo = events[users["nia@example.com"]], events[users["odo@example.com"]]
        assert nia["attribution"] == {
            "source": "newsletter",
            "medium": "email",
            "campaign": "launch",
            # Chromium sends only the origin to another site (strict-origin-when-cross-origin).
            "referrer": f"{marketing.url}/",
            "landing": "/",
        }
        assert nia["signup_intent"] is True
        assert "attribution" not in odo
        assert odo["signup_intent"] is False
        # The first touch went with the signup: the home page no longer shows it.
        page.goto(f"{base}/")
        assert page.locator("#touch").count() == 0

        # The chart: per day by source, and by source; numbers in the page's text.
        page.goto(f"{base}/signups")
        days = page.locator("#per-day g.day")
        assert days.count() == 14
        today = days.nth(13)
        assert today.get_attribute("data-total") == "2"
        assert today.locator("rect.bar:not(.zero)").count() == 2
        assert today.locator('rect[data-source="newsletter"]').count() == 1
        assert today.locator('rect[data-source="(none)"]').count() == 1
        fills = today.locator("rect.bar").evaluate_all(
            "rects => rects.map(r => getComputedStyle(r).fill)"
        )
        assert len(set(fills)) == 2, fills  # one colour per source
        assert today.locator("text.value").text_content() == "2"
        assert days.nth(0).locator("rect.bar.zero").count() == 1
        rows = page.locator("#by-source tbody tr")
        assert rows.count() == 2
        newsletter = page.locator('#by-source tr[data-source="newsletter"]')
        assert newsletter.locator("td.count").inner_text() == "1"
        assert "50%" in newsletter.locator("td.share").inner_text()
        assert "2 signups" in page.locator("#by-source figcaption").inner_text()
        row = page.locator("#signup-list tbody tr", has_text="Nia Campaign")
        assert "newsletter / launch" in row.inner_text()
        box = page.locator("#per-day svg").bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 100
        shot = tmp_path / "chart.png"
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        page.locator("#per-day").screenshot(path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 2_000

        # Without JavaScript the page is the same: it is rendered on the server.
        plain = chromium.new_context(java_script_enabled=False)
        nojs = plain.new_page()
        nojs.goto(f"{base}/signups")
        assert nojs.locator("#per-day g.day").count() == 14
        text = nojs.locator("#by-source").inner_text()
        assert "newsletter" in text and "(none)" in text
        plain.close()
        first.close()
        second.close()
    finally:
        marketing.stop()
