"""Headless Chromium that reaches nothing but loopback: shared by the scripts that drive it
(tests/promptflow/browser_check.py, tools/screenshot_pages.py; both run in .venv-browser).

Two layers: the browser resolves no host name but loopback (`--host-resolver-rules`), and a
page route aborts every request to anything else and records its URL (the pages ask a CDN
for fonts; nothing may leave the machine, in CI or here).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlparse

from playwright.sync_api import Request, Route

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def loopback_only(blocked: list[str]) -> Callable[[Route, Request], None]:
    """A handler for `page.route("**/*", ...)`: loopback and data: URLs go through, the rest
    is aborted and appended to `blocked`."""

    def route(route: Route, request: Request) -> None:
        if (urlparse(request.url).hostname or "") in LOOPBACK or request.url.startswith("data:"):
            route.continue_()
        else:
            blocked.append(request.url)
            route.abort()

    return route
