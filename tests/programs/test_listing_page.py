"""The live HTML listing in a real browser: Debian's chromium, headless, driven over the
DevTools protocol (``--remote-debugging-pipe``), shows figures that change while a
writer writes, without a reload."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
from functools import partial

import pytest

from streamfs_fuse.testing import REQUIRE_MOUNT, accepts, free_port, wait_until

until = partial(wait_until, timeout=60.0, interval=0.2)

#: The rows of the listing, cell by cell, as the page shows them now.
ROWS = ("JSON.stringify([...document.querySelectorAll('#rows tr')].map(row => "
        "[row.querySelector('a').getAttribute('href'), "
        "...[...row.cells].map(c => c.textContent)]))")


class Browser:
    """Headless chromium with one page, spoken to over the DevTools pipe (fds 3 and 4)."""

    def __init__(self, url: str, profile) -> None:
        to_browser, self._to = os.pipe()
        self._from, from_browser = os.pipe()

        def give_pipes():  # out of the way first: either pipe may be fd 3 or 4
            reads, writes = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser,
                                                                            from_browser))
            os.dup2(reads, 3)
            os.dup2(writes, 4)
        self.process = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=900,300",
             url], pass_fds=(3, 4), preexec_fn=give_pipes, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._ids = 0
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": page["targetId"], "flatten": True})["sessionId"]

    def call(self, method: str, params: dict | None = None, session: str | None = None):
        self._ids += 1
        message = {"id": self._ids, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                data = os.read(self._from, 1 << 16)
                if not data:
                    raise AssertionError("chromium closed its DevTools pipe")
                self._buffer += data
            raw, _, self._buffer = self._buffer.partition(b"\0")
            answer = json.loads(raw)
            if answer.get("id") == self._ids:
                assert "error" not in answer, answer
                return answer["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                         self.session)["result"].get("value")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"},
                                          self.session)["data"])

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self._to)
        os.close(self._from)


@pytest.fixture
def browser(tmp_path):
    if not shutil.which("chromium"):
        if REQUIRE_MOUNT:  # scripts/test installs it: missing there is a failure
            pytest.fail("chromium is missing but the browser test is required here")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    browsers = []

    def open_page(url):
        browsers.append(Browser(url, tmp_path / f"profile-{len(browsers)}"))
        return browsers[-1]
    yield open_page
    for opened in browsers:
        opened.close()


def test_the_listing_updates_live_in_chromium(mount_with, browser, tmp_path):
    port = free_port()
    mnt = mount_with("--http", f"127.0.0.1:{port}")
    until(lambda: accepts(port), what="the HTTP port")
    (mnt / "cams").mkdir()
    (mnt / "cams" / "idle").write_bytes(b"i" * 100)
    front = mnt / "cams" / "front"
    mnt.spawn(["sh", "-c", f"while :; do head -c 65536 /dev/zero; sleep 0.02; done > {front}"])
    until(lambda: front.exists(), what="the writer")

    url = f"http://127.0.0.1:{port}/cams/"
    page = browser(url)
    # The blank page chromium starts on is "complete" too: wait for ours.
    until(lambda: page.evaluate(f"location.href === {json.dumps(url)} && "
                                "document.readyState === 'complete'") is True, what="the page")
    page.evaluate("window.notReloaded = true")

    def rows():
        return {href: cells for href, *cells in json.loads(page.evaluate(ROWS))}
    # A rate is made by the page from two of its own readings of the listing.
    until(lambda: rows().get("/cams/front", ["", "", ""])[2].endswith("iB/s"),
          what="a write rate for front")
    name, size, rate, readers, writers, _ = rows()["/cams/front"]
    assert name == "front" and writers == "1" and readers == "0"
    assert rows()["/cams/idle"][1:3] == ["100 B", "0 B/s"]
    # The figures move while the writer writes, in the same page.
    until(lambda: rows()["/cams/front"][1] != size, what="the size to change")
    assert page.evaluate("window.notReloaded") is True
    points = page.evaluate("document.querySelector('#rows tr polyline')"
                           ".getAttribute('points').split(' ').length")
    assert points >= 2  # a sparkline of the rates so far
    (tmp_path / "listing.png").write_bytes(page.screenshot())
