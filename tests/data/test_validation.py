"""``omniseg.data.formats.validation``: parse errors become one reason naming the line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from omniseg.data.errors import BadRecordError
from omniseg.data.formats.validation import Invalid, load_json_file, parse_json


def test_an_integer_with_too_many_digits_names_the_line(tmp_path: Path) -> None:
    digits = "7" * (sys.get_int_max_str_digits() + 700)
    path = tmp_path / "big.json"
    path.write_text('{"images": [],\n "annotations": [{"id": ' + digits + '}]}\n')
    with pytest.raises(BadRecordError) as info:
        load_json_file(path)
    assert str(info.value) == (f"{path}: file: malformed JSON at line 2: number with too many digits "
                               f"(more than {sys.get_int_max_str_digits()})")
    assert "set_int_max_str_digits" not in str(info.value)


def test_long_digit_runs_in_bytes_and_floats() -> None:
    digits = "1" * (sys.get_int_max_str_digits() + 1)
    with pytest.raises(Invalid, match="^malformed JSON at line 1: number with too many digits"):
        parse_json(b"[" + digits.encode() + b"]")
    assert parse_json(f'["{digits}", 1.5]') == [digits, 1.5]  # a long string of digits is fine
