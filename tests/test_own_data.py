"""README "Train on your own COCO data": its command block, run as written through omniseg.cli.main
on a 2-image cut of coco-mini with 2 iterations, so the section cannot rot."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest

from omniseg.cli import main

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Train on your own COCO data"
#: the only edits made to the README's commands: tiny size
TINY = {"train.max_iter": "2", "data.long_side": "128"}


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end >= 0 else None]


def code_blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def commands(block: str) -> tuple[dict[str, str], list[list[str]]]:
    """``(variables, omniseg argument lists)`` of a bash block of ``VAR=value`` and ``omniseg ...`` lines."""
    vars_: dict[str, str] = {}
    cmds: list[list[str]] = []
    for line in block.replace("\\\n", " ").splitlines():
        if not line.strip():
            continue
        m = re.fullmatch(r"([A-Z_]+)=(\S+)", line.strip())
        if m:
            vars_[m[1]] = m[2]
            continue
        argv = shlex.split(line)
        assert argv[0] == "omniseg", f"README block: not an omniseg command: {line!r}"
        cmds.append(argv[1:])
    return vars_, cmds


def overrides(argv: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in argv if "=" in a)


def coco_mini() -> Path:
    env = os.environ.get("OMNISEG_COCO_MINI")
    root = Path(env) if env else (REPO / "../shared/data/coco-mini").resolve()
    if not (root / "annotations" / "instances_train2017.json").is_file():
        pytest.skip(f"coco-mini not found at {root} (set OMNISEG_COCO_MINI to its folder)")
    return root


def tiny_coco(real: Path, out: Path, num_images: int = 2) -> Path:
    """The COCO layout of ``real`` with its first ``num_images`` images' annotations (images linked)."""
    data = json.loads((real / "annotations" / "instances_train2017.json").read_text())
    data["images"] = data["images"][:num_images]
    ids = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    (out / "annotations").mkdir(parents=True)
    (out / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    (out / "train2017").symlink_to(real / "train2017")
    return out


def test_readme_block_parses():
    vars_, cmds = commands(code_blocks(readme_section(), "bash")[0])
    assert vars_ == {"COCO": "../shared/data/coco-mini"}
    assert [c[0] for c in cmds] == ["data", "train", "eval", "segment"]
    train = overrides(cmds[1])
    assert train["data.train_images"] == "$COCO/train2017" and train["data.split_file"] == "coco_mini_split.json"
    assert set(TINY) <= set(train)


def test_readme_sequence_runs(tmp_path, monkeypatch, capsys):
    section = readme_section()
    vars_, cmds = commands(code_blocks(section, "bash")[0])
    (split,) = code_blocks(section, "json")
    real = coco_mini()
    assert (REPO / vars_["COCO"]).resolve() == real or "OMNISEG_COCO_MINI" in os.environ
    coco = tiny_coco(real, tmp_path / "coco")
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    train = next(c for c in cmds if c[0] == "train")
    (tmp_path / overrides(train)["data.split_file"]).write_text(split)
    for argv in cmds:
        argv = [a.replace("$COCO", str(coco)) for a in argv]
        if argv[0] == "train":
            argv = [f"{a.split('=')[0]}={TINY[a.split('=')[0]]}" if a.split("=")[0] in TINY else a for a in argv]
        assert main(argv) == 0, argv
    out = capsys.readouterr().out
    assert '"mask_AP/base"' in out and '"mask_AP/novel"' in out  # the split file's groups

    # what training saw: the split file's base classes keep masks, every other class has boxes only
    from omniseg.recipes.table import load_experiment

    run = Path(overrides(train)["train.output_dir"])
    assert (run / "val_predictions.json").is_file()
    recipe, cfg = load_experiment(REPO / train[1], [a.replace("$COCO", str(coco)) for a in train[2:]])
    seen = recipe.train_data(cfg, False).rs
    base = set(json.loads(split)["base"])
    kinds = {(i.text in base, i.mask is not None) for r in seen for i in r.instances}
    assert kinds == {(True, True), (False, False)}
