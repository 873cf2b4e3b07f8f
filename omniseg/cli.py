"""``omniseg`` command line: one sub-command per module in :mod:`omniseg.commands`.

Each command module defines ``register(parser)`` (adds its arguments) and
``main(args) -> int``. Modules are imported only when their command runs, so
``omniseg --help`` stays fast. Bad input (a :class:`~omniseg.data.errors.BadRecordError` or a
missing file) ends the command with exit status 1 and a one-line message naming the file.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: command name -> (module, one-line help). A plain dict: what you see is what runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("omniseg.commands.demo", "run the main job on the synthetic world"),
    "data": ("omniseg.commands.data", "generate, inspect and convert datasets"),
    "eval": ("omniseg.commands.evaluate", "score predictions against ground truth"),
    "viz": ("omniseg.commands.viz", "draw annotations/predictions to PNGs and an HTML page"),
    "segment": ("omniseg.commands.segment", "predict instances in images with a trained checkpoint"),
    "train": ("omniseg.commands.train", "train a model from a YAML config (torchrun for many GPUs / nodes)"),
    "curate": ("omniseg.commands.curate", "curate cheap labels: ALPs (phrases + approximate boxes) from narratives"),
}


def build_parser(argv_command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniseg", description="Open-vocabulary instance segmentation from cheap, mixed supervision."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == argv_command:  # import only the module that will run
            importlib.import_module(module).register(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from omniseg.data.errors import BadRecordError

    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).main(args) or 0)
    except (BadRecordError, FileNotFoundError, NotADirectoryError) as e:
        # bad input: the message already names the file (and record); a traceback adds nothing
        print(f"omniseg {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
