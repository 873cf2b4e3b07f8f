"""``omniseg serve``'s web page end to end in headless Chromium (Debian package ``chromium``).

Chromium loads ``/?selftest=1``: the page's own JavaScript fetches the sample image, hands it to the
same function as the file input and drop zone, posts the form to ``/segment`` like the Segment button,
waits for the overlay and writes a report into the DOM, which ``--dump-dom`` prints once the page is
idle (``--virtual-time-budget`` waits for the fetches). The report is checked against ``POST
/segment`` answered for the same image directly.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.request

import pytest

from omniseg.api import Segmenter
from omniseg.serve.server import SegmentServer, SegmentService, sample

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium; .ci/run does)")


class Spy(SegmentService):
    """The service, remembering the image file name of every form it answered."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[str | None] = []

    def segment(self, fields):
        self.seen.append(fields.get("image", (None, b""))[0])
        return super().segment(fields)


@pytest.fixture(scope="module")
def server(tiny_box_to_mask):
    out = tiny_box_to_mask[0]
    srv = SegmentServer(Spy(Segmenter.from_checkpoint(out), timeout_s=30), "127.0.0.1", 0, quiet=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()
    srv.service.close()


def selftest(url: str) -> dict:
    """The page's self-test report, as headless Chromium leaves it in the DOM."""
    with tempfile.TemporaryDirectory(prefix="omniseg-chromium-") as profile:
        res = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url],
            capture_output=True, text=True, timeout=90)
    found = re.search(r'<pre id="selftest"[^>]*>(.*?)</pre>', res.stdout, re.S)
    assert found and found.group(1), f"no self-test report in the DOM (rc {res.returncode}): {res.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_page_segments_the_sample_like_the_api(server):
    objects = sample()[1]
    report = selftest(server.url + "?selftest=1&min_score=0")
    assert report["status"] == "done", report
    assert server.service.seen == ["sample.png"]  # the browser's fetch reached the server with the file
    direct = server.service.segment({"image": ("sample.png", sample()[0]), "boxes": (None, objects["boxes"].encode()),
                                     "vocabulary": (None, objects["vocabulary"].encode()), "min_score": (None, b"0")})
    assert report["count"] == len(direct["instances"]) == len(objects["boxes"].split(";")) >= 2
    assert report["texts"] == [i["text"] for i in direct["instances"]] == objects["vocabulary"].split(", ")
    assert report["rows"] == report["count"]  # one table row per instance
    assert report["overlay"] == [256, 256]  # the overlay PNG was decoded and shown


def test_page_shows_the_servers_error(server):
    report = selftest(server.url + "?selftest=1&boxes=1,2,3")
    assert report["status"] == "error"
    assert report["message"].startswith("400: ") and "'1,2,3' is not x0,y0,x1,y1" in report["message"]


def test_page_is_self_contained(server):
    with urllib.request.urlopen(server.url, timeout=30) as res:
        page = res.read().decode()
    assert not re.search(r'(src|href)="(https?:)?//', page)  # no CDN: works offline
