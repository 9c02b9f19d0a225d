"""Open a study in MONAI Label's bundled OHIF in headless Chromium, show its SR, save a screenshot.

    python scripts/ohif_screenshot.py --server http://127.0.0.1:8000 --study STUDY_UID --out docs/ohif.png

Chromium is driven over the DevTools protocol (aiohttp's WebSocket client, already in the stack):
the viewer opens ``/ohif/viewer?StudyInstanceUIDs=...``, the structured report's thumbnail is
double-clicked so that OHIF draws its regions over the mammogram, and the page is captured once
the SR viewport shows them. Exit status 2 with one line when something does not show up in time
(the message then ends with the page's last console lines, and the page is saved as OUT.failed.png).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

THUMBNAILS = '[...document.querySelectorAll(\'[data-cy^="study-browser-thumbnail"]\')]'
# In the page: the study browser's thumbnails as {text, x, y} (centre, CSS pixels).
THUMBNAILS_JS = f"""
{THUMBNAILS}.map(e => {{ const r = e.getBoundingClientRect();
                        return {{text: e.innerText, x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})
"""
# In the page: scroll the last SR thumbnail whose text holds %s (a JSON string) into view and return its
# centre, or null while OHIF (which re-renders the study browser as series arrive) does not show it.
SCROLL_TO_REPORT_JS = f"""
(() => {{ const found = {THUMBNAILS}.filter(e => /(^|\s)SR(\s|$)/.test(e.innerText) && e.innerText.includes(%s));
          if (!found.length) return null;
          const e = found[found.length - 1]; e.scrollIntoView({{block: "center"}});
          const r = e.getBoundingClientRect(); return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()
"""
# In the page: the texts OHIF drew over the image (SR measurement labels), once it drew some shapes.
SR_DRAWN_JS = """
(() => { const layer = document.querySelector('[data-cy="viewport-pane"] svg.svg-layer');
         if (!layer || !layer.querySelector('line, path, polyline, circle')) return null;
         return [...layer.querySelectorAll('text')].map(t => t.textContent); })()
"""
# In the page: whether the viewport shows an image (its window/level overlay is drawn with it).
IMAGE_SHOWN_JS = """
(() => { const pane = document.querySelector('[data-cy="viewport-pane"]'); return !!pane && /W:/.test(pane.innerText); })()
"""
# In the page: close OHIF's "investigational use" banner so that it does not cover the image.
DISMISS_BANNER_JS = """
[...document.querySelectorAll('button')].filter(b => b.innerText.includes('Confirm and Hide')).forEach(b => b.click())
"""


class CDP:
    """The smallest DevTools-protocol client: send a command, wait for its answer."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws, self.next_id = ws, 0
        self.console: list[str] = []  # the page's console errors and warnings, for the failure message

    async def send(self, method: str, **params) -> dict:
        self.next_id += 1
        msg_id = self.next_id
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("method") == "Runtime.consoleAPICalled" and msg["params"]["type"] in ("error", "warning"):
                args = msg["params"]["args"]
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            if msg.get("method") == "Runtime.exceptionThrown":
                self.console.append(str(msg["params"]["exceptionDetails"].get("exception", {}).get("description", "")))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def double_click(self, x: float, y: float) -> None:
        for count in (1, 2):
            for kind in ("mousePressed", "mouseReleased"):
                await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=count)


async def wait_for(cdp: CDP, expression: str, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await cdp.evaluate(expression)
        if value:
            return value
        await asyncio.sleep(0.5)
    console = " | ".join(line.splitlines()[0] for line in cdp.console[-4:] if line)
    raise TimeoutError(f"{what} did not show up within {timeout_s:.0f} s (page console: {console or 'quiet'})")


async def capture(port: int, url: str, report: str, out: Path, size: tuple[int, int], timeout_s: float,
                  settle_s: float) -> list[str]:
    """Open ``url``, show the last SR series mentioning ``report``, write the PNG; return the SR labels."""
    async with aiohttp.ClientSession() as http:
        for _ in range(100):  # Chromium opens its DevTools endpoint after a moment
            try:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [p for p in await r.json() if p.get("type") == "page"]
                if pages:
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        else:
            raise TimeoutError("Chromium's DevTools endpoint did not answer")
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            cdp = CDP(ws)
            await cdp.send("Runtime.enable")
            await cdp.send("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                           mobile=False)
            await cdp.send("Page.navigate", url=url)
            thumbs = await wait_for(cdp, f"(() => {{ const t = {THUMBNAILS_JS}; return t.length > 1 ? t : null; }})()",
                                    timeout_s, "the study's series thumbnails")
            reports = [i for i, t in enumerate(thumbs) if t["text"].startswith("SR") and report in t["text"]]
            if not reports:
                raise LookupError(f"no SR series mentioning '{report}' in OHIF's study browser: "
                                  f"{[' '.join(t['text'].split()) for t in thumbs]}")
            await cdp.evaluate(DISMISS_BANNER_JS)
            await wait_for(cdp, IMAGE_SHOWN_JS, timeout_s, "the first image")
            out.parent.mkdir(parents=True, exist_ok=True)
            for attempt in range(1, 4):  # a double-click while OHIF is still busy may be lost: try again
                try:
                    if attempt > 1:  # OHIF may also have crashed on the study's SEG (blank page): reload it
                        await cdp.send("Page.navigate", url=url)
                        await wait_for(cdp, IMAGE_SHOWN_JS, timeout_s / 3, "the first image")
                        await cdp.evaluate(DISMISS_BANNER_JS)
                    where = await wait_for(cdp, SCROLL_TO_REPORT_JS % json.dumps(report), timeout_s / 3,
                                           "the SR series thumbnail")
                    await cdp.double_click(where["x"], where["y"])
                    labels = await wait_for(cdp, SR_DRAWN_JS, timeout_s / 3, "the SR regions over the image")
                    break
                except TimeoutError:
                    if attempt == 3:  # keep what the page shows, for the person who reads the failure
                        shot = await cdp.send("Page.captureScreenshot", format="png")
                        out.with_suffix(".failed.png").write_bytes(base64.b64decode(shot["data"]))
                        raise
            await asyncio.sleep(settle_s)  # rendering settles (software WebGL)
            shot = await cdp.send("Page.captureScreenshot", format="png")
            out.write_bytes(base64.b64decode(shot["data"]))
            return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="MONAI Label server URL (serving a DICOMweb datastore)")
    parser.add_argument("--study", required=True, help="StudyInstanceUID to open")
    parser.add_argument("--report", default="MammoLabel", help="text of the SR series to show (the last match)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--size", default="1600x1000", help="window size WxH")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to let the drawing settle before the shot")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))  # still end Chromium's session (finally below)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        print("ohif_screenshot: Chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    width, height = (int(v) for v in args.size.lower().split("x"))
    port = int(os.environ.get("CDP_PORT", "0")) or _free_port()
    # Chromium's helper processes may still write to the profile while they exit: clean up what can be.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             f"--remote-debugging-port={port}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            url = f"{args.server.rstrip('/')}/ohif/viewer?StudyInstanceUIDs={args.study}"
            labels = asyncio.run(capture(port, url, args.report, args.out, (width, height), args.timeout, args.settle))
        except (TimeoutError, LookupError, RuntimeError) as e:
            print(f"ohif_screenshot: {e}", file=sys.stderr)
            return 2
        finally:
            _stop(browser)
    print(f"ohif_screenshot: wrote {args.out}; OHIF drew the SR with labels {labels}")
    return 0


def _stop(browser: subprocess.Popen) -> None:
    """End Chromium and every helper process of its session."""
    for sig in (signal.SIGTERM, signal.SIGKILL):  # the second ends any helper that outlived the browser
        try:
            os.killpg(browser.pid, sig)
        except ProcessLookupError:
            break
        try:
            browser.wait(timeout=20)
        except subprocess.TimeoutExpired:
            continue


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
