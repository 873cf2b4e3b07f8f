"""Where box-to-mask labels lose IoU: the mean IoU of labelled masks (``omniseg autolabel`` output) with the true
masks, by the box's long side and by category, next to the same labels clipped to their box (the labeler pastes
its expanded crop back, so a label can spill outside the box) and the filled box's IoU (mask area / box area), and
optionally a picture of random boxes (image | true mask | label) to look at.

    python bench/mal_probe.py TRUTH.json LABELS.json [--images DIR --png out.png --min-side 40 --tiles 16]
                              [--crf N] [--out record.json]

``--crf N`` (needs ``--images``) asks what MAL's CRF pseudo-label can teach: for N random scored boxes, each cropped
as the labeler crops it at test time (128 px, θ_test 0.6), the mean-field refinement of its CRF loss
(omniseg.ops.crf_loss.crf_refine, Eq. 3-5, Algorithm 1, inside the box) is run on a soft version of three masks --
the filled box, the label and the true mask (probability p on the mask, 1 - p off it, 0 outside the box; p in
``CRF_PS``) -- at the paper's ω = 2 and ζ in ``CRF_ZETAS`` (0.5 is the paper's), and each is scored by its mIoU with
the true mask in the crop before and after. Training on Eq. 5 pulls the labeler towards the refined label, so
what the refinement adds to a wrong shape bounds the shape MIL + CRF training can find.

``--out`` writes the breakdown with the command (bench/report_mal.py renders bench/results/mal/probe/*.json).

TRUTH and LABELS are COCO instance files (``.json`` or ``.json.gz``) with the same annotation ids (autolabel
keeps them); true masks may be RLE or polygons, labels RLE; annotations without a mask on either side are not
scored. The retention table's labels:
TRUTH = the driver's world (``RUNS/world_2000/instances.json`` of ``python bench/mal_experiments.py retention``),
LABELS = bench/results/mal/retention/masks/ret_autolabel_s<seed>.json.gz.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: long-side bins of the box, in pixels
BINS = (0, 8, 16, 32, 64, 10**9)
#: --crf: the labeler's crop size and test-time expansion (configs/mal_vits_synth.yaml), the soft masks' probability,
#: the bandwidths tried (0.5: the paper's, Sec. 4.2) and ω (Sec. 4.2)
CRF_CROP, CRF_THETA, CRF_PS, CRF_ZETAS, CRF_OMEGA = 128, 0.6, (0.6, 0.8), (0.25, 0.5, 1.0), 2.0


def read_json(path: Path) -> dict:
    """A JSON file, gzip-compressed when its name ends in .gz."""
    import gzip

    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return json.loads(data.decode("utf-8"))


def pairs(truth: dict, labels: dict) -> list[tuple[dict, dict, float]]:
    """(true annotation, label, IoU) for every annotation id scored on both sides, in truth order; a true mask
    given as COCO polygons is scored as their RLE (the annotation returned carries the RLE)."""
    from omniseg.ops.rle import normalize_rle, polygons_to_rle, rle_iou

    sizes = {im["id"]: (im["height"], im["width"]) for im in truth.get("images", [])}
    by_id = {b["id"]: b for b in labels["annotations"] if isinstance(b.get("segmentation"), dict)}
    out = []
    for a in truth["annotations"]:
        b = by_id.get(a["id"])
        if b is not None and isinstance(a.get("segmentation"), list) and a["segmentation"] and a["image_id"] in sizes:
            a = {**a, "segmentation": polygons_to_rle(a["segmentation"], *sizes[a["image_id"]])}
        if b is None or not isinstance(a.get("segmentation"), dict):
            continue
        iou = float(rle_iou([normalize_rle(b["segmentation"])], [normalize_rle(a["segmentation"])])[0, 0])
        out.append((a, b, iou))
    return out


def clipped(truth_rle: dict, label_rle: dict, bbox: list[float]) -> tuple[float, float]:
    """(IoU with the true mask of the label clipped to its box, the share of the label's area outside the box);
    box pixels as the filled-box baseline counts them (centres inside, rounded edges)."""
    from omniseg.ops.rle import normalize_rle, rle_decode
    from omniseg.recipes.mal import filled_box_mask

    t, m = (rle_decode(normalize_rle(r)).astype(bool) for r in (truth_rle, label_rle))
    x, y, w, h = bbox
    box = filled_box_mask((x, y, x + w, y + h), *m.shape).astype(bool)
    inside, union = m & box, (m & box) | t
    return float((inside & t).sum() / union.sum()) if union.any() else 1.0, float((m & ~box).sum() / max(m.sum(), 1))


def breakdown(truth: dict, scored: list[tuple[dict, dict, float]]) -> dict:
    """mIoU, mIoU of the labels clipped to their boxes, the share of label area outside the box and the
    filled-box IoU, overall, per long-side bin and per category name."""
    from omniseg.ops.rle import normalize_rle, rle_area

    names = {c["id"]: c["name"] for c in truth.get("categories", [])}

    def agg(rows: list[tuple[float, ...]]) -> dict:
        n = len(rows)
        return {"n": n, **{k: sum(r[i] for r in rows) / n
                           for i, k in enumerate(("mIoU", "filled_box", "clipped_mIoU", "outside_box"))}}

    allr: list[tuple[float, ...]] = []
    bins: dict[str, list] = {}
    cats: dict[str, list] = {}
    for a, b, iou in scored:
        w, h = a["bbox"][2], a["bbox"][3]
        fill = rle_area(normalize_rle(a["segmentation"])) / max(w * h, 1e-9)
        row = (iou, min(fill, 1.0), *clipped(a["segmentation"], b["segmentation"], a["bbox"]))
        allr.append(row)
        side = max(w, h)
        lo = max(edge for edge in BINS if edge <= side)
        hi = BINS[BINS.index(lo) + 1]
        bins.setdefault(f"{lo}-{hi}" if hi < 10**9 else f">={lo}", []).append(row)
        cats.setdefault(names.get(a["category_id"], str(a["category_id"])), []).append(row)
    order = sorted(bins, key=lambda k: int(k.lstrip(">=").split("-")[0]))
    return {"all": agg(allr) if allr else {"n": 0}, "long_side": {k: agg(bins[k]) for k in order},
            "category": {k: agg(v) for k, v in sorted(cats.items())}}


def crf_study(truth: dict, scored: list, images: Path, boxes: int, seed: int = 0) -> dict:
    """mIoU with the true mask, in the crop, of the filled box / the label / the true mask before and after
    MAL's CRF refinement (module docstring), over ``boxes`` random scored boxes with sides >= 2 px."""
    import numpy as np
    import torch
    from PIL import Image

    from omniseg.data.box_crops import fixed_expansion
    from omniseg.modeling.mal import box_crops
    from omniseg.ops.crf_loss import crf_refine
    from omniseg.ops.rle import normalize_rle, rle_decode

    files = {i["id"]: i["file_name"] for i in truth["images"]}
    usable = [k for k, (a, _, _) in enumerate(scored) if min(a["bbox"][2:]) >= 2]
    if not usable:
        raise SystemExit("--crf: no scored box with both sides >= 2 px")
    pick = sorted(np.random.default_rng(seed).choice(len(usable), min(boxes, len(usable)), replace=False).tolist())
    crops, true, label, box, valid = [], [], [], [], []
    for k in pick:
        a, b, _ = scored[usable[k]]
        im = torch.from_numpy(np.asarray(Image.open(images / files[a["image_id"]]).convert("RGB")).copy())
        planes = [torch.from_numpy(rle_decode(normalize_rle(x["segmentation"]))) * 255 for x in (a, b)]
        stack = torch.cat([im.permute(2, 0, 1), *(p[None].to(torch.uint8) for p in planes)])[None]
        x, y, w, h = a["bbox"]
        c, v, bm, _, _ = box_crops(stack, [tuple(im.shape[:2])], [torch.tensor([[x, y, x + w, y + h]])],
                                   fixed_expansion(1, CRF_THETA), CRF_CROP, (32.0, 96.0))
        crops.append(c[:, :3])
        true.append(c[:, 3] > 0.5)
        label.append(c[:, 4] > 0.5)
        box.append(bm > 0)
        valid.append(v)
    crops_t, true_t, box_t, valid_t = torch.cat(crops), torch.cat(true), torch.cat(box), torch.cat(valid)

    def miou(m: torch.Tensor) -> float:
        m = m.bool()
        inter = (m & true_t).flatten(1).sum(1).float()
        return float((inter / (m | true_t).flatten(1).sum(1).float().clamp(min=1)).mean())

    out = {"boxes": len(pick), "crop": CRF_CROP, "test_theta": CRF_THETA, "omega": CRF_OMEGA, "inputs": {}}
    for name, m in (("filled box", box_t), ("label", torch.cat(label) & box_t), ("true mask", true_t & box_t)):
        after = {}
        for p in CRF_PS:
            soft = torch.where(m, p, 1 - p) * box_t
            after[str(p)] = {str(z): miou(crf_refine(soft, crops_t, box_t.float(), z, CRF_OMEGA, valid=valid_t))
                             for z in CRF_ZETAS}
        out["inputs"][name] = {"before": miou(m), "after": after}
    return out


def crf_table(crf: dict) -> str:
    """The CRF study as a markdown table: a row per input and p, a column per ζ."""
    zetas = next(iter(next(iter(crf["inputs"].values()))["after"].values()))
    lines = [f"| input | p | before | {' | '.join(f'after, ζ {z}' for z in zetas)} |",
             "|---|---:|---:|" + "---:|" * len(zetas)]
    for name, v in crf["inputs"].items():
        lines += [f"| {name} | {p} | {v['before']:.3f} | {' | '.join(f'{x:.3f}' for x in row.values())} |"
                  for p, row in v["after"].items()]
    return "\n".join(lines)


def picture(truth: dict, scored: list, images: Path, out: Path, min_side: float, tiles: int, seed: int = 0) -> None:
    """``tiles`` random boxes with long side >= ``min_side``: crop | true mask (green) | label (red)."""
    import numpy as np
    from PIL import Image

    from omniseg.ops.rle import normalize_rle, rle_decode
    from omniseg.utils.atomic import atomic_open

    files = {i["id"]: i["file_name"] for i in truth["images"]}
    big = [s for s in scored if max(s[0]["bbox"][2:]) >= min_side]
    if not big:
        raise SystemExit(f"{out}: no box with long side >= {min_side}")
    pick = np.random.default_rng(seed).choice(len(big), min(tiles, len(big)), replace=False)
    rows = []
    for k in pick:
        a, b, _ = big[k]
        im = np.asarray(Image.open(images / files[a["image_id"]]).convert("RGB"))
        x, y, w, h = (int(round(v)) for v in a["bbox"])
        ys, xs = slice(max(y - 4, 0), y + h + 4), slice(max(x - 4, 0), x + w + 4)
        crop = im[ys, xs]
        panels = [crop]
        for seg, colour in ((a, (0, 255, 0)), (b, (255, 0, 0))):
            p = crop.copy()
            p[rle_decode(normalize_rle(seg["segmentation"])).astype(bool)[ys, xs]] = colour
            panels.append(p)
        rows.append(np.asarray(Image.fromarray(np.concatenate(panels, 1)).resize((360, 120), Image.NEAREST)))
    with atomic_open(out, "wb") as f:
        Image.fromarray(np.concatenate(rows, 0)).save(f, format="PNG")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("truth", type=Path)
    ap.add_argument("labels", type=Path)
    ap.add_argument("--images", type=Path, help="image folder of TRUTH (for --png)")
    ap.add_argument("--png", type=Path, help="write a picture of random boxes here")
    ap.add_argument("--min-side", type=float, default=40.0, help="pictured boxes' minimum long side (px)")
    ap.add_argument("--tiles", type=int, default=16)
    ap.add_argument("--crf", type=int, default=0, metavar="N",
                    help="run the CRF study (module docstring) on N random boxes (needs --images)")
    ap.add_argument("--out", type=Path, help="write the breakdown (JSON) here")
    args = ap.parse_args(argv)
    for flag, wanted in (("--png", args.png), ("--crf", args.crf)):
        if wanted and args.images is None:
            raise SystemExit(f"{flag} needs --images")
    truth = read_json(args.truth)
    scored = pairs(truth, read_json(args.labels))
    res = breakdown(truth, scored)
    if args.crf:  # first: a user error in it leaves no half-printed breakdown behind
        res["crf"] = crf_study(truth, scored, args.images, args.crf)
    nan = float("nan")
    print(f"{res['all'].get('n', 0)} boxes scored: mIoU {res['all'].get('mIoU', nan):.3f} (clipped to the box "
          f"{res['all'].get('clipped_mIoU', nan):.3f}), filled box {res['all'].get('filled_box', nan):.3f}")
    for title, table in (("box long side (px)", res["long_side"]), ("category", res["category"])):
        print(f"\n| {title} | boxes | mIoU | clipped to box | label area outside box | filled box |"
              "\n|---|---:|---:|---:|---:|---:|")
        for k, v in table.items():
            print(f"| {k} | {v['n']} | {v['mIoU']:.3f} | {v['clipped_mIoU']:.3f} | {100 * v['outside_box']:.1f}% "
                  f"| {v['filled_box']:.3f} |")
    if args.png:
        picture(truth, scored, args.images, args.png, args.min_side, args.tiles)
        print(f"\nwrote {args.png}")
    if args.crf:
        print(f"\nCRF refinement (Eq. 3-5) on {res['crf']['boxes']} boxes, mIoU with the true mask in the crop:\n"
              + crf_table(res["crf"]))
    if args.out:
        import shlex

        from omniseg.utils.atomic import atomic_write_json

        command = shlex.join(["python", "bench/mal_probe.py", *(sys.argv[1:] if argv is None else argv)])
        atomic_write_json(args.out, {"command": command, "png": str(args.png) if args.png else None, **res}, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
