"""Why the ALP rows of the claims table miss (issue 12): what a finished run's detections get wrong, and how noisy
the ALPs it trained on are (replaces the issue 5 investigation's top-10 naming check).

    python bench/alp_errors.py RUN [RUN ...] [--alps] [--out FILE [--add]]

RUN: a finished run folder (``config.yaml`` + ``val_predictions.json``, as ``bench/claims.py`` leaves them); the
validation images are rebuilt from the config. Read off the saved predictions, no model is loaded:

* ``recall``: by group (base / novel), the share of the validation objects with some detection at IoU >= 0.5 of any
  label (``any_label``) and of the object's class (``own_class``);
* ``base_labelled``: the K highest-scoring detections labelled with a BASE class (K = ``--top``), by what the box
  lies on (the object of highest IoU): ``right`` (IoU >= 0.5, its class), ``novel_object`` / ``other_base_object``
  (IoU >= 0.5, another class), ``poor_box`` (0.1 <= IoU < 0.5), ``background`` (IoU < 0.1). A base AP that falls
  while base recall holds is a ranking problem: other things named with base classes;
* ``novel_named``: for each novel object, the label of the highest-scoring detection on it (IoU >= 0.5): ``right``,
  a ``base`` class or another ``novel`` one (``none``: no detection on it); on two-word "colour shape" names (the
  synthetic world) a wrong label is also split by whether it keeps the colour or the shape word.

``--alps`` adds, for a run trained on curated ALPs (``alp.path``), how those ALPs relate to the true objects of its
training world (``alp_quality`` of bench/alp_experiments.py: best-IoU object, centre inside it, phrase = class name,
nearest class name through the text encoder). Prints one JSON object (``--out``: also written there; with ``--add``
the runs already in that file stay, except those of the same run folder name, which are replaced: run folders do not
survive a move to another machine, their diagnosis does).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPS = (100, 300, 1000)


def _iou(boxes_a, boxes_b):
    """len(a) x len(b) IoU matrix (a list of lists) of two lists of XYXY boxes."""
    import torch

    from omniseg.ops.boxes import box_iou

    if not boxes_a or not boxes_b:
        return [[0.0] * len(boxes_b) for _ in boxes_a]
    return box_iou(torch.tensor(boxes_a, dtype=torch.float64), torch.tensor(boxes_b, dtype=torch.float64)).tolist()


def recall(objects: dict, detections: dict, base: set) -> dict:
    """``objects``: image id -> [(xyxy, category_id)]; ``detections``: image id -> [(xyxy, score, category_id)]."""
    out = {g: Counter() for g in ("base", "novel")}
    for image_id, objs in objects.items():
        dets = detections.get(image_id, [])
        iou = _iou([o[0] for o in objs], [d[0] for d in dets])
        for (_, cat), row in zip(objs, iou):
            c = out["base" if cat in base else "novel"]
            c["objects"] += 1
            hits = [d for d, v in zip(dets, row) if v >= 0.5]
            c["any_label"] += bool(hits)
            c["own_class"] += any(d[2] == cat for d in hits)
    return {g: {"objects": c["objects"], **{k: round(c[k] / max(c["objects"], 1), 4) for k in ("any_label", "own_class")}}
            for g, c in out.items()}


def base_labelled(objects: dict, detections: dict, base: set, tops=TOPS) -> dict:
    """The module docstring's ``base_labelled`` shares for each K of ``tops``."""
    kinds = []
    for image_id, dets in detections.items():
        objs = objects.get(image_id, [])
        iou_od = _iou([o[0] for o in objs], [d[0] for d in dets])  # objects x detections
        for col, (_, score, cat) in enumerate(dets):
            if cat not in base:
                continue
            iou, j = max(((row[col], i) for i, row in enumerate(iou_od)), default=(0.0, -1))
            if iou >= 0.5:
                k = "right" if objs[j][1] == cat else "novel_object" if objs[j][1] not in base else "other_base_object"
            else:
                k = "poor_box" if iou >= 0.1 else "background"
            kinds.append((-score, k))
    kinds.sort(key=lambda t: t[0])
    out = {}
    for top in tops:
        c = Counter(k for _, k in kinds[:top])
        n = max(sum(c.values()), 1)
        out[str(top)] = {"detections": sum(c.values()), **{k: round(c[k] / n, 4) for k in (
            "right", "novel_object", "other_base_object", "poor_box", "background")}}
    return out


