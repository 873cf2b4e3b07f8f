"""Hostile input across every command, one table row per case (issue 10).

Each row runs ``omniseg ...`` (in-process through :func:`omniseg.cli.main`, or as a subprocess
with a timeout where the input could block or the case is about signals) and asserts:

* the exact exit status (1: bad input, 2: bad argument, 0: handled correctly);
* an error is ONE line ``omniseg <cmd>: error: ...`` naming the file / record / flag the row says,
  with no traceback and no "internal error" (which is how the CLI reports bugs);
* nothing is left behind: no temporary file anywhere under the case folder, no output file on
  an error, and files the row lists as precious are byte-identical afterwards.

Rows that must *succeed* carry a ``check`` on the output. The data are tiny (3 synthetic images of
48 px, a box-to-mask model trained for 2 steps) so the whole table runs in well under a minute.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from omniseg.cli import main

SIZE = 48
PY = sys.executable


# ----------------------------------------------------------------------------- shared inputs


@dataclass
class World:
    synth: Path  # a folder written by `omniseg data synth` (3 images)
    run: Path  # a trained box_to_mask run folder
    image: Path  # one image of the synth world


def _quiet(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    base = tmp_path_factory.mktemp("world")
    synth = base / "synth"
    assert _quiet(["data", "synth", "--out", str(synth), "--num-images", "3", "--image-size", str(SIZE),
                   "--seed", "3", "--no-progress"]) == 0
    run = base / "run"
    (base / "tiny.yaml").write_text(TINY_YAML.format(out=run), encoding="utf-8")
    assert _quiet(["train", str(base / "tiny.yaml")]) == 0
    image = sorted((synth / "images").iterdir())[0]
    return World(synth=synth, run=run, image=image)


TINY_YAML = """\
recipe: box_to_mask
model: {{width: 8, fpn_channels: 16, norm: GN, freeze_at: 0, head_convs: 1, head_dim: 8}}
data: {{train_num_images: 4, val_num_images: 2, image_size: 96, batch_size: 2}}
train: {{max_iter: 2, progress: false, output_dir: "{out}", checkpoint_period: 2}}
"""


# ----------------------------------------------------------------------------- setup helpers
# Each takes (case folder, world) and writes the row's inputs.


def write(name: str, text: str) -> Callable[[Path, World], None]:
    def setup(d: Path, w: World) -> None:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text, encoding="utf-8")

    return setup


def yaml_config(body: str, name: str = "c.yaml") -> Callable[[Path, World], None]:
    """A YAML config; ``{out}`` in ``body`` is the case's run folder."""

    def setup(d: Path, w: World) -> None:
        (d / name).write_text(body.replace("{out}", str(d / "run")), encoding="utf-8")

    return setup


def tiny_config(**train: object) -> Callable[[Path, World], None]:
    """The tiny box_to_mask config with some train keys replaced."""

    def setup(d: Path, w: World) -> None:
        text = TINY_YAML.format(out=d / "run")
        for k, v in train.items():
            text = text.replace("train: {", f"train: {{{k}: {v}, ", 1)
        (d / "c.yaml").write_text(text, encoding="utf-8")

    return setup


def coco_copy(mutate: Callable[[dict], None] | None = None) -> Callable[[Path, World], None]:
    """A copy of the synth folder (``d/ds``) whose instances.json went through ``mutate``."""

    def setup(d: Path, w: World) -> None:
        shutil.copytree(w.synth, d / "ds")
        path = d / "ds" / "instances.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        if mutate is not None:
            mutate(data)
        path.write_text(json.dumps(data), encoding="utf-8")

    return setup


def preds(mutate: Callable[[list], object] | None = None) -> Callable[[Path, World], None]:
    """``d/p.json``: the synth ground truth as detections, then ``mutate`` (may return a new object)."""

    def setup(d: Path, w: World) -> None:
        gt = json.loads((w.synth / "instances.json").read_text(encoding="utf-8"))
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                 "segmentation": a["segmentation"], "score": 1.0} for a in gt["annotations"]]
        if mutate is not None:
            dets = mutate(dets) or dets
        (d / "p.json").write_text(json.dumps(dets), encoding="utf-8")

    return setup


def both(*setups: Callable[[Path, World], None]) -> Callable[[Path, World], None]:
    def setup(d: Path, w: World) -> None:
        for s in setups:
            s(d, w)

    return setup


def fifo(name: str) -> Callable[[Path, World], None]:
    def setup(d: Path, w: World) -> None:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(d / name)

    return setup


