"""``omniseg serve --checkpoint RUN [--host 127.0.0.1] [--port 8000]``: a trained model over local HTTP.

Loads the model once, prints the URL and serves until Ctrl-C: a web page at ``/`` (choose or drop
an image, type a vocabulary or boxes, see the masks and scores, download COCO JSON) and the API
``POST /segment`` (``multipart/form-data``: ``image``, ``vocabulary``, ``boxes``, ``min_score``;
see :mod:`omniseg.serve.server` for the answer and its error statuses). Requests are bounded in
size (``--max-upload-mb``) and time (``--timeout-s``); one prediction runs at a time.

    curl -F image=@photo.jpg -F vocabulary="red ring, blue star" http://127.0.0.1:8000/segment
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from omniseg.commands.common import positive_float
from omniseg.commands.segment import device_name
from omniseg.errors import UserError


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0..65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 0..65535, got {value}")
    return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder, its checkpoints/ folder, or a step_N folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only). WARNING: 0.0.0.0 lets "
                   "anyone on your network use the model, without any login")
    p.add_argument("--port", type=port_number, default=8000, help="TCP port (0: any free port)")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:N, ...")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of the checkpoint")
    p.add_argument("--max-upload-mb", type=positive_float, default=20.0,
                   help="largest request accepted, in MB (larger: HTTP 413)")
    p.add_argument("--timeout-s", type=positive_float, default=60.0,
                   help="longest a request waits for its prediction, in seconds (longer: HTTP 503 / 504)")


def main(args: argparse.Namespace) -> int:
    from omniseg.api import Segmenter, resolve_device
    from omniseg.serve.server import SegmentServer, SegmentService

    device = resolve_device(args.device, key="--device")  # before the model is loaded
    seg = Segmenter.from_checkpoint(args.checkpoint, device=str(device), use_ema=args.ema)
    service = SegmentService(seg, timeout_s=args.timeout_s)
    try:
        server = SegmentServer(service, args.host, args.port, max_upload_bytes=int(args.max_upload_mb * 2**20))
    except OSError as e:
        service.close()
        raise UserError(f"--host {args.host} --port {args.port}: cannot listen there: {e.strerror or e}") from None
    try:
        print(f"serving the {seg.recipe.name} model of {args.checkpoint} at {server.url} (Ctrl-C to stop)", flush=True)
        if not is_loopback(args.host):
            print(f"warning: listening on {args.host}: anyone who can reach this machine can use the model",
                  file=sys.stderr, flush=True)
        server.serve_forever()
    finally:
        server.server_close()
        service.close()
    return 0
