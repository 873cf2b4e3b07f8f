"""HTTP server around a :class:`~omniseg.api.Segmenter` (standard library only).

Routes:
    ``GET /``            the web page (:mod:`omniseg.serve.page`).
    ``GET /health``      JSON: ``recipe``, training ``classes``, ``prompt`` ("boxes" for models that
                         segment given boxes, else "vocabulary"), ``max_upload_mb``, ``timeout_s``.
    ``GET /sample.png``  a synthetic-world image to try the model on; ``GET /sample.json`` its
                         objects as ``{"boxes": "x0,y0,x1,y1; ...", "vocabulary": "a, b"}``.
    ``POST /segment``    ``multipart/form-data`` with the fields ``image`` (a file, required),
                         ``vocabulary`` ("red ring, blue star"; empty: the model's classes), ``boxes``
                         ("x0,y0,x1,y1; ..." as ``omniseg segment --boxes``) and ``min_score`` (0..1,
                         default 0.3). Answers JSON ``{"instances": [{"text", "score", "box",
                         "category_id", "area", "mask", "color"}], "overlay_png": <base64 PNG>, "coco": <COCO
                         results list, image_id 1>, "categories": [{"id", "name"}], "width", "height"}``.
                         Masks are COCO compressed RLE; training class names keep their ids, other
                         names get the next free ids (listed in ``categories``).

Every error is JSON ``{"error": "<message>"}`` with its status: 400 (bad image, vocabulary, boxes,
min_score or form), 404 (unknown path), 405 (wrong method), 408 (request not received in time), 411
(neither Content-Length nor a chunked body), 413 (body or image too large), 415 (not ``multipart/form-data``), 503 (the model
stayed busy with earlier requests for the whole time bound), 504 (the prediction itself ran past the
time bound; it finishes in the background), 500 (a bug). One prediction runs at a time.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import re
import socket
import sys
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from omniseg.api import Segmenter
from omniseg.data.records import Category, Instance
from omniseg.errors import UserError

#: score below which predictions are hidden when the form does not say
DEFAULT_MIN_SCORE = 0.3
#: largest decoded image accepted (pixels): a small compressed file can decode to gigabytes
MAX_PIXELS = 50_000_000
#: an unwanted request body up to this size is read and dropped before answering, so that the
#: client sees the answer rather than a reset connection
DRAIN_LIMIT = 64 << 20
#: path -> the one method it answers
ROUTES = {"/": "GET", "/health": "GET", "/sample.png": "GET", "/sample.json": "GET", "/segment": "POST"}


class HTTPError(Exception):
    """An answer other than 200: ``status`` and the one-line message shown to the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """``multipart/form-data`` body -> ``{field name: (file name or None, content)}``.

    Raises:
        HTTPError: 415 for another content type, 400 for a body that is not well-formed.
    """
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPError(415, f"expected Content-Type multipart/form-data (fields image, vocabulary, boxes, "
                             f"min_score), got {content_type or 'none'!r}")
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise HTTPError(400, "multipart/form-data without a boundary")
    parts = body.split(b"--" + m.group(1).encode("latin-1"))
    if len(parts) < 2 or not parts[-1].startswith(b"--"):
        raise HTTPError(400, "multipart body is cut short (no closing boundary)")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in parts[1:-1]:
        head, sep, content = part.partition(b"\r\n\r\n")
        disposition = re.search(rb"(?im)^content-disposition:(.*)$", head)
        name = re.search(r'(?:^|;)\s*name="([^"]*)"', disposition.group(1).decode("utf-8", "replace")) if disposition else None
        if not sep or name is None:
            raise HTTPError(400, "multipart part without a Content-Disposition name")
        filename = re.search(r';\s*filename="([^"]*)"', disposition.group(1).decode("utf-8", "replace"))
        fields[name.group(1)] = (filename.group(1) if filename else None, content.removesuffix(b"\r\n"))
    return fields


def form_text(fields: dict[str, tuple[str | None, bytes]], name: str) -> str:
    """The stripped text of form field ``name`` ("" when absent)."""
    try:
        return fields.get(name, (None, b""))[1].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise HTTPError(400, f"form field {name!r} is not UTF-8 text") from None


def decode_image(data: bytes, filename: str) -> np.ndarray:
    """Uploaded bytes -> H x W x 3 uint8 RGB, with the conventions of :func:`omniseg.data.images.load_image`.

    Raises:
        HTTPError: 400 for an empty, non-image or corrupt upload, 413 for more than :data:`MAX_PIXELS`.
    """
    from omniseg.data.images import ImageReadError, image_size, load_image

    if not data:
        raise HTTPError(400, "no image in the request (form field 'image' is missing or empty)")
    with tempfile.TemporaryDirectory(prefix="omniseg-serve-") as tmp:
        path = os.path.join(tmp, "upload")
        with open(path, "wb") as f:
            f.write(data)
        try:
            width, height = image_size(path)
            if width * height > MAX_PIXELS:
                raise HTTPError(413, f"{filename}: {width} x {height} pixels is more than this server "
                                     f"decodes ({MAX_PIXELS / 1e6:g} megapixels)")
            return load_image(path)
        except ImageReadError as e:
            raise HTTPError(400, str(e).replace(path, filename)) from None


