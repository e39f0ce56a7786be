"""replication.arguments.number: the range checks every command's numeric options share."""
import argparse
import math

import pytest

from replication.arguments import number, positive_int


def test_number_takes_its_bounds_as_documented():
    """`low` is allowed unless `above`, `high` is always allowed; non-finite text and whole-number text that is not
    whole are refused (prepare's --threshold is number(float, 0, 1, above=True), --size number(int, 2))."""
    threshold, size = number(float, 0, 1, above=True), number(int, 2)
    assert threshold("1") == 1.0 and threshold("1e-9") == 1e-9 and size("2") == 2 and positive_int("1") == 1
    for parse, text in ((threshold, "0"), (threshold, "1.0000001"), (size, "1"), (size, "2.5"), (size, "x"),
                        (number(float, 0), "inf"), (number(float, 0), "nan"), (number(float, -math.inf), "-inf")):
        with pytest.raises(argparse.ArgumentTypeError, match=f"got {text!r}"):
            parse(text)
