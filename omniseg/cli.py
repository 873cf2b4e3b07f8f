"""``omniseg`` command line: one sub-command per module in :mod:`omniseg.commands`.

Each command module defines ``register(parser)`` (adds its arguments) and
``main(args) -> int``. Modules are imported only when their command runs, so
``omniseg --help`` stays fast.

This is the one error boundary of the program: a user error (:class:`omniseg.errors.UserError`,
or an ``OSError`` such as a missing file, a read-only folder or a full disk) ends the command with
one line ``omniseg <cmd> [<action>]: error: <file>[:<record>]: <what>`` and exit status 1 (2 for a usage
error). Ctrl-C exits 130 and SIGTERM 143, after ``finally`` blocks have removed temporary files.
Anything else is a bug and is reported as an internal error. ``--debug`` (anywhere on the command
line) or ``OMNISEG_DEBUG=1`` shows the traceback instead.

Threads: each process runs torch on the count :func:`omniseg.engine.threads.choose_threads` picks (one thread on a
machine of 2 cores or fewer, an equal share of the cores when torchrun starts several processes per
machine, torch's own choice otherwise); ``OMP_NUM_THREADS`` set by the user is respected, and
``--threads N`` (anywhere on the command line) or ``train.threads=N`` overrides both. Standard
output is line-buffered when it is not a terminal, so a piped or redirected log shows each line as
it is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import io
import logging
import os
import signal
import sys
import traceback

from omniseg.engine.threads import apply_threads
from omniseg.errors import Terminated, UserError

logger = logging.getLogger(__name__)

#: command name -> (module, one-line help). A plain dict: what you see is what runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("omniseg.commands.demo", "run the main job on the synthetic world"),
    "data": ("omniseg.commands.data", "generate, inspect and convert datasets"),
    "eval": ("omniseg.commands.evaluate", "score predictions against ground truth"),
    "viz": ("omniseg.commands.viz", "draw annotations/predictions to PNGs and an HTML page"),
    "segment": ("omniseg.commands.segment", "predict instances in images with a trained checkpoint"),
    "train": ("omniseg.commands.train", "train a model from a YAML config (torchrun for many GPUs / nodes)"),
    "pretrain": ("omniseg.commands.pretrain", "pretrain a backbone (ResNet: dense, on the pretraining world; ViT: MAE)"),
    "curate": ("omniseg.commands.curate", "curate cheap labels: ALPs (phrases + approximate boxes) from narratives"),
    "serve": ("omniseg.commands.serve", "serve a trained model over local HTTP, with a web page to try it"),
    "export": ("omniseg.commands.export", "export a trained model (ONNX)"),
    "autolabel": ("omniseg.commands.autolabel", "masks from boxes: add a box-prompted model's masks to a box file"),
}

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `cmd | head`


def version() -> str:
    """The installed distribution's version; ``omniseg.__version__`` when running from a source tree."""
    try:
        return importlib.metadata.version("omniseg")
    except importlib.metadata.PackageNotFoundError:
        from omniseg import __version__

        return __version__


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _pop_threads(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], int | None]:
    """``argv`` without ``--threads N`` / ``--threads=N`` (allowed anywhere) and N (the last one given)."""
    rest, threads, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == "--threads" or a.startswith("--threads="):
            if a == "--threads" and i + 1 == len(argv):
                parser.error("argument --threads: expected one argument")
            value = a.split("=", 1)[1] if "=" in a else argv[i + 1]
            try:
                threads = _positive_int(value)
            except argparse.ArgumentTypeError as e:
                parser.error(f"argument --threads: {e}")
            i += 1 if "=" in a else 2
            continue
        rest.append(a)
        i += 1
    return rest, threads


def build_parser(argv_command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniseg", description="Open-vocabulary instance segmentation from cheap, mixed supervision."
    )
    parser.add_argument("--version", action="version", version=f"omniseg {version()}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="torch threads per process (default: 1 on <= 2 cores or under torchrun with "
                             "several processes, else torch's choice; OMP_NUM_THREADS is respected)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == argv_command:  # import only the module that will run
            importlib.import_module(module).register(p)
    return parser


#: a SIGTERM arrived in this process (set before Terminated is raised; see main's internal-error branch)
_terminating = False


def _raise_terminated(signum: int, frame: object) -> None:
    global _terminating
    _terminating = True
    raise Terminated()


def error_message(e: BaseException) -> str:
    """The one line for a user error; an OSError is shown as ``<file>: <reason>``."""
    if isinstance(e, OSError) and not isinstance(e, UserError) and e.strerror:
        where = f"{e.filename}: " if e.filename is not None else ""
        return f"{where}{e.strerror}"
    return str(e) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("OMNISEG_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    argv, threads = _pop_threads(argv, build_parser())
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    if args.command in ("train", "pretrain") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides += extra  # `train c.yaml --overwrite key=value`: overrides after a flag
    elif extra:
        parser.parse_args(argv)  # the usual usage error (exit 2) for what is left
    if args.command is None:
        parser.print_help()
        return 0
    action = getattr(args, f"{args.command}_command", None)  # `data convert`, `curate alps`: name the action
    prog = f"omniseg {args.command}" + (f" {action}" if action else "")
    if isinstance(sys.stdout, io.TextIOWrapper) and not sys.stdout.isatty():
        sys.stdout.reconfigure(line_buffering=True)  # `omniseg demo | tee log`: each line as it comes
    apply_threads(threads)
    global _terminating
    _terminating = False
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).main(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:  # `omniseg ... --out - | head`: the reader left; not an error of ours
        with contextlib.suppress(OSError):  # keep Python from complaining again when it flushes stdout
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (UserError, OSError) as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {error_message(e)}", file=sys.stderr)
        return e.exit_code if isinstance(e, UserError) else 1
    except Exception as e:  # a bug in omniseg, not in the input
        if _terminating:
            # Terminated raised inside a C extension's call back into Python can come out as another exception:
            # numpy 2 retries torch's `Tensor.__array__(dtype)` without `copy=` after the TypeError, and re-raises
            # that TypeError when the retry fails (seen when SIGTERM landed there). The user asked to stop.
            print(f"{prog}: terminated", file=sys.stderr)
            return EXIT_TERMINATED
        if debug:
            raise
        print(f"{prog}: internal error: {type(e).__name__}: {e} "
              "(this is a bug; rerun with --debug for the traceback and report it)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
