"""``omniseg autolabel``: masks from a box-prompted model added to a file of boxes -- the output
keeps the input, no box is dropped silently, resuming after kill -9 and sharding over ranks give
the bytes of a plain run, user errors are one line, and a segmenter trains on the result."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniseg.api import Segmenter
from omniseg.cli import main as cli_main
from omniseg.data.synth.generate import generate_records, synth_recordset
from omniseg.data.synth.world import SynthConfig

CHUNK = "3"  # images per chunk in these tests: 8 images -> 3 chunks


@pytest.fixture(scope="module")
def boxes(tmp_path_factory) -> Path:
    """8 synthetic 64 x 64 images and their boxes as COCO JSON without masks (``boxes.json``)."""
    from omniseg.data.formats.coco import to_coco_dict

    root = tmp_path_factory.mktemp("autolabel")
    recs, _ = generate_records(SynthConfig(seed=3, num_images=8, image_size=64), root / "images", progress=False)
    data = to_coco_dict(synth_recordset(recs))
    for a in data["annotations"]:
        a.pop("segmentation", None)
    (root / "boxes.json").write_text(json.dumps(data))
    return root / "boxes.json"


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli_main(["autolabel", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _args(boxes: Path, run: Path, out: Path, *extra: str) -> list[str]:
    return [str(boxes), "--images", str(boxes.parent / "images"), "--checkpoint", str(run), "--out", str(out),
            "--chunk-images", CHUNK, *extra]


@pytest.fixture(scope="module")
def reference(boxes, tiny_box_to_mask, tmp_path_factory) -> bytes:
    """The output of one uninterrupted single-process run on ``boxes``."""
    out = tmp_path_factory.mktemp("ref") / "masks.json"
    assert cli_main(["autolabel", *_args(boxes, tiny_box_to_mask[0], out)]) == 0
    return out.read_bytes()


def test_masks_added_input_kept(boxes, tiny_box_to_mask, tmp_path, capsys):
    """Every annotation in order with its fields; masks equal the Segmenter's for the (clipped) box;
    thin / outside boxes kept without a mask and counted; an existing mask left alone."""
    run = tiny_box_to_mask[0]
    data = json.loads(boxes.read_text())
    data["licenses"] = [{"id": 7, "name": "mine"}]
    data["extra"] = {"kept": True}
    anns = data["annotations"]
    anns[0]["note"] = "a field of mine"
    odd = [{"id": 9001, "image_id": 2, "category_id": 1, "bbox": [10, 10, 0.5, 20]},  # thinner than 1 px
           {"id": 9002, "image_id": 2, "category_id": 1, "bbox": [70, 70, 10, 10]},  # beyond the 64 x 64 image
           {"id": 9003, "image_id": 2, "category_id": 1, "bbox": [58, 50, 10, 30]},  # clipped to [58, 50, 64, 64]
           {"id": 9004, "image_id": 3, "category_id": 1, "bbox": [0, 0, 4, 4],
            "segmentation": {"size": [64, 64], "counts": "0`00000`o0"}}]  # its own mask: untouched
    data["annotations"] = anns[:3] + odd + anns[3:]
    src = tmp_path / "boxes.json"
    src.write_text(json.dumps(data))
    shutil.copytree(boxes.parent / "images", tmp_path / "images")
    out = tmp_path / "masks.json"
    rc, text, _ = _cli(_args(src, run, out, "--batch-size", "2"), capsys)
    assert rc == 0
    got = json.loads(out.read_text())
    assert [k for k in got if k != "info"] == [k for k in data if k != "info"]
    assert got["images"] == data["images"] and got["categories"] == data["categories"]
    assert got["licenses"] == data["licenses"] and got["extra"] == data["extra"]
    assert len(got["annotations"]) == len(data["annotations"])
    for a, b in zip(data["annotations"], got["annotations"]):
        assert {k: b[k] for k in a} == a  # every original field, unchanged
    by_id = {a["id"]: a for a in got["annotations"]}
    assert by_id[9001]["autolabel_skipped"] == "box side under 1 px" and "segmentation" not in by_id[9001]
    assert by_id[9002]["autolabel_skipped"] == "box outside the image" and "segmentation" not in by_id[9002]
    assert set(by_id[9004]) == set(odd[3])
    weights = resolve(run) / "model.safetensors"
    prov = {"labeler": "box_to_mask", "checkpoint": str(resolve(run)),
            "checkpoint_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    seg = Segmenter.from_checkpoint(run)
    files = {i["id"]: tmp_path / "images" / i["file_name"] for i in data["images"]}
    labelled = [a for a in got["annotations"] if "autolabel_skipped" not in a and a["id"] != 9004]
    assert len(labelled) == len(data["annotations"]) - 3
    for a in labelled:
        x, y, w, h = a["bbox"]
        want = seg.predict(files[a["image_id"]], boxes=[[x, y, min(x + w, 64), min(y + h, 64)]])[0]
        assert a["segmentation"] == want.mask and isinstance(a["segmentation"]["counts"], str)
        assert a["mask_score"] == 1.0
        assert {k: a["provenance"][k] for k in prov} == prov and a["provenance"]["config"].startswith("sha256:")
    info = got["info"]["autolabel"]
    assert info["counts"] == {"images": 8, "annotations": len(anns) + 4, "labelled": len(anns) + 1, "had_mask": 1,
                              "skipped": {"box outside the image": 1, "box side under 1 px": 1}}
    assert info["input_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert f"{len(anns) + 1} labelled, 2 without a mask (1 x box side under 1 px, 1 x box outside the image)" in text
    assert f"written to {out}" in text and "boxes/s" in text
    assert not Path(f"{out}.parts").exists()


@pytest.fixture(scope="module")
def tiny_mal(tmp_path_factory) -> Path:
    """A 2-iteration MAL run of configs/mal_smoke.yaml (its model.test_theta: the default 0.6)."""
    from omniseg.engine.config import load_config
    from omniseg.recipes.contract import run_recipe
    from omniseg.recipes.table import RECIPES

    out = tmp_path_factory.mktemp("mal")
    run_recipe(RECIPES["mal"], load_config(RECIPES["mal"].config, Path(__file__).resolve().parents[2] / "configs" / "mal_smoke.yaml", [
        "train.max_iter=2", "train.checkpoint_period=2", "train.progress=false", f"train.output_dir={out}"]))
    return out


def test_mal_test_theta_sets_the_crop_margin_and_is_recorded(boxes, tiny_mal, tmp_path, capsys):
    data = json.loads(boxes.read_text())
    files = {i["id"]: boxes.parent / "images" / i["file_name"] for i in data["images"]}
    seg = Segmenter.from_checkpoint(tiny_mal)
    got = {}
    for theta in (None, "0"):
        out = tmp_path / f"masks_{theta}.json"
        rc, _, err = _cli(_args(boxes, tiny_mal, out, *(["--test-theta", theta] if theta else [])), capsys)
        assert rc == 0, err
        got[theta] = json.loads(out.read_text())
        seg.model.cfg.test_theta = 0.6 if theta is None else float(theta)
        assert got[theta]["info"]["autolabel"]["test_theta"] == seg.model.cfg.test_theta
        for a in got[theta]["annotations"][:6]:  # the masks of the Segmenter cropping with the same margin
            x, y, w, h = a["bbox"]
            want = seg.predict(files[a["image_id"]], boxes=[[x, y, min(x + w, 64), min(y + h, 64)]])[0]
            assert a["segmentation"] == want.mask
    # the margin reaches the masks: without it, other crops
    assert [a["segmentation"] for a in got[None]["annotations"]] != [a["segmentation"] for a in got["0"]["annotations"]]


def resolve(run: Path) -> Path:
    from omniseg.engine.checkpoint import resolve_checkpoint

    return resolve_checkpoint(run).resolve()


def test_missing_image(boxes, tiny_box_to_mask, tmp_path, capsys):
    """A missing image: one line and no output by default; under skip its boxes are kept and counted."""
    shutil.copytree(boxes.parent / "images", tmp_path / "images")
    data = json.loads(boxes.read_text())
    gone = data["images"][4]
    (tmp_path / "images" / gone["file_name"]).unlink()
    src = tmp_path / "boxes.json"
    src.write_text(json.dumps(data))
    out = tmp_path / "masks.json"
    rc, _, err = _cli(_args(src, tiny_box_to_mask[0], out), capsys)
    errors = [line for line in err.splitlines() if not line.startswith("autolabel: ")]  # progress lines aside
    assert rc == 1 and len(errors) == 1
    assert errors[0].endswith(f"images/{gone['file_name']}: image {gone['id']}: no such image file") and not out.exists()
    rc, text, _ = _cli(_args(src, tiny_box_to_mask[0], out, "--on-bad-record", "skip"), capsys)
    assert rc == 0
    got = json.loads(out.read_text())["annotations"]
    mine = [a for a in got if a["image_id"] == gone["id"]]
    assert mine and all(a["autolabel_skipped"] == "image missing or unreadable" and "segmentation" not in a
                        for a in mine)
    assert all("segmentation" in a for a in got if a["image_id"] != gone["id"])
    assert f"{len(mine)} x image missing or unreadable" in text and gone["file_name"] in text


KILLER = """
    import os, signal, sys
    import omniseg.autolabel_run as run
    calls, line = [0], run._part_line
    def killing(row):  # SIGKILL while chunk 2's part is being written (chunks 0 and 1 are done)
        calls[0] += 1
        if calls[0] == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)
        return line(row)
    run._part_line = killing
    from omniseg.cli import main
    sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def test_resume_after_kill9(boxes, tiny_box_to_mask, reference, tmp_path, capsys):
    data = json.loads(boxes.read_text())
    first_six = {i["id"] for i in data["images"][:6]}
    kill_at = sum(a["image_id"] in first_six for a in data["annotations"]) + 2
    script = tmp_path / "killer.py"
    script.write_text(textwrap.dedent(KILLER).replace("{kill_at}", str(kill_at)))
    out = tmp_path / "masks.json"
    argv = ["autolabel", *_args(boxes, tiny_box_to_mask[0], out)]
    proc = subprocess.run([sys.executable, str(script), *argv], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr
    parts = Path(f"{out}.parts")
    names = sorted(p.name for p in parts.iterdir())
    assert [n for n in names if n.endswith(".done.json")] == ["part-000000.done.json", "part-000001.done.json"]
    assert any(n.startswith(".part-000002.jsonl.") and n.endswith(".tmp") for n in names)  # killed mid-write
    assert not out.exists()
    rc, text, _ = _cli(argv[1:], capsys)
    assert rc == 0 and "2 of 3 chunk(s) done earlier" in text
    assert out.read_bytes() == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killer.py", "masks.json"]


def test_sharded_ranks_match_single_process(boxes, tiny_box_to_mask, reference, tmp_path):
    """Two processes with RANK=0/1 WORLD_SIZE=2 (coordinated through files) write the single-process bytes."""
    out = tmp_path / "masks.json"
    cmd = [sys.executable, "-m", "omniseg.cli", "autolabel", *_args(boxes, tiny_box_to_mask[0], out)]
    procs = [subprocess.Popen(cmd, env=_env(RANK=str(r), WORLD_SIZE="2"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert "rank 1/2" in results[1][0] and f"rank 0 writes {out}" in results[1][0]
    assert out.read_bytes() == reference
    assert not Path(f"{out}.parts").exists()


def test_rank0_waits_and_reports(boxes, tiny_box_to_mask, tmp_path):
    """Rank 0 times out naming the missing rank's chunks, or reports a rank's failure at once; a
    resume with another input or settings is refused."""
    from omniseg.autolabel_run import autolabel, read_boxes
    from omniseg.commands.autolabel import checkpoint_facts
    from omniseg.data.errors import BadRecords
    from omniseg.errors import UserError

    seg = Segmenter.from_checkpoint(tiny_box_to_mask[0])
    _, prov = checkpoint_facts(str(tiny_box_to_mask[0]), False)
    images, out = str(boxes.parent / "images"), str(tmp_path / "masks.json")

    def run(rank: int, box_file=None, min_side: float = 1.0, timeout: float = 0.3):
        box_file = box_file or read_boxes(str(boxes), images, BadRecords())
        return autolabel(box_file, seg, out, images, settings={"min_box_side": min_side, "ema": False},
                         provenance=prov, bad=BadRecords(), chunk_images=3, rank=rank, world=2, wait_timeout=timeout)

    with pytest.raises(UserError, match=r"1 chunk\(s\) \(e.g. \[1\]\) of rank\(s\) \[1\] not done after 0.3 s"):
        run(0)
    failed = Path(f"{out}.parts") / "rank-1.failed.json"
    failed.write_text(json.dumps({"rank": 1, "error": "x.png: image 3: No such file or directory"}))
    with pytest.raises(UserError, match="^rank 1 failed: x.png: image 3: No such file"):
        run(0)
    other = read_boxes(str(boxes), images, BadRecords())
    other.sha256 = "0" * 64
    with pytest.raises(UserError, match=r"holds an unfinished run with another input_sha256; delete"):
        run(1, other)
    with pytest.raises(UserError, match=r"another min_box_side"):
        run(1, min_side=2.0)
    summary = run(1)  # its own failure marker goes; chunk 1 is labelled
    assert not failed.exists() and summary.boxes_here > 0 and not summary.merged
    assert run(0).merged and Path(out).exists()


def test_user_errors(boxes, tiny_box_to_mask, tmp_path, capsys):

    prompted = "box_to_mask, mal, maskx_rcnn"  # the recipes whose boxes field is not "none", sorted
    run = tiny_box_to_mask[0]
    fake = tmp_path / "fcos"
    shutil.copytree(resolve(run), fake)
    config = json.loads((fake / "config.json").read_text())
    (fake / "config.json").write_text(json.dumps({**config, "recipe": "fcos_mo"}))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"images": [')
    (tmp_path / "images").mkdir()
    cases = [
        (_args(boxes, tmp_path / "nothing", tmp_path / "o.json"), 1, "nothing: no checkpoint here"),
        (_args(boxes, fake, tmp_path / "o.json"), 1,
         f"a fcos_mo checkpoint does not segment given boxes; autolabel needs a box-prompted model ({prompted})"),
        (_args(bad_json, run, tmp_path / "o.json"), 1, "bad.json: file: malformed JSON at line 1"),
        (_args(boxes, run, boxes), 2, f"--out: {boxes} is an input of this command"),
        ([str(boxes), "--images", str(boxes), "--checkpoint", str(run), "--out", str(tmp_path / "o.json")], 1,
         "--images is not a folder"),
        (_args(tmp_path / "b.csv", run, tmp_path / "o.json"), 1, "needs --classes"),
        (_args(boxes, run, tmp_path / "o.json", "--test-theta", "0.3"), 2,
         f"--test-theta: only MAL crops its boxes with a margin; {run} is a box_to_mask checkpoint"),
    ]
    (tmp_path / "b.csv").write_text("ImageID\n")
    for argv, code, says in cases:
        rc, _, err = _cli(argv, capsys)
        assert rc == code and says in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "o.json").exists()


def test_open_images_csv(tiny_box_to_mask, tmp_path, capsys):
    """An Open Images boxes CSV (+ class descriptions) comes out as COCO JSON with a mask per row."""
    from omniseg.data.synth.world import generate_image

    (tmp_path / "images").mkdir()
    for k, iid in enumerate(["aa01", "bb02"]):
        Image.fromarray(generate_image(SynthConfig(seed=k, num_images=1, image_size=64), 0)[0][:48]).save(
            tmp_path / "images" / f"{iid}.jpg")
    (tmp_path / "classes.csv").write_text("/m/01,Ring\n/m/02,Star\n")
    rows = [("aa01", "/m/01", 0.1, 0.5, 0.2, 0.9), ("bb02", "/m/02", 0.0, 1.0, 0.0, 0.5),
            ("aa01", "/m/02", 0.5, 0.75, 0.5, 1.0)]
    lines = ["ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,"
             "IsInside"] + [f"{i},xclick,{m},1,{x0},{x1},{y0},{y1},0,0,0,0,0" for i, m, x0, x1, y0, y1 in rows]
    (tmp_path / "boxes.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "masks.json"
    rc, _, _ = _cli([str(tmp_path / "boxes.csv"), "--classes", str(tmp_path / "classes.csv"), "--images",
                     str(tmp_path / "images"), "--checkpoint", str(tiny_box_to_mask[0]), "--out", str(out)], capsys)
    assert rc == 0
    got = json.loads(out.read_text())
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in got["images"]] == [
        ("aa01", "aa01.jpg", 64, 48), ("bb02", "bb02.jpg", 64, 48)]
    assert [c["name"] for c in got["categories"]] == ["Ring", "Star"]
    seg = Segmenter.from_checkpoint(tiny_box_to_mask[0])
    assert len(got["annotations"]) == 3
    for a, (iid, mid, x0, x1, y0, y1) in zip(got["annotations"], [rows[0], rows[2], rows[1]]):  # grouped by image
        assert a["image_id"] == iid and a["category_id"] == {"/m/01": 1, "/m/02": 2}[mid]
        want = seg.predict(tmp_path / "images" / f"{iid}.jpg", boxes=[[x0 * 64, y0 * 48, x1 * 64, y1 * 48]])[0]
        assert a["segmentation"] == want.mask


def test_train_on_pseudo_masks_then_label_with_maskx(boxes, reference, tmp_path, capsys):
    """``omniseg train`` on the labelled file is a config line (the detector's data sees the masks); the
    trained Mask^X R-CNN is itself box-prompted and labels the boxes with their classes."""
    from omniseg.engine.config import load_config
    from omniseg.ops.rle import rle_decode
    from omniseg.recipes.contract import run_recipe
    from omniseg.recipes.table import RECIPES

    masks = tmp_path / "masks.json"
    masks.write_bytes(reference)
    images = str(boxes.parent / "images")
    recipe = RECIPES["maskx_rcnn"]
    config = Path(__file__).resolve().parents[2] / "configs" / "maskx_smoke.yaml"
    cfg = load_config(recipe.config, config, [
        f"data.train={masks}", f"data.train_images={images}", "data.oracle=true", f"data.val={masks}",
        f"data.val_images={images}", "train.max_iter=2", "train.checkpoint_period=2",
        f"train.output_dir={tmp_path / 'run'}"])
    ds = recipe.train_data(cfg, False)
    labelled = json.loads(reference)["info"]["autolabel"]["counts"]["labelled"]
    assert sum(i.mask is not None for r in ds.rs.records for i in r.instances) == labelled
    run_recipe(recipe, cfg)
    losses = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("loss_mask", 0) > 0 for row in losses)

    out = tmp_path / "maskx.json"
    rc, _, _ = _cli(_args(boxes, tmp_path / "run", out), capsys)
    assert rc == 0
    got = json.loads(out.read_text())
    seg = Segmenter.from_checkpoint(tmp_path / "run")
    names = {c["id"]: c["name"] for c in got["categories"]}
    first = got["images"][0]
    anns = [a for a in got["annotations"] if a["image_id"] == first["id"]]
    want = seg.predict(Path(images) / first["file_name"], vocabulary=[names[a["category_id"]] for a in anns],
                       boxes=[[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    assert [a["segmentation"] for a in anns] == [i.mask for i in want]
    assert all(rle_decode(a["segmentation"]).shape == (64, 64) for a in anns)
    assert got["info"]["autolabel"]["labeler"] == "maskx_rcnn"
    assert np.isclose([a["mask_score"] for a in anns], 1.0).all()  # named boxes score 1
