"""Chat through the browser chat page in headless Chromium (runs in .venv-browser, playwright).

    .venv-browser/bin/python tests/promptflow/browser_check.py --url http://127.0.0.1:PORT/ \
        --question "Who founded Microsoft?" --screenshot chat.png

Types each question into the page's question box as a person would, presses Enter, waits for
the page's own POST /score, and checks the reply it got is shown on the page. Prints JSON:
{"title", "turns": [{"question", "answer", "shown", "sent"}], "blocked": [...]}. `sent` is the
body the page posted (its chat history included).

Nothing leaves the machine: the browser resolves no name but loopback, and every request to
anything else is aborted and listed in `blocked` (the page asks a CDN for its fonts).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from offline_browser import CHROMIUM_FLAGS, loopback_only  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--question", action="append", required=True)
    parser.add_argument("--screenshot", required=True)
    parser.add_argument("--browser", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per answer")
    args = parser.parse_args()

    blocked: list[str] = []
    turns: list[dict[str, object]] = []

    route = loopback_only(blocked)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=args.browser, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.route("**/*", route)
            page.goto(args.url, wait_until="load")
            box = page.get_by_label("question")
            box.wait_for(timeout=30_000)
            for question in args.question:
                box.fill(question)
                with page.expect_response(
                    lambda r: r.url.endswith("/score") and r.request.method == "POST",
                    timeout=args.timeout * 1000,
                ) as answered:
                    box.press("Enter")
                response = answered.value
                sent = response.request.post_data_json
                answer = str(response.json().get("answer", "")) if response.ok else ""
                shown = False
                if answer:
                    # The reply as the page renders it: the chat bubble with that text.
                    page.get_by_text(answer, exact=True).last.wait_for(timeout=30_000)
                    shown = True
                turns.append(
                    {
                        "question": question,
                        "status": response.status,
                        "answer": answer,
                        "shown": shown,
                        "sent": sent,
                    }
                )
            page.screenshot(path=args.screenshot, full_page=True)
            title = page.title()
        finally:
            browser.close()
    print(json.dumps({"title": title, "turns": turns, "blocked": blocked}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