def image_folder_with(extra: Callable[[Path], None]) -> Callable[[Path, World], None]:
    """``d/imgs``: two real images plus whatever ``extra`` adds."""

    def setup(d: Path, w: World) -> None:
        (d / "imgs").mkdir()
        for p in sorted((w.synth / "images").iterdir())[:2]:
            shutil.copy(p, d / "imgs" / p.name)
        extra(d / "imgs")

    return setup


def copy_run(damage: Callable[[Path], None]) -> Callable[[Path, World], None]:
    """``d/run``: a copy of the trained run, then ``damage`` applied to it."""

    def setup(d: Path, w: World) -> None:
        shutil.copytree(w.run, d / "run")
        damage(d / "run")

    return setup


def _latest_weights(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step_*"))[-1] / "model.safetensors"


def truncate_weights(run: Path) -> None:
    p = _latest_weights(run)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def foreign_weights(run: Path) -> None:
    """Weights of another model under the run's file name: same keys' names are absent."""
    save_file({"backbone.stem.weight": torch.zeros(3, 3)}, str(_latest_weights(run)))


def reshaped_weights(run: Path) -> None:
    """Every tensor present, one with the wrong shape (another width of the same recipe)."""
    from safetensors.torch import load_file

    p = _latest_weights(run)
    sd = load_file(str(p))
    k = sorted(sd)[0]
    sd[k] = torch.zeros(*[s + 1 for s in sd[k].shape])
    save_file(sd, str(p))


def unrelated_safetensors(d: Path, w: World) -> None:
    save_file({"foo.weight": torch.zeros(2, 2)}, str(d / "w.safetensors"))


# ----------------------------------------------------------------------------- small file helpers


def _mutate_json(path: Path, mutate: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    mutate(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _resize(path: Path, factor: int) -> None:
    im = Image.open(path)
    im.resize((im.width * factor, im.height * factor)).save(path)


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)


def _run_json_files(run: Path) -> list[Path]:
    return [run / "run.json", *run.glob("checkpoints/step_*/state.json")]


def _set_recipe(run: Path, name: str) -> None:
    for p in _run_json_files(run):
        if p.exists():
            data = json.loads(p.read_text())
            info = data.get("extra", {}).get("run_info", data)
            info["recipe"] = name
            p.write_text(json.dumps(data))


def _strip_run_info(run: Path) -> None:
    (run / "run.json").unlink(missing_ok=True)
    for p in run.glob("checkpoints/step_*/state.json"):
        data = json.loads(p.read_text())
        data.get("extra", {}).pop("run_info", None)
        p.write_text(json.dumps(data))


# ----------------------------------------------------------------------------- checks for success rows


def stdout_json(out: str, err: str, d: Path) -> None:
    assert json.loads(out)["images"], "stdout holds the COCO file and nothing else"


def wrote_through_link(out: str, err: str, d: Path) -> None:
    assert (d / "link.json").is_symlink()
    assert json.loads((d / "target.json").read_text())["images"], "the link's target holds the new file"


def two_drawings(out: str, err: str, d: Path) -> None:
    pngs = sorted(p.name for p in (d / "o").glob("*.png"))
    assert len(pngs) == 2, pngs
    files = [r["file"] for r in json.loads((d / "o" / "predictions.json").read_text())]
    assert len(files) == 2


def images(n: int) -> Callable[[str, str, Path], None]:
    def check(out: str, err: str, d: Path) -> None:
        assert json.loads(out)["images"] == n, out

    return check


def ap_zero(out: str, err: str, d: Path) -> None:
    assert "0.0" in out, out


def skipped(n: int) -> Callable[[str, str, Path], None]:
    def check(out: str, err: str, d: Path) -> None:
        assert f"skipped {n} " in out + err, out + err

    return check


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # {d}: case folder, {synth}, {run}, {image}: the shared world
    code: int
    names: str = ""  # what the error line must contain (after placeholder substitution)
    setup: Callable[[Path, World], None] | None = None
    absent: tuple[str, ...] = ()  # outputs that must not exist afterwards
    precious: tuple[str, ...] = ()  # files that must be byte-identical afterwards
    check: Callable[[str, str, Path], None] | None = None  # success rows: a check on (stdout, stderr, folder)
    subprocess: bool = False  # could block or needs signals: run in a child with a timeout
    root_only: bool = False
    skip_if: Callable[[], bool] = field(default=lambda: False)
    check_after: Callable[[Path], bool] | None = None  # any row: must hold afterwards


C = Case
CONFIG = "{d}/c.yaml"
CASES: list[Case] = [
    # --- train: configs
    C("train-missing-config", ("train", "{d}/nosuch.yaml"), 1, "nosuch.yaml"),
    C("train-config-is-dir", ("train", "{d}"), 1, "{d}"),
    C("train-yaml-syntax", ("train", CONFIG), 1, "c.yaml", yaml_config("recipe: box_to_mask\nmodel: [1,\n")),
    C("train-yaml-list", ("train", CONFIG), 1, "c.yaml", yaml_config("- recipe\n- box_to_mask\n")),
    C("train-yaml-scalar", ("train", CONFIG), 1, "c.yaml", yaml_config("42\n")),
    C("train-duplicate-key", ("train", CONFIG), 1, "lr",
      yaml_config("recipe: box_to_mask\ntrain:\n  lr: 0.1\n  lr: 0.2\n")),
    C("train-no-recipe", ("train", CONFIG), 1, "recipe", yaml_config("train:\n  max_iter: 2\n")),
    C("train-unknown-recipe", ("train", CONFIG), 1, "nosuch", yaml_config("recipe: nosuch\n")),
    C("train-unknown-override", ("train", CONFIG, "train.nosuch=4"), 1, "train.nosuch", tiny_config()),
    C("train-unknown-section", ("train", CONFIG, "nosuch.lr=4"), 1, "nosuch", tiny_config()),
    C("train-override-no-equals", ("train", CONFIG, "train.max_iter"), 1, "train.max_iter", tiny_config()),
    C("train-override-bad-type", ("train", CONFIG, "train.max_iter=abc"), 1, "train.max_iter", tiny_config()),
    C("train-override-recipe-unknown", ("train", CONFIG, "recipe=nosuch"), 1, "nosuch", tiny_config()),
    C("train-negative-max-iter", ("train", CONFIG), 1, "max_iter", tiny_config(max_iter=-3)),
    C("train-nan-lr", ("train", CONFIG), 1, "lr", tiny_config(lr=".nan")),
    C("train-inf-lr", ("train", CONFIG, "train.lr=inf"), 1, "lr", tiny_config()),
    C("train-negative-lr", ("train", CONFIG, "train.lr=-0.1"), 1, "lr", tiny_config()),
    C("train-negative-checkpoint-period", ("train", CONFIG), 1, "checkpoint_period",
      tiny_config(checkpoint_period=-1)),
    C("train-cuda-without-cuda", ("train", CONFIG, "train.device=cuda"), 1, "cuda", tiny_config(),
      skip_if=torch.cuda.is_available),
    C("train-bad-literal", ("train", CONFIG, "train.optimizer=adam"), 1, "train.optimizer", tiny_config()),
    # --- train: runs and weights
    C("train-resume-without-checkpoint", ("train", CONFIG, "--resume"), 1, "{d}/run", tiny_config(),
      absent=("run/checkpoints",)),
    C("train-into-used-run-folder", ("train", CONFIG), 1, "{d}/run",
      both(tiny_config(), write("run/metrics.jsonl", '{"step": 7}\n')), precious=("run/metrics.jsonl",)),
    C("train-pretrained-missing", ("train", CONFIG, "model.pretrained={d}/nosuch.safetensors"), 1,
      "nosuch.safetensors", tiny_config()),
    C("train-pretrained-unrelated", ("train", CONFIG, "model.pretrained={d}/w.safetensors"), 1,
      "w.safetensors", both(tiny_config(), unrelated_safetensors), absent=("run/checkpoints",)),
    C("train-pretrained-truncated", ("train", CONFIG, "model.pretrained={d}/w.safetensors"), 1,
      "w.safetensors", both(tiny_config(), write("w.safetensors", "\x10\x00\x00"))),
    # --- data stats / convert: what the file is
    C("stats-missing", ("data", "stats", "{d}/nosuch.json"), 1, "nosuch.json"),
    C("stats-empty-file", ("data", "stats", "{d}/e.json"), 1, "e.json", write("e.json", "")),
    C("stats-bad-json", ("data", "stats", "{d}/e.json"), 1, "e.json", write("e.json", '{"images": [')),
    C("stats-json-number", ("data", "stats", "{d}/e.json"), 1, "e.json", write("e.json", "3")),
    C("stats-5000-digit-integer", ("data", "stats", "{d}/e.json"), 1, "e.json: file: malformed JSON at line 2: number "
      "with too many digits", write("e.json", '{"images": [],\n "annotations": [{"id": ' + "9" * 5000 + "}]}")),
    C("stats-results-file", ("data", "stats", "{d}/p.json"), 1, "p.json", preds()),
    C("stats-unknown-extension", ("data", "stats", "{d}/x.txt"), 1, "x.txt", write("x.txt", "hello")),
    C("stats-not-utf8", ("data", "stats", "{d}/e.json"), 1, "e.json",
      lambda d, w: (d / "e.json").write_bytes(b'{"images": "\xff\xfe"}')),
    # --- COCO records: strict types, references, paths
    C("coco-iscrowd-string", ("data", "stats", "{d}/ds"), 1, "instances.json",
      coco_copy(lambda c: c["annotations"][0].update(iscrowd="0"))),
    C("coco-iscrowd-2", ("data", "stats", "{d}/ds"), 1, "instances.json",
      coco_copy(lambda c: c["annotations"][0].update(iscrowd=2))),
    C("coco-iscrowd-string-skip", ("data", "stats", "{d}/ds", "--on-bad-record", "skip"), 0,
      setup=coco_copy(lambda c: c["annotations"][0].update(iscrowd="0")), check=skipped(1)),
    C("coco-negative-area", ("data", "stats", "{d}/ds"), 1, "instances.json",
      coco_copy(lambda c: c["annotations"][0].update(area=-5))),
    C("coco-string-image-id", ("data", "stats", "{d}/ds"), 1, "instances.json",
      coco_copy(lambda c: c["images"][0].update(id=str(c["images"][0]["id"])))),
    C("coco-float-annotation-id", ("data", "stats", "{d}/ds"), 1, "instances.json",
      coco_copy(lambda c: c["annotations"][0].update(id=1.5))),
    C("coco-bool-category-id", ("data", "stats", "{d}/ds"), 1, "instances.json",
      coco_copy(lambda c: c["annotations"][0].update(category_id=True))),
    C("coco-nan-bbox", ("data", "stats", "{d}/ds"), 1, "instances.json",
      coco_copy(lambda c: c["annotations"][0].update(bbox=[float("nan"), 1, 2, 3]))),
    C("coco-bbox-three-numbers", ("data", "stats", "{d}/ds"), 1, "instances.json",
      coco_copy(lambda c: c["annotations"][0].update(bbox=[1, 2, 3]))),
    C("coco-unknown-image-ref", ("data", "stats", "{d}/ds"), 1, "instances.json",
      coco_copy(lambda c: c["annotations"][0].update(image_id=987654))),
    C("coco-unknown-category-ref", ("data", "stats", "{d}/ds"), 1, "instances.json",
      coco_copy(lambda c: c["annotations"][0].update(category_id=987654))),
    C("coco-duplicate-image-id", ("data", "stats", "{d}/ds"), 1, "instances.json",
      coco_copy(lambda c: c["images"].append(dict(c["images"][0])))),
    C("coco-no-categories", ("data", "stats", "{d}/ds/instances.json"), 1, "categories",
      coco_copy(lambda c: c.pop("categories"))),
    C("coco-path-escape", ("data", "stats", "{d}/ds"), 1, "instances.json",
      coco_copy(lambda c: c["images"][0].update(file_name="../../../../etc/passwd"))),
    C("coco-absolute-path", ("data", "stats", "{d}/ds"), 1, "instances.json",
      coco_copy(lambda c: c["images"][0].update(file_name="/etc/passwd"))),
    C("coco-negative-width", ("data", "stats", "{d}/ds"), 1, "instances.json",
      coco_copy(lambda c: c["images"][0].update(width=-48))),
    # --- captions and narratives
    C("captions-int-caption", ("data", "stats", "{d}/ds"), 1, "captions.json", both(
        coco_copy(), lambda d, w: _mutate_json(d / "ds" / "captions.json",
                                               lambda c: c["annotations"][0].update(caption=5)))),
    C("narratives-broken-line", ("data", "stats", "{d}/ds"), 1, "narratives.jsonl", both(
        coco_copy(), lambda d, w: _append(d / "ds" / "narratives.jsonl", '{"image_id": \n'))),
    C("narratives-broken-line-skip", ("data", "stats", "{d}/ds", "--on-bad-record", "skip"), 0,
      setup=both(coco_copy(), lambda d, w: _append(d / "ds" / "narratives.jsonl", '{"image_id": \n')),
      check=skipped(1)),
    # --- image folders and images that are not files
    C("folder-fifo-png", ("data", "stats", "{d}/imgs"), 0, setup=image_folder_with(lambda p: os.mkfifo(p / "x.png")),
      check=skipped(1), subprocess=True),
    C("folder-directory-png", ("data", "stats", "{d}/imgs", "--json"), 0,
      setup=image_folder_with(lambda p: (p / "y.png").mkdir()), check=images(2)),
    C("folder-text-as-png", ("data", "stats", "{d}/imgs"), 1, "z.png",
      image_folder_with(lambda p: (p / "z.png").write_text("not an image"))),
    C("folder-text-as-png-skip", ("data", "stats", "{d}/imgs", "--on-bad-record", "skip"), 0,
      setup=image_folder_with(lambda p: (p / "z.png").write_text("not an image")), check=skipped(1)),
    C("folder-symlink-outside", ("data", "stats", "{d}/imgs", "--on-bad-record", "skip"), 0,
      setup=image_folder_with(lambda p: (p / "w.png").symlink_to("/etc/passwd")), check=skipped(1)),
    C("viz-fifo-image", ("viz", "{d}/ds", "--out", "{d}/o", "--no-progress"), 1, "images",
      both(coco_copy(), lambda d, w: _replace_with_fifo(sorted((d / "ds" / "images").iterdir())[0])),
      absent=("o/index.html",), subprocess=True),
    # --- writers: where the output goes
    C("convert-out-is-dir", ("data", "convert", "{synth}", "--to", "coco", "--out", "{d}/odir"), 1, "odir",
      lambda d, w: (d / "odir").mkdir()),
    C("convert-out-is-fifo", ("data", "convert", "{synth}", "--to", "coco", "--out", "{d}/f.json"), 1, "f.json",
      fifo("f.json"), subprocess=True),
    C("convert-out-device", ("data", "convert", "{synth}", "--to", "coco", "--out", "{d}/full"), 1, "full",
      lambda d, w: os.mknod(d / "full", 0o666 | stat.S_IFCHR, os.makedev(1, 7)), root_only=True,
      check_after=lambda d: stat.S_ISCHR(os.stat(d / "full").st_mode)),  # a private twin of /dev/full
    C("convert-out-empty", ("data", "convert", "{synth}", "--to", "coco", "--out", ""), 2, "--out"),
    C("convert-out-symlink", ("data", "convert", "{synth}", "--to", "coco", "--out", "{d}/link.json"), 0,
      setup=lambda d, w: ((d / "target.json").write_text("{}"), (d / "link.json").symlink_to(d / "target.json")),
      check=wrote_through_link),
    C("convert-stdout", ("data", "convert", "{synth}", "--to", "coco", "--out", "-"), 0, check=stdout_json),
    C("convert-panoptic-stdout", ("data", "convert", "{synth}", "--to", "panoptic", "--out", "-"), 2, "--out"),
    C("convert-out-under-a-file", ("data", "convert", "{synth}", "--to", "coco", "--out", "{d}/f/x.json"), 1, "f",
      write("f", "a file, not a folder")),
    C("synth-tiny-image-size", ("data", "synth", "--out", "{d}/s", "--image-size", "8"), 2, "--image-size",
      absent=("s",)),
    C("synth-zero-images", ("data", "synth", "--out", "{d}/s", "--num-images", "0"), 2, "--num-images", absent=("s",)),
    C("synth-zero-workers", ("data", "synth", "--out", "{d}/s", "--workers", "0"), 2, "--workers", absent=("s",)),
    # --- eval
    C("eval-missing-pred", ("eval", "{synth}", "--pred", "{d}/nosuch.json"), 1, "nosuch.json"),
    C("eval-pred-bad-json", ("eval", "{synth}", "--pred", "{d}/p.json"), 1, "p.json", write("p.json", "[{")),
    C("eval-pred-is-gt", ("eval", "{synth}", "--pred", "{synth}/instances.json"), 1, "instances.json"),
    C("eval-pred-string-score", ("eval", "{synth}", "--pred", "{d}/p.json"), 1, "p.json",
      preds(lambda p: p[0].update(score="high"))),
    C("eval-pred-nan-score", ("eval", "{synth}", "--pred", "{d}/p.json"), 1, "p.json",
      preds(lambda p: p[0].update(score=float("nan")))),
    C("eval-pred-unknown-image", ("eval", "{synth}", "--pred", "{d}/p.json"), 1, "p.json",
      preds(lambda p: p[0].update(image_id=987654))),
    C("eval-pred-unknown-category", ("eval", "{synth}", "--pred", "{d}/p.json"), 1, "p.json",
      preds(lambda p: p[0].update(category_id=987654))),
    C("eval-gt-is-captions", ("eval", "{synth}/captions.json", "--pred", "{d}/p.json"), 1,
      "captions.json: has no categories / instances to evaluate against", preds()),
    C("eval-empty-pred", ("eval", "{synth}", "--pred", "{d}/p.json"), 0, setup=preds(lambda p: []), check=ap_zero),
    C("eval-unknown-split", ("eval", "{synth}", "--pred", "{d}/p.json", "--split", "nosuch"), 2, "nosuch", preds()),
    C("eval-out-is-dir", ("eval", "{synth}", "--pred", "{d}/p.json", "--out", "{d}/odir"), 1, "odir",
      both(preds(), lambda d, w: (d / "odir").mkdir())),
    # --- viz
    C("viz-missing-image", ("viz", "{d}/ds", "--out", "{d}/o", "--no-progress"), 1, "images",
      both(coco_copy(), lambda d, w: sorted((d / "ds" / "images").iterdir())[0].unlink()), absent=("o/index.html",)),
    C("viz-missing-image-skip", ("viz", "{d}/ds", "--out", "{d}/o", "--no-progress", "--on-bad-record", "skip"), 0,
      setup=both(coco_copy(), lambda d, w: sorted((d / "ds" / "images").iterdir())[0].unlink()), check=skipped(1)),
    C("viz-corrupt-image", ("viz", "{d}/ds", "--out", "{d}/o", "--no-progress"), 1, "images",
      both(coco_copy(), lambda d, w: sorted((d / "ds" / "images").iterdir())[0].write_bytes(b"\x89PNG garbage"))),
    C("viz-size-mismatch", ("viz", "{d}/ds", "--out", "{d}/o", "--no-progress"), 1, "images",
      both(coco_copy(), lambda d, w: _resize(sorted((d / "ds" / "images").iterdir())[0], 2))),
    C("viz-negative-limit", ("viz", "{synth}", "--out", "{d}/o", "--limit", "-1"), 2, "--limit", absent=("o",)),
    C("viz-nan-min-score", ("viz", "{synth}", "--out", "{d}/o", "--min-score", "nan"), 2, "--min-score",
      absent=("o",)),
    # --- segment
    C("segment-missing-image", ("segment", "{d}/nosuch.png", "--checkpoint", "{run}", "--out", "{d}/o",
                                "--boxes", "1,1,20,20"), 1, "nosuch.png", absent=("o/predictions.json",)),
    C("segment-text-as-image", ("segment", "{d}/x.png", "--checkpoint", "{run}", "--out", "{d}/o",
                                "--boxes", "1,1,20,20"), 1, "x.png", write("x.png", "text"),
      absent=("o/predictions.json",)),
    C("segment-fifo-image", ("segment", "{d}/x.png", "--checkpoint", "{run}", "--out", "{d}/o",
                             "--boxes", "1,1,20,20"), 1, "x.png", fifo("x.png"), subprocess=True),
    C("segment-boxes-words", ("segment", "{image}", "--checkpoint", "{run}", "--out", "{d}/o", "--boxes", "a,b,c,d"),
      2, "--boxes", absent=("o",)),
    C("segment-boxes-three", ("segment", "{image}", "--checkpoint", "{run}", "--out", "{d}/o", "--boxes", "1,2,3"),
      2, "--boxes", absent=("o",)),
    C("segment-boxes-nan", ("segment", "{image}", "--checkpoint", "{run}", "--out", "{d}/o",
                            "--boxes", "nan,1,20,20"), 2, "--boxes", absent=("o",)),
    C("segment-box-outside", ("segment", "{image}", "--checkpoint", "{run}", "--out", "{d}/o",
                              "--boxes", "500,500,600,600"), 1, "500", absent=("o/predictions.json",)),
    C("segment-nan-min-score", ("segment", "{image}", "--checkpoint", "{run}", "--out", "{d}/o",
                                "--boxes", "1,1,20,20", "--min-score", "nan"), 2, "--min-score", absent=("o",)),
    C("segment-min-score-above-1", ("segment", "{image}", "--checkpoint", "{run}", "--out", "{d}/o",
                                    "--boxes", "1,1,20,20", "--min-score", "1.5"), 2, "--min-score", absent=("o",)),
    C("segment-empty-vocabulary", ("segment", "{image}", "--checkpoint", "{run}", "--out", "{d}/o",
                                   "--vocabulary", " , "), 2, "--vocabulary", absent=("o",)),
    C("segment-missing-checkpoint", ("segment", "{image}", "--checkpoint", "{d}/nosuch", "--out", "{d}/o"), 1,
      "nosuch", absent=("o",)),
    C("segment-truncated-weights", ("segment", "{image}", "--checkpoint", "{d}/run", "--out", "{d}/o",
                                    "--boxes", "1,1,20,20"), 1, "model.safetensors", copy_run(truncate_weights),
      absent=("o",)),
    C("segment-foreign-weights", ("segment", "{image}", "--checkpoint", "{d}/run", "--out", "{d}/o",
                                  "--boxes", "1,1,20,20"), 1, "model.safetensors", copy_run(foreign_weights),
      absent=("o",)),
    C("segment-reshaped-weights", ("segment", "{image}", "--checkpoint", "{d}/run", "--out", "{d}/o",
                                   "--boxes", "1,1,20,20"), 1, "model.safetensors", copy_run(reshaped_weights),
      absent=("o",)),
    C("segment-unknown-recipe", ("segment", "{image}", "--checkpoint", "{d}/run", "--out", "{d}/o",
                                 "--boxes", "1,1,20,20"), 1, "nosuch", copy_run(lambda r: _set_recipe(r, "nosuch")),
      absent=("o",)),
    C("segment-no-run-description", ("segment", "{image}", "--checkpoint", "{d}/run", "--out", "{d}/o",
                                     "--boxes", "1,1,20,20"), 1, "{d}/run", copy_run(_strip_run_info),
      absent=("o",)),
    C("segment-cuda-without-cuda", ("segment", "{image}", "--checkpoint", "{run}", "--out", "{d}/o",
                                    "--boxes", "1,1,20,20", "--device", "cuda"), 1, "cuda", absent=("o",),
      skip_if=torch.cuda.is_available),
    C("segment-same-file-names", ("segment", "{d}/a/x.png", "{d}/b/x.png", "--checkpoint", "{run}", "--out", "{d}/o",
                                  "--boxes", "1,1,20,20"), 0,
      setup=lambda d, w: [(_copy(w.image, d / s / "x.png")) for s in "ab"], check=two_drawings),
    # --- found by the audit after the first pass: outputs that were inputs, runs that were not ours
    C("eval-out-is-the-gt", ("eval", "{d}/ds/instances.json", "--pred", "{d}/p.json", "--out", "{d}/ds/instances.json"),
      2, "--out", both(coco_copy(), preds()), precious=("ds/instances.json",)),
    C("convert-out-is-the-input", ("data", "convert", "{d}/ds", "--to", "coco-results", "--out",
                                   "{d}/ds/instances.json"), 2, "--out", coco_copy(), precious=("ds/instances.json",)),
    C("convert-out-trailing-slash", ("data", "convert", "{synth}", "--to", "coco", "--out", "{d}/new/"), 2, "--out",
      absent=("new",)),
    C("convert-panoptic-folder-with-foreign-file", ("data", "convert", "{synth}", "--to", "panoptic", "--out",
                                                   "{d}/pan.json"), 1, "precious.txt",
      write("pan/precious.txt", "mine"), absent=("pan.json",), precious=("pan/precious.txt",)),
    C("viz-out-is-the-dataset", ("viz", "{d}/ds", "--out", "{d}/ds", "--no-progress"), 2, "--out", coco_copy(),
      absent=("ds/index.html",)),
    C("train-batch-size-zero", ("train", CONFIG, "data.batch_size=0"), 1, "data.batch_size", tiny_config()),
    C("train-width-zero", ("train", CONFIG, "model.width=0"), 1, "model.width", tiny_config()),
    C("train-repeated-override", ("train", CONFIG, "train.max_iter=1", "train.max_iter=2"), 1, "train.max_iter",
      tiny_config()),
    C("train-empty-output-dir", ("train", CONFIG, "train.output_dir="), 1, "train.output_dir", tiny_config()),
    C("train-overwrite-keeps-other-runs", ("train", CONFIG, "--overwrite"), 1, "expA",
      both(tiny_config(), write("run/expA/metrics.jsonl", '{"step": 7}\n')), precious=("run/expA/metrics.jsonl",)),
    C("curate-stuff-list-missing-file", ("curate", "alps", "{synth}/narratives.jsonl", "--images", "{synth}",
                                         "--out", "{d}/o", "--stuff-list", "{d}/nofile.txt"), 2, "--stuff-list",
      absent=("o",)),
    # --- curate and demo arguments
    C("curate-zero-workers", ("curate", "alps", "{d}/n.jsonl", "--images", "{synth}", "--out", "{d}/o",
                              "--workers", "0"), 2, "--workers", absent=("o",)),
    C("curate-missing-input", ("curate", "alps", "{d}/nosuch.jsonl", "--images", "{synth}", "--out", "{d}/o"), 1,
      "nosuch.jsonl", absent=("o/alps.jsonl",)),
    C("demo-zero-images", ("demo", "--out", "{d}/o", "--num-images", "0"), 2, "--num-images", absent=("o",)),
    C("demo-negative-iters", ("demo", "--out", "{d}/o", "--train-iters", "-1"), 2, "--train-iters", absent=("o",)),
]


# ----------------------------------------------------------------------------- the runner


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(d: Path) -> list[str]:
    """Temporary files or folders anywhere under ``d`` (the atomic writers' hidden ``.NAME.*.tmp``)."""
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name)


def _run(argv: list[str], in_child: bool, cwd: Path) -> tuple[int, str, str]:
    if in_child:
        proc = subprocess.run([PY, "-m", "omniseg.cli", *argv], capture_output=True, text=True, timeout=60, cwd=cwd,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        return proc.returncode, proc.stdout, proc.stderr
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse's usage errors
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(old)
    return rc, out.getvalue(), err.getvalue()


def test_the_table_is_large_and_ids_unique() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, world: World, tmp_path: Path) -> None:
    if case.root_only and os.geteuid() != 0:
        pytest.skip("needs root (the case is about what root could clobber)")
    if case.skip_if():
        pytest.skip("not applicable on this machine")
    d = tmp_path / "case"
    d.mkdir()
    if case.setup is not None:
        case.setup(d, world)
    subst = {"d": str(d), "synth": str(world.synth), "run": str(world.run), "image": str(world.image)}
    argv = [a.format(**subst) for a in case.argv]
    before = {p: _digest(d / p) for p in case.precious}

    rc, out, err = _run(argv, case.subprocess, d)

    command = " ".join(argv[:2]) if argv[0] in ("data", "curate") else argv[0]  # `omniseg data convert: error:`
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    assert rc == case.code, f"exit {rc}, want {case.code}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    if case.code == 1:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(f"omniseg {command}: error: ")]
        assert len(errors) == 1, err
        assert case.names.format(**subst) in errors[0], errors[0]
    elif case.code == 2:
        last = err.strip().splitlines()[-1]
        assert "error:" in last and case.names in last, err
    if case.check is not None:
        case.check(out, err, d)
    assert _leftovers(d) == [], _leftovers(d)
    for p in case.absent:
        assert not (d / p).exists(), f"{p} was written despite the error"
    for p, digest in before.items():
        assert _digest(d / p) == digest, f"{p} was changed"
    if case.check_after is not None:
        assert case.check_after(d), f"{case.id}: the input was clobbered"


def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    """The one-line policy hides tracebacks; --debug brings them back (for bug reports)."""
    (tmp_path / "e.json").write_text("3")
    rc, _, err = _run(["--debug", "data", "stats", str(tmp_path / "e.json")], True, tmp_path)
    assert rc == 1
    assert "Traceback" in err and "e.json" in err.strip().splitlines()[-1]


def test_an_internal_error_is_reported_as_a_bug(monkeypatch, tmp_path: Path) -> None:
    """Exceptions that are not user errors say so (they are what this table hunts for)."""
    import omniseg.commands.data as data_cmd

    def boom(args):
        raise KeyError("oops")

    monkeypatch.setattr(data_cmd, "main", boom)
    rc, _, err = _run(["data", "stats", str(tmp_path)], False, tmp_path)
    assert rc == 1
    assert "internal error: KeyError" in err and "Traceback" not in err


def test_images_used_by_the_table_are_real(world: World) -> None:
    """Guards the fixtures: the shared image decodes and the run has weights, so error rows fail for their reason."""
    assert np.asarray(Image.open(world.image)).shape[:2] == (SIZE, SIZE)
    assert _latest_weights(world.run).exists()


def test_ctrl_c_exits_130_with_one_line(monkeypatch, tmp_path: Path) -> None:
    import omniseg.commands.data as data_cmd

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_cmd, "main", interrupted)
    rc, _, err = _run(["data", "stats", str(tmp_path)], False, tmp_path)
    assert rc == 130
    assert err.strip() == "omniseg data stats: interrupted"


def test_a_closed_pipe_is_not_an_error(monkeypatch, tmp_path: Path) -> None:
    """`omniseg data convert ... --out - | head`: the reader leaving early ends the command quietly (141)."""
    import omniseg.commands.data as data_cmd

    def pipe_closed(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(data_cmd, "main", pipe_closed)
    rc, _, err = _run(["data", "stats", str(tmp_path)], False, tmp_path)
    assert (rc, err) == (141, "")
