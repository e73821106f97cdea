#!/usr/bin/env python3
"""Opens a URL in headless Chromium, in real time, and reports every page it loads.

    browse.py URL --until TEXT [--timeout SECONDS] [--screenshot FILE] [--size 390x844]

Chromium is driven through its DevTools protocol over a pipe (--remote-debugging-pipe: the
protocol's JSON messages, each ended by a NUL byte, on file descriptors 3 and 4), so nothing but
Python's standard library is needed. The page runs with JavaScript turned off, as a browser
without it would; pages are read through the DOM domain, which needs none.

Prints one JSON line per page load: {"t": seconds since the first navigation, "wall": the Unix
time of the load, "url", "title",
"refresh" (the meta refresh's content, or null), "text" (the body's text)}. Exits 0 once a page
holds TEXT, 1 when SECONDS pass first. With --screenshot, the first page is saved as a PNG of
the given size, as a phone shows it.
"""

import argparse
import base64
import fcntl
import html.parser
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time


class Page(html.parser.HTMLParser):
    """The title, the meta refresh and the body's text of a document."""

    def __init__(self):
        super().__init__()
        self.title, self.refresh, self.text = "", None, []
        self._in = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "meta" and (attrs.get("http-equiv") or "").lower() == "refresh":
            self.refresh = attrs.get("content")
        if tag not in ("meta", "link", "br", "img", "input"):
            self._in.append(tag)

    def handle_endtag(self, tag):
        if tag in self._in:
            while self._in and self._in.pop() != tag:
                pass

    def handle_data(self, data):
        if "title" in self._in:
            self.title += data
        elif "body" in self._in and not {"style", "script"} & set(self._in):
            self.text.append(data)


def high(fd):
    """`fd` moved to a number of 10 or more."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    def __init__(self, size):
        self.profile = tempfile.mkdtemp(prefix="browse-")
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        # Chromium's ends out of the way of 3 and 4 first, so that placing one cannot
        # overwrite the other; every fd Python opens is closed on exec, those two copies aside.
        to_chrome_r, from_chrome_w = (high(to_chrome_r), high(from_chrome_w))

        def fds():
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if not binary:
            sys.exit("browse.py: no chromium (scripts/install-deps installs it)")
        width, height = size.split("x")
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            preexec_fn=fds, close_fds=False, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer = b""
        self.next_id = 0
        self.events = []

    def send(self, method, params=None, session=None):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        return self.next_id

    def read(self, timeout):
        """The next message, or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_chrome], [], [], left)[0]:
                return None
            chunk = os.read(self.from_chrome, 1 << 20)
            if not chunk:
                raise SystemExit("browse.py: chromium went away")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method, params=None, session=None, timeout=10):
        """Sends a command and waits for its result; events meanwhile are kept."""
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.read(deadline - time.monotonic())
            if message is None:
                break
            if message.get("id") == wanted:
                if "error" in message:
                    raise SystemExit(f"browse.py: {method}: {message['error']}")
                return message["result"]
            self.events.append(message)
        raise SystemExit(f"browse.py: no answer to {method}")

    def event(self, method, timeout):
        """The next event named `method`, or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.events):
                if message.get("method") == method:
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            message = self.read(left) if left > 0 else None
            if message is None:
                return None
            self.events.append(message)

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--until", required=True)
    parser.add_argument("--timeout", type=float, default=20)
    parser.add_argument("--screenshot")
    parser.add_argument("--size", default="390x844")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))

    browser = Browser(args.size)
    try:
        targets = browser.call("Target.getTargets")["targetInfos"]
        target = next(t["targetId"] for t in targets if t["type"] == "page")
        session = browser.call("Target.attachToTarget",
                               {"targetId": target, "flatten": True})["sessionId"]
        browser.call("Page.enable", session=session)
        browser.call("Emulation.setScriptExecutionDisabled", {"value": True}, session=session)
        browser.call("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": height, "deviceScaleFactor": 1,
                      "mobile": True}, session=session)
        start = time.monotonic()
        browser.call("Page.navigate", {"url": args.url}, session=session)
        loads = 0
        while time.monotonic() - start < args.timeout:
            if browser.event("Page.loadEventFired", args.timeout - (time.monotonic() - start)) is None:
                break
            loads += 1
            at = time.monotonic() - start
            root = browser.call("DOM.getDocument", {"depth": -1}, session=session)["root"]
            markup = browser.call("DOM.getOuterHTML", {"nodeId": root["nodeId"]},
                                  session=session)["outerHTML"]
            url = root.get("documentURL", "")
            page = Page()
            page.feed(markup)
            text = " ".join(" ".join(page.text).split())
            print(json.dumps({"t": round(at, 3), "wall": time.time(), "url": url,
                              "title": page.title.strip(),
                              "refresh": page.refresh, "text": text}), flush=True)
            if loads == 1 and args.screenshot:
                shot = browser.call("Page.captureScreenshot", {"format": "png"}, session=session)
                with open(args.screenshot, "wb") as f:
                    f.write(base64.b64decode(shot["data"]))
            if args.until in text:
                return 0
        return 1
    finally:
        browser.close()


if __name__ == "__main__":
    sys.exit(main())
