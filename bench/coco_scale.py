"""Benchmark: reading a large boxes-only COCO instances file (time and peak memory per reader).

Makes the file itself (seeded; default 100K images x 10 boxes = 1M boxes, 80 categories;
``--boxes 15000000`` for the Open-Images-scale case, written streaming so the generator never
holds the dataset), then runs each reader in its own subprocess and measures its wall time and
peak RSS (``os.wait4`` rusage ``ru_maxrss`` of that child alone):

* ``pycocotools``: ``COCO(path)`` (json.load + createIndex; no validation);
* ``cli_stats``: ``omniseg data stats PATH --json`` (the whole command, imports included);
* ``load_dataset``: ``omniseg.data.load.load_dataset(path)`` (validated records; call time inside).
  Box-only instances come back deferred (columns until a record's ``instances`` is first read,
  see :class:`omniseg.data.records.DeferredInstances`); the check counts them without making them;
* ``load_dataset_all``: the same, then every record's ``instances`` read (all 15M ``Instance``
  objects made and kept, as a pass over the whole dataset does); 'call' covers both.

Readers are interleaved run by run (A, B, C, A, B, C, ...) and medians reported, so load from
other processes hits all of them alike; ratios are to pycocotools.

    .venv/bin/python bench/coco_scale.py                         # 1M boxes, 3 runs each
    .venv/bin/python bench/coco_scale.py --boxes 15000000 --runs 1 --readers cli_stats load_dataset load_dataset_all

Prints a JSON report (machine info, per-reader runs / medians, ratios); ``--out FILE`` writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

#: child programs; each prints one JSON line {"seconds": ..., "check": ...} (call time inside)
READERS = {
    "pycocotools": (
        "import json, sys, time\n"
        "from pycocotools.coco import COCO\n"
        "t = time.perf_counter(); c = COCO(sys.argv[1]); dt = time.perf_counter() - t\n"
        "print(json.dumps({'seconds': dt, 'check': [len(c.imgs), len(c.anns), len(c.cats)]}))\n"
    ),
    "load_dataset": (
        "import json, sys, time\n"
        "from omniseg.data.load import load_dataset\n"
        "from omniseg.data.records import instance_count\n"
        "t = time.perf_counter(); rs = load_dataset(sys.argv[1]); dt = time.perf_counter() - t\n"
        "print(json.dumps({'seconds': dt, 'check': [len(rs), sum(map(instance_count, rs)), "
        "len(rs.categories)]}))\n"
    ),
    "load_dataset_all": (
        "import json, sys, time\n"
        "from omniseg.data.load import load_dataset\n"
        "t = time.perf_counter(); rs = load_dataset(sys.argv[1]); n = sum(len(r.instances) for r in rs)\n"
        "dt = time.perf_counter() - t\n"
        "print(json.dumps({'seconds': dt, 'check': [len(rs), n, len(rs.categories)]}))\n"
    ),
}


def write_coco(path: Path, n_boxes: int, per_image: int, n_cats: int, seed: int, size: int = 640) -> None:
    """A valid boxes-only COCO instances file, written in chunks (``n_boxes / per_image`` images;
    key order as in the official files: images, annotations, categories)."""
    rng = np.random.default_rng(seed)
    n_images = -(-n_boxes // per_image)
    chunk = 200_000
    with open(path, "w", encoding="utf-8") as f:
        # key order of the official COCO files: categories come last
        f.write('{"info": {"description": "coco_scale bench"}, "licenses": [], "images": [')
        for s in range(0, n_images, chunk):
            ids = range(s + 1, min(s + chunk, n_images) + 1)
            f.write((", " if s else "") + ", ".join(
                f'{{"id": {i}, "file_name": "{i:012d}.jpg", "width": {size}, "height": {size}}}' for i in ids))
        f.write('], "annotations": [')
        for s in range(0, n_boxes, chunk):
            n = min(chunk, n_boxes - s)
            wh = np.round(rng.uniform(4, size * 0.5, (n, 2)), 2)
            xy = np.round(rng.uniform(0, 1, (n, 2)) * (size - wh), 2)
            cat = rng.integers(1, n_cats + 1, n)
            rows = np.concatenate([xy, wh], 1).tolist()
            f.write((", " if s else "") + ", ".join(
                f'{{"id": {s + k + 1}, "image_id": {(s + k) // per_image + 1}, "category_id": {c}, '
                f'"bbox": [{b[0]}, {b[1]}, {b[2]}, {b[3]}], "area": {round(b[2] * b[3], 4)}, "iscrowd": 0}}'
                for k, (b, c) in enumerate(zip(rows, cat.tolist()))))
        f.write('], "categories": [')
        f.write(", ".join(json.dumps({"id": c, "name": f"class{c}", "supercategory": "thing"})
                          for c in range(1, n_cats + 1)))
        f.write("]}")


def measure(name: str, path: Path, env: dict) -> dict:
    """One run of reader ``name``: wall time, call time (where the child reports it), peak RSS."""
    py = sys.executable
    if name == "cli_stats":
        argv = [py, "-c", "import sys; from omniseg.cli import main; sys.exit(main())",
                "data", "stats", str(path), "--json"]
    else:
        argv = [py, "-c", READERS[name], str(path)]
    # Popen + wait4 on the pid gives this child's own rusage (communicate() must not reap it first)
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    out, err = p.stdout.read(), p.stderr.read()  # type: ignore[union-attr]
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"{name} failed ({p.returncode}): {err.decode()[-2000:]}")
    text = out.decode()
    res = {"wall_s": round(wall, 3), "maxrss_mib": round(ru.ru_maxrss / 1024, 1)}
    if name == "cli_stats":
        stats = json.loads(text)
        res["check"] = [stats["images"], stats["instances"], stats["categories"]]
    else:
        child = json.loads(text.strip().splitlines()[-1])
        res["call_s"], res["check"] = round(child["seconds"], 3), child["check"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--boxes", type=int, default=1_000_000)
    ap.add_argument("--per-image", type=int, default=10)
    ap.add_argument("--categories", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--readers", nargs="+", default=["pycocotools", "cli_stats", "load_dataset", "load_dataset_all"],
                    choices=["pycocotools", "cli_stats", "load_dataset", "load_dataset_all"])
    ap.add_argument("--file", help="use / keep the generated file here (made if missing)")
    ap.add_argument("--out", help="also write the JSON report to this file")
    args = ap.parse_args()

    tmp = None
    if args.file:
        path = Path(args.file)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="coco_scale_")
        path = Path(tmp.name) / f"instances_{args.boxes}.json"
    if not path.exists():
        t = time.perf_counter()
        write_coco(path, args.boxes, args.per_image, args.categories, args.seed)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s",
              file=sys.stderr)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    load_avg = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {r: [] for r in args.readers}
    for i in range(args.runs):
        for r in args.readers:
            runs[r].append(measure(r, path, env))
            print(f"run {i + 1}/{args.runs} {r}: {runs[r][-1]}", file=sys.stderr)
    med = {r: {k: statistics.median(x[k] for x in v) for k in ("wall_s", "maxrss_mib", "call_s") if k in v[0]}
           for r, v in runs.items()}
    report = {
        "bench": "coco_scale",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "processor": platform.processor()},
        "load_average_1min": round(load_avg, 2),
        "file": {"boxes": args.boxes, "images": -(-args.boxes // args.per_image),
                 "categories": args.categories, "mib": round(path.stat().st_size / 2**20, 1)},
        "runs": runs,
        "median": med,
    }
    if "pycocotools" in med:
        base = med["pycocotools"]
        report["ratio_to_pycocotools"] = {
            r: {"wall": round(m["wall_s"] / base["wall_s"], 3), "maxrss": round(m["maxrss_mib"] / base["maxrss_mib"], 3),
                **({"call": round(m["call_s"] / base["call_s"], 3)} if "call_s" in m else {})}
            for r, m in med.items() if r != "pycocotools"
        }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