def categories_for(things: list[Category], names: list[str]) -> list[Category]:
    """The training classes with their ids, then each other name of ``names`` with the next free id."""
    cats, known = list(things), {c.name for c in things}
    next_id = max((c.id for c in things), default=0) + 1
    for name in names:
        if name not in known:
            cats.append(Category(id=next_id, name=name))
            known.add(name)
            next_id += 1
    return cats


def png_base64(image: Any) -> str:
    """A PIL image as base64 PNG text."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@functools.lru_cache(maxsize=1)
def sample() -> tuple[bytes, dict[str, str]]:
    """A synthetic-world image (PNG bytes) and its objects' boxes and names, as the form takes them."""
    from PIL import Image

    from omniseg.data.synth.world import SynthConfig, generate_image

    image, record = generate_image(SynthConfig(seed=0, num_images=4, image_size=256), 3)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    things = [i for i in record.instances if i.box is not None]
    return buf.getvalue(), {
        "boxes": "; ".join(",".join(f"{v:.0f}" for v in i.box) for i in things),
        "vocabulary": ", ".join(i.text for i in things),
    }


class SegmentService:
    """One loaded model answering form requests: predictions one at a time, each bounded in time.

    Args:
        segmenter: the model.
        timeout_s: the longest a request waits for its prediction (queueing included).
    """

    def __init__(self, segmenter: Segmenter, timeout_s: float = 60.0):
        self.segmenter, self.timeout_s = segmenter, timeout_s
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omniseg-predict")

    def health(self) -> dict[str, Any]:
        recipe = self.segmenter.recipe  # models that segment given boxes only are asked with boxes
        return {"recipe": recipe.name, "classes": [c.name for c in self.segmenter.info.things()],
                "prompt": "boxes" if recipe.boxes == "required" else "vocabulary", "timeout_s": self.timeout_s}

    def predict(self, image: np.ndarray, **kwargs: Any) -> list[Instance]:
        """``Segmenter.predict`` on the worker thread; its argument errors are 400s."""
        future = self._worker.submit(self.segmenter.predict, image, **kwargs)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            if future.cancel():  # never started: earlier requests held the model all along
                raise HTTPError(503, f"the model stayed busy with earlier requests for {self.timeout_s:g} s; "
                                     "try again later") from None
            raise HTTPError(504, f"the prediction took longer than {self.timeout_s:g} s (--timeout-s); "
                                 "try a smaller image") from None
        except (UserError, ValueError) as e:  # BoxError, a name outside a closed vocabulary, no boxes, ...
            raise HTTPError(400, str(e)) from None

    def segment(self, fields: dict[str, tuple[str | None, bytes]]) -> dict[str, Any]:
        """A parsed ``POST /segment`` form -> the answer's JSON (module docstring)."""
        import argparse

        from omniseg.commands.common import unit_float
        from omniseg.commands.segment import parse_boxes, parse_vocabulary
        from omniseg.data.formats.coco import to_coco_results
        from omniseg.data.records import ImageRecord, RecordSet
        from omniseg.ops.rle import rle_area
        from omniseg.viz.draw import color_for, draw_instances

        texts = {k: form_text(fields, k) for k in ("vocabulary", "boxes", "min_score")}
        try:
            vocabulary = parse_vocabulary(texts["vocabulary"]) if texts["vocabulary"] else None
            boxes = parse_boxes(texts["boxes"]) if texts["boxes"] else None
            min_score = unit_float(texts["min_score"]) if texts["min_score"] else DEFAULT_MIN_SCORE
        except argparse.ArgumentTypeError as e:
            raise HTTPError(400, str(e)) from None
        filename, data = fields.get("image", (None, b""))
        filename = filename or "image"
        image = decode_image(data, filename)
        found = self.predict(image, vocabulary=vocabulary, boxes=boxes, min_score=min_score)
        cats = categories_for(self.segmenter.info.things(), (vocabulary or []) + [i.text for i in found])
        ids = {c.name: c.id for c in cats}
        found = [replace(i, category_id=ids[i.text]) for i in found]
        height, width = image.shape[:2]
        coco = to_coco_results(RecordSet([ImageRecord(1, filename, width, height, found)], cats))
        return {
            "instances": [{"text": i.text, "score": i.score, "box": list(i.box) if i.box is not None else None,
                           "category_id": i.category_id, "area": rle_area(i.mask) if i.mask is not None else None,
                           "mask": i.mask, "color": "#{:02x}{:02x}{:02x}".format(*color_for(i.text))} for i in found],
            "overlay_png": png_base64(draw_instances(image, found)),
            "coco": coco,
            "categories": [{"id": c.id, "name": c.name} for c in cats if c.name in {i.text for i in found}],
            "width": width,
            "height": height,
        }

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


