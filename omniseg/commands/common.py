"""Argument helpers shared by the command modules."""

from __future__ import annotations

import argparse

from omniseg.data.errors import BadRecords


def add_bad_record_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--on-bad-record",
        choices=("error", "skip"),
        default="error",
        help="stop with an error naming the file and record (default), or skip bad records and report counts",
    )


def bad_records(args: argparse.Namespace) -> BadRecords:
    return BadRecords(policy=args.on_bad_record)


def report_skips(bad: BadRecords) -> None:
    if bad.total:
        print(bad.summary())
