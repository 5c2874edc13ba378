"""Take full-page screenshots of local web pages in headless Chromium (runs in .venv-browser).

    .venv-browser/bin/python tools/screenshot_pages.py shots.json

`shots.json` is a list of {"url", "path", "wait_text": [...], "click": name, "then_wait_text":
[...], "wait_selector", "dismiss": [button names], "settle_ms", "max_height"}: each page is
opened, the network left to go idle (10 s at most), every `wait_text` waited for as visible
text, an optional tab or button clicked (by its name) and `then_wait_text` waited for, side
panels dismissed, the viewport grown to the content's height (the apps scroll inside a panel),
then the page is saved as a PNG at `path`. Prints one JSON line: {"shots": [{"path", "url",
"title", "ok", "error"}], "blocked": [...]}; exits 1 when a page did not show what it should.

Nothing leaves the machine: the browser resolves no name but loopback, and every request to
anything else is aborted and listed in `blocked` (tools/offline_browser.py).
Started by tools/screenshots.py, which runs the servers these pages come from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from offline_browser import CHROMIUM_FLAGS, loopback_only  # this folder: sys.path[0]
from playwright.sync_api import Page, sync_playwright

# The apps scroll inside a panel, not the page: a "full page" picture of them is one viewport.
# The tallest scrolled panel's content height, to grow the viewport to before the picture.
CONTENT_HEIGHT_JS = """() => {
  let height = document.documentElement.scrollHeight;
  for (const el of document.querySelectorAll('*')) {
    const overflow = getComputedStyle(el).overflowY;
    if ((overflow === 'auto' || overflow === 'scroll') && el.scrollHeight > el.clientHeight + 4) {
      height = Math.max(height, el.getBoundingClientRect().top + el.scrollHeight);
    }
  }
  return Math.ceil(height);
}"""


def click(page: Page, name: str, timeout_ms: float) -> None:
    """A tab or button by its accessible name, else any element with exactly that text."""
    for locator in (
        page.get_by_role("tab", name=name, exact=True),
        page.get_by_role("button", name=name, exact=True),
        page.get_by_text(name, exact=True),
    ):
        with contextlib.suppress(Exception):
            locator.first.wait_for(state="visible", timeout=min(timeout_ms, 5_000))
            locator.first.click()
            return
    raise RuntimeError(f"nothing to click named {name!r}")


def take(page: Page, shot: dict[str, Any], timeout_ms: float) -> None:
    page.goto(shot["url"], wait_until="load", timeout=timeout_ms)
    # Pages that poll never go idle: the text checks below decide.
    with contextlib.suppress(Exception):
        page.wait_for_load_state("networkidle", timeout=min(timeout_ms, 10_000))
    for text in shot.get("wait_text", []):
        page.get_by_text(text).first.wait_for(state="visible", timeout=timeout_ms)
    if shot.get("click"):
        click(page, shot["click"], timeout_ms)
    for text in shot.get("then_wait_text", []):
        page.get_by_text(text).first.wait_for(state="visible", timeout=timeout_ms)
    if shot.get("wait_selector"):
        page.locator(shot["wait_selector"]).first.wait_for(state="visible", timeout=timeout_ms)
    for label in shot.get("dismiss", []):  # dialogs and side panels in the way, if any
        for button in page.get_by_role("button", name=label, exact=True).all():
            with contextlib.suppress(Exception):
                if button.is_visible():
                    button.click(timeout=3_000)
                    page.wait_for_timeout(500)
    # Charts, images and fonts paint after their text: a short settle before the picture.
    page.wait_for_timeout(int(shot.get("settle_ms", 1500)))
    width = page.viewport_size["width"] if page.viewport_size else 1440
    height = min(int(page.evaluate(CONTENT_HEIGHT_JS)), int(shot.get("max_height", 3000)))
    if page.viewport_size and height > page.viewport_size["height"]:
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(800)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("shots", type=Path)
    parser.add_argument("--browser", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per page")
    args = parser.parse_args()
    shots: list[dict[str, Any]] = json.loads(args.shots.read_text())

    blocked: list[str] = []
    results: list[dict[str, Any]] = []

    route = loopback_only(blocked)
    with (
        tempfile.TemporaryDirectory(prefix="screenshots-profile-") as profile,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=args.browser,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 900},
        )
        try:
            for shot in shots:
                page = context.new_page()
                page.route("**/*", route)
                result: dict[str, Any] = {"path": shot["path"], "url": shot["url"], "ok": False}
                try:
                    take(page, shot, args.timeout * 1000)
                    result["ok"] = True
                except Exception as exc:
                    result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                # Saved either way: a picture of a page that failed shows why.
                try:
                    result["url"] = page.url
                    result["title"] = page.title()
                    page.screenshot(path=shot["path"], full_page=True)
                except Exception as exc:
                    result["ok"] = False
                    result["error"] = f"screenshot: {type(exc).__name__}: {exc}"
                results.append(result)
                page.close()
        finally:
            context.close()
    print(json.dumps({"shots": results, "blocked": sorted(set(blocked))}))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