def novel_named(objects: dict, detections: dict, base: set, names: dict) -> dict:
    """The module docstring's ``novel_named`` shares (``names``: category id -> class name)."""
    c = Counter()
    for image_id, objs in objects.items():
        dets = detections.get(image_id, [])
        iou = _iou([o[0] for o in objs], [d[0] for d in dets])
        for (_, cat), row in zip(objs, iou):
            if cat in base:
                continue
            on = [d for d, v in zip(dets, row) if v >= 0.5]
            c["objects"] += 1
            if not on:
                c["none"] += 1
                continue
            label = max(on, key=lambda d: d[1])[2]
            if label == cat:
                c["right"] += 1
                continue
            group = "base" if label in base else "novel"
            c[group] += 1
            t, p = names[cat].split(), names[label].split()
            if len(t) == 2 and len(p) == 2:
                c[f"{group}_same_colour" if t[0] == p[0] else f"{group}_same_shape" if t[1] == p[1] else
                  f"{group}_neither"] += 1
    n = max(c.pop("objects", 0), 1)
    return {"objects": n, **{k: round(v / n, 4) for k, v in sorted(c.items())}}


def _objects(rs) -> dict:
    """image id -> [(xyxy, category_id)] of the non-crowd thing instances with a box or a mask."""
    from omniseg.ops.rle import rle_to_box

    things = {c.id for c in rs.categories if c.isthing}
    out = {}
    for rec in rs.records:
        out[rec.image_id] = [(list(i.box) if i.box is not None else list(rle_to_box(i.mask)), i.category_id)
                             for i in rec.instances if i.category_id in things and not i.is_crowd
                             and (i.box is not None or i.mask is not None)]
    return out


def run_errors(run: str, with_alps: bool, tops=TOPS) -> dict:
    """All figures of one run folder."""
    from omniseg.errors import UserError
    from omniseg.recipes.data import named_split, open_val
    from omniseg.recipes.table import load_experiment

    folder = Path(run)
    for f in ("config.yaml", "val_predictions.json"):
        if not (folder / f).is_file():
            raise UserError(f"{folder / f}: not found (a finished run folder has config.yaml and val_predictions.json)")
    _, cfg = load_experiment(folder / "config.yaml")
    gt, _ = open_val(cfg.data, False)
    split = named_split(cfg.data, gt.categories)
    if split is None:
        raise UserError(f"{folder / 'config.yaml'}: data.split is empty (base / novel groups needed)")
    base, names = set(split.base_ids), {c.id: c.name for c in gt.categories if c.isthing}
    try:
        preds = json.loads((folder / "val_predictions.json").read_text())
        detections: dict = {}
        for d in preds:
            x, y, w, h = d["bbox"]
            detections.setdefault(d["image_id"], []).append(([x, y, x + w, y + h], float(d["score"]),
                                                             d["category_id"]))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{folder / 'val_predictions.json'}: not a COCO results list ({e})") from None
    objects = _objects(gt)
    out = {"run": str(folder), "recall": recall(objects, detections, base),
           "base_labelled": base_labelled(objects, detections, base, tops),
           "novel_named": novel_named(objects, detections, base, names)}
    if with_alps and getattr(getattr(cfg, "alp", None), "path", ""):
        from alp_experiments import alp_quality

        out["alps"] = {"world": cfg.data.train, "path": cfg.alp.path,
                       **alp_quality(Path(cfg.data.train), Path(cfg.alp.path))}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--alps", action="store_true", help="also measure the curated ALPs the run trained on")
    ap.add_argument("--top", type=int, nargs="+", default=list(TOPS))
    ap.add_argument("--out", help="also write the JSON here (atomically)")
    ap.add_argument("--add", action="store_true", help="keep the runs --out already holds (same run name: replaced)")
    args = ap.parse_args(argv)
    from omniseg.errors import UserError

    if args.add and not args.out:
        raise SystemExit("alp_errors: --add needs --out (the file to add to)")
    commands = ["python bench/alp_errors.py " + " ".join(argv or sys.argv[1:])]
    try:
        runs = [run_errors(r, args.alps, args.top) for r in args.runs]
        if args.add and Path(args.out).is_file():
            try:
                old = json.loads(Path(args.out).read_text(encoding="utf-8"))
                kept, commands = old["runs"], old["commands"] + commands
                names = {Path(r["run"]).name for r in runs}
                runs += [r for r in kept if Path(r["run"]).name not in names]
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"alp_errors: {args.out}: not an alp_errors result ({e})") from None
    except (UserError, OSError) as e:  # a missing run / config / prediction file: one line, exit 1
        raise SystemExit(f"alp_errors: {e}") from None
    res = {"benchmark": "alp_errors", "commands": commands, "runs": sorted(runs, key=lambda r: Path(r["run"]).name)}
    text = json.dumps(res, indent=1)
    if args.out:
        from omniseg.utils.atomic import atomic_open

        with atomic_open(args.out) as f:
            f.write(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