class Handler(BaseHTTPRequestHandler):
    """Routes a request to :class:`SegmentService` (see the module docstring)."""

    server: SegmentServer
    server_version = "omniseg"
    timeout = 30  # seconds a client may stall while sending its request
    _unread = 0  # bytes of the request body not read yet

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": content_type, "Content-Length": str(len(body)),
                           "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                           **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        if 0 < self._unread <= DRAIN_LIMIT:  # read what the client sends so it sees this answer
            while self._unread > 0 and (chunk := self.rfile.read(min(self._unread, 1 << 20))):
                self._unread -= len(chunk)
        self.close_connection = True
        self._json(status, {"error": message}, headers)

    def _route(self) -> None:
        path = urlsplit(self.path).path
        method = self.command
        try:
            self._unread = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._unread = 0
        try:
            if path not in ROUTES:
                raise HTTPError(404, f"no page {path!r} here; the web page is at /, the API at POST /segment")
            if ROUTES[path] != method:
                self._error(405, f"{method} {path}: use {ROUTES[path]}", {"Allow": ROUTES[path]})
                return
            if path == "/":
                from omniseg.serve.page import PAGE

                self._send(200, PAGE.encode(), "text/html; charset=utf-8", {"Content-Security-Policy": (
                    "default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; "
                    "script-src 'unsafe-inline'")})
            elif path == "/health":
                self._json(200, {**self.server.service.health(), "max_upload_mb": self.server.max_upload_bytes / 2**20})
            elif path == "/sample.png":
                self._send(200, sample()[0], "image/png")
            elif path == "/sample.json":
                self._json(200, sample()[1])
            else:
                self._json(200, self.server.service.segment(self._read_form()))
        except HTTPError as e:
            self._error(e.status, str(e))
        except ConnectionError:  # the client left
            self.close_connection = True
        except Exception as e:  # a bug: answer, log, keep serving
            self.log_error("internal error on %s %s:\n%s", method, path, traceback.format_exc())
            self._error(500, f"internal error: {type(e).__name__}: {e} (a bug; see the server's log)")

    def _too_large(self, size: str) -> HTTPError:
        limit = self.server.max_upload_bytes
        return HTTPError(413, f"the request is {size} MB; this server accepts up to {limit / 2**20:g} MB "
                              "(--max-upload-mb)")

    def _read_chunked(self) -> bytes:
        """A ``Transfer-Encoding: chunked`` body; one over the limit is read on (up to :data:`DRAIN_LIMIT`)
        and dropped, then refused."""
        limit, body, total = self.server.max_upload_bytes, bytearray(), 0
        while total <= DRAIN_LIMIT:
            try:
                size = int(self.rfile.readline(66).split(b";")[0], 16)
            except ValueError:
                raise HTTPError(400, "malformed chunked request body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                break
            total += size
            chunk = self.rfile.read(size)
            self.rfile.readline(3)
            if total <= limit:
                body += chunk
        if total > limit:
            raise self._too_large(f"more than {limit / 2**20:g}" if total > DRAIN_LIMIT else f"{total / 2**20:.1f}")
        return bytes(body)

    def _read_form(self) -> dict[str, tuple[str | None, bytes]]:
        content_type = self.headers.get("Content-Type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            parse_multipart(b"", content_type)  # the 415 with its message
        try:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return parse_multipart(self._read_chunked(), content_type)
            if "Content-Length" not in self.headers:
                raise HTTPError(411, "send a Content-Length or a chunked body")
            if self._unread > self.server.max_upload_bytes:
                raise self._too_large(f"{self._unread / 2**20:.1f}")
            body = self.rfile.read(self._unread)
        except TimeoutError:
            self._unread = 0
            raise HTTPError(408, f"the request body did not arrive within {self.timeout} s") from None
        self._unread -= len(body)
        if self._unread:
            raise HTTPError(400, "the request body ended before its Content-Length")
        return parse_multipart(body, content_type)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _route


class SegmentServer(ThreadingHTTPServer):
    """The HTTP server of ``omniseg serve``: one thread per request, one prediction at a time.

    Args:
        service: the model behind ``POST /segment``.
        host, port: where to listen (port 0: any free port, see :attr:`url`).
        max_upload_bytes: the largest request body accepted (413 above).
        quiet: do not log requests to stderr.
    """

    daemon_threads = True

    def __init__(self, service: SegmentService, host: str = "127.0.0.1", port: int = 8000,
                 max_upload_bytes: int = 20 << 20, quiet: bool = False):
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)
        self.service, self.max_upload_bytes, self.quiet = service, max_upload_bytes, quiet

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in str(host) else host}:{port}/"
