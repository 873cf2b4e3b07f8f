"""``omniseg serve``: the HTTP API on a tiny trained box-to-mask checkpoint, every status code."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniseg.api import Segmenter
from omniseg.cli import main as cli_main
from omniseg.commands.serve import is_loopback
from omniseg.ops.rle import rle_decode
from omniseg.serve import server as server_module
from omniseg.serve.server import SegmentServer, SegmentService, categories_for, parse_multipart, sample
from omniseg.viz.draw import draw_instances

MAX_UPLOAD = 200_000


@pytest.fixture(scope="module")
def run(tiny_box_to_mask) -> Path:
    return tiny_box_to_mask[0]


@pytest.fixture(scope="module")
def seg(run) -> Segmenter:
    return Segmenter.from_checkpoint(run)


def start(service: SegmentService, max_upload: int = MAX_UPLOAD) -> SegmentServer:
    server = SegmentServer(service, "127.0.0.1", 0, max_upload_bytes=max_upload, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def url(seg):
    server = start(SegmentService(seg, timeout_s=30))
    yield server.url
    server.shutdown()
    server.server_close()
    server.service.close()


def form(fields: dict[str, str], image: bytes | None = None, filename: str = "x.png") -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type, written out by hand."""
    boundary = "----omnisegtestboundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if image is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(url: str, path: str, method: str = "GET", body: bytes | None = None,
            content_type: str | None = None) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one request; errors are answers too."""
    req = urllib.request.Request(url.rstrip("/") + path, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, dict(res.headers), json.loads(res.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def post(url: str, fields: dict[str, str], image: bytes | None = None, filename: str = "x.png"):
    body, ctype = form(fields, image, filename)
    return request(url, "/segment", "POST", body, ctype)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_page_and_health(url, seg):
    with urllib.request.urlopen(url, timeout=30) as res:
        assert res.headers["Content-Type"] == "text/html; charset=utf-8"
        page = res.read().decode()
    assert "<title>omniseg</title>" in page and 'fetch("/segment"' in page
    assert "http" not in page.replace(".createObjectURL", "")  # nothing fetched from elsewhere
    status, _, health = request(url, "/health")
    assert status == 200
    assert health["recipe"] == "box_to_mask" and health["prompt"] == "boxes"
    assert health["classes"] == [c.name for c in seg.info.things()] and len(health["classes"]) > 0
    assert health["max_upload_mb"] == pytest.approx(MAX_UPLOAD / 2**20)


def test_segment_gives_the_segmenters_instances_coco_and_overlay(url, seg):
    image = np.asarray(Image.open(io.BytesIO(sample()[0])).convert("RGB"))
    boxes = [[10, 20, 90, 100], [120, 40, 250, 200]]
    things = seg.info.things()
    known = things[2].name  # a training class keeps its id; a new phrase gets the next free one
    status, _, r = post(url, {"vocabulary": f"{known}, my thing", "boxes": "10,20,90,100; 120,40,250,200",
                              "min_score": "0"}, png(image), "photo.png")
    assert status == 200, r
    want = seg.predict(image, vocabulary=[known, "my thing"], boxes=boxes)
    assert [i["text"] for i in r["instances"]] == [known, "my thing"] == [i.text for i in want]
    assert [i["box"] for i in r["instances"]] == boxes
    new_id = max(c.id for c in things) + 1
    assert [i["category_id"] for i in r["instances"]] == [things[2].id, new_id]
    assert r["categories"] == [{"id": things[2].id, "name": known}, {"id": new_id, "name": "my thing"}]
    for got, ref in zip(r["instances"], want):
        mask = rle_decode(got["mask"]).astype(bool)
        assert np.array_equal(mask, rle_decode(ref.mask).astype(bool))
        assert got["area"] == mask.sum()
    assert (r["width"], r["height"]) == (256, 256)
    assert [c["bbox"] for c in r["coco"]] == [[10, 20, 80, 80], [120, 40, 130, 160]]  # XYWH
    assert [c["image_id"] for c in r["coco"]] == [1, 1]
    assert [c["category_id"] for c in r["coco"]] == [things[2].id, new_id]
    assert r["coco"][0]["segmentation"] == r["instances"][0]["mask"]
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(r["overlay_png"]))))
    assert np.array_equal(overlay, np.asarray(draw_instances(image, want)))


def test_sample_routes(url):
    with urllib.request.urlopen(url + "sample.png", timeout=30) as res:
        assert Image.open(io.BytesIO(res.read())).size == (256, 256)
    status, _, objects = request(url, "/sample.json")
    boxes = [b.split(",") for b in objects["boxes"].split("; ")]
    assert status == 200 and all(len(b) == 4 for b in boxes)
    assert len(boxes) == len(objects["vocabulary"].split(", ")) >= 2


def test_min_score_filters(url):
    image = png(np.zeros((40, 40, 3), np.uint8))
    status, _, r = post(url, {"boxes": "0,0,20,20", "min_score": "1"}, image)
    assert status == 200 and len(r["instances"]) == 1  # box prompts score 1.0: kept at min_score 1
    assert r["instances"][0]["text"] == "object" and r["coco"][0]["score"] == 1.0


PIXELS = png(np.full((40, 50, 3), 128, np.uint8))


@pytest.mark.parametrize(("fields", "image", "says"), [
    ({"boxes": "0,0,5,5"}, b"not an image at all", "notes.txt: not a recognized image file"),
    ({"boxes": "0,0,5,5"}, PIXELS[: len(PIXELS) // 2], "notes.txt: cannot decode image"),
    ({"boxes": "0,0,5,5"}, None, "no image in the request"),
    ({"boxes": "1,2,3"}, PIXELS, "'1,2,3' is not x0,y0,x1,y1"),
    ({"boxes": "0,0,5,5", "vocabulary": " , "}, PIXELS, "no class name"),
    ({"boxes": "0,0,5,5", "min_score": "2"}, PIXELS, "must be a number in [0, 1]"),
    ({"boxes": "60,0,70,5"}, PIXELS, "does not overlap the image (50 x 40 pixels)"),
    ({}, PIXELS, "pass boxes"),
])
def test_bad_uploads_are_400_with_a_message(url, fields, image, says):
    status, _, r = post(url, fields, image, "notes.txt")
    assert status == 400
    assert says in r["error"]


def test_malformed_forms(url):
    status, _, r = request(url, "/segment", "POST", b"--b\r\nno headers here", "multipart/form-data; boundary=b")
    assert status == 400 and "cut short" in r["error"]
    status, _, r = request(url, "/segment", "POST", PIXELS, "image/png")
    assert status == 415 and "multipart/form-data" in r["error"]
    status, _, r = request(url, "/segment", "POST", b"x", "multipart/form-data")
    assert status == 400 and "boundary" in r["error"]
    with socket.create_connection(("127.0.0.1", int(url.split(":")[2].strip("/"))), timeout=30) as raw:  # no body, no length
        raw.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n\r\n")
        answer = raw.makefile("rb").read().decode()
    assert answer.startswith("HTTP/1.0 411 ") and "Content-Length or a chunked body" in answer


def chunked_post(url: str, chunks: list[bytes], content_type: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(url.split("/")[2], timeout=30)  # a generator body is sent chunked
    try:
        conn.request("POST", "/segment", body=iter(chunks), headers={"Content-Type": content_type})
        res = conn.getresponse()
        return res.status, json.loads(res.read())
    finally:
        conn.close()


def test_chunked_uploads(url):
    body, ctype = form({"boxes": "0,0,5,5"}, PIXELS)
    status, r = chunked_post(url, [body[:100], body[100:]], ctype)
    assert status == 200 and len(r["instances"]) == 1
    status, r = chunked_post(url, [b"x" * 150_000, b"y" * 150_000], ctype)
    assert status == 413 and "0.3 MB" in r["error"]


def test_too_large(url, monkeypatch):
    body = b"x" * (3 << 20)  # more than the socket buffers: the answer must still arrive
    status, _, r = request(url, "/segment", "POST", body, "multipart/form-data; boundary=b")
    assert status == 413 and "3.0 MB" in r["error"] and "--max-upload-mb" in r["error"]
    monkeypatch.setattr(server_module, "MAX_PIXELS", 1999)
    status, _, r = post(url, {"boxes": "0,0,5,5"}, PIXELS, "big.png")
    assert status == 413 and "big.png: 50 x 40 pixels" in r["error"]


@pytest.mark.parametrize(("method", "path", "status", "allow"), [
    ("GET", "/nope", 404, None),
    ("POST", "/segment/x", 404, None),
    ("GET", "/segment", 405, "POST"),
    ("POST", "/health", 405, "GET"),
    ("PUT", "/", 405, "GET"),
    ("DELETE", "/segment", 405, "POST"),
])
def test_unknown_paths_and_wrong_methods(url, method, path, status, allow):
    got, headers, r = request(url, path, method, b"{}" if method != "GET" else None)
    assert got == status and r["error"]
    assert headers.get("Allow") == allow


class SlowSegmenter:
    """The real segmenter, after ``delay`` seconds (or raising ``error``); ``started`` is set on entry."""

    def __init__(self, seg: Segmenter, delay: float = 0.0, error: Exception | None = None):
        self.seg, self.delay, self.error, self.started = seg, delay, error, threading.Event()

    def __getattr__(self, name):
        return getattr(self.seg, name)

    def predict(self, *args, **kwargs):
        self.started.set()
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.seg.predict(*args, **kwargs)


def test_timeouts_are_504_then_503_while_busy(seg):
    slow = SlowSegmenter(seg, delay=1.5)
    server = start(SegmentService(slow, timeout_s=0.3))
    try:
        first: list = []
        thread = threading.Thread(target=lambda: first.append(post(server.url, {"boxes": "0,0,5,5"}, PIXELS)))
        thread.start()
        assert slow.started.wait(10)
        status, _, r = post(server.url, {"boxes": "0,0,5,5"}, PIXELS)  # queued behind the running one
        assert status == 503 and "busy" in r["error"]
        thread.join(10)
        assert first[0][0] == 504 and "longer than 0.3 s" in first[0][2]["error"]
    finally:
        server.shutdown()
        server.server_close()
        server.service.close()


def test_a_bug_is_a_500_and_the_server_keeps_serving(seg):
    server = start(SegmentService(SlowSegmenter(seg, error=KeyError("oops")), timeout_s=10))
    try:
        status, _, r = post(server.url, {"boxes": "0,0,5,5"}, PIXELS)
        assert status == 500 and "internal error: KeyError" in r["error"]
        assert request(server.url, "/health")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
        server.service.close()


def test_parse_multipart_keeps_binary_content():
    data = bytes(range(256)) * 3 + b"\r\n--not the boundary\r\n"
    body, ctype = form({"vocabulary": "a, b"}, data, "f.bin")
    fields = parse_multipart(body, ctype)
    assert fields == {"vocabulary": (None, b"a, b"), "image": ("f.bin", data)}


def test_categories_for():
    from omniseg.data.records import Category

    cats = categories_for([Category(3, "a"), Category(7, "b")], ["b", "c", "a", "d", "c"])
    assert [(c.id, c.name) for c in cats] == [(3, "a"), (7, "b"), (8, "c"), (9, "d")]


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")


@pytest.mark.parametrize(("argv", "says"), [
    (["--port", "70000"], "must be a port number in 0..65535"),
    (["--max-upload-mb", "0"], "must be a number > 0"),
    (["--timeout-s", "nan"], "must be a number > 0"),
])
def test_usage_errors(run, argv, says, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["serve", "--checkpoint", str(run), *argv])
    assert info.value.code == 2 and says in capsys.readouterr().err


def test_port_in_use_is_one_line(run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli_main(["serve", "--checkpoint", str(run), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"omniseg serve: error: --host 127.0.0.1 --port {port}: cannot listen there: ")
    assert len(err.splitlines()) == 1


def as_foreground_job() -> None:
    """``preexec_fn``: SIGINT neither ignored nor blocked, as in a terminal's foreground job. Both states pass to
    a child through exec: a suite started as a non-interactive shell's background job (``make test &``) ignores
    SIGINT in every process, and the server then sat in ``select`` with the Ctrl-C pending."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_serve_command_runs_until_ctrl_c(run):
    # PYTHONFAULTHANDLER: if the server does not stop, SIGABRT makes it print every thread's stack
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "omniseg.cli", "serve", "--checkpoint", str(run), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=as_foreground_job)
    try:
        line = proc.stdout.readline()
        assert "serving the box_to_mask model" in line, proc.stderr.read() if proc.poll() is not None else line
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        assert request(url, "/health")[2]["recipe"] == "box_to_mask"
        proc.send_signal(signal.SIGINT)
        try:  # communicate drains both pipes: a child blocked on a full stderr pipe cannot stall the wait
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            here = f"(this process: SIGINT handler {signal.getsignal(signal.SIGINT)}, blocked " \
                   f"{signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])})"
            pytest.fail(f"serve did not stop within 120 s of Ctrl-C {here}; its threads:\n" + proc.communicate()[1][-6000:])
        assert proc.returncode == 130 and "omniseg serve: interrupted" in err, (proc.returncode, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
