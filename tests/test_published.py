"""The published numbers (docs/reproduction.md, README.md's tables) print no interval its quantity
cannot take and none of zero width: the report's intervals are bounded by construction
(src/intervals.py), and this reads what was committed, so a report written by an older or broken
version of the code fails here.

An interval is printed as `value [low, high]`: a signed value (+0.30, -12.92) is a difference, in
accuracy points or loss, and its bounds lie within +-100; a value ending in x is a ratio, its bounds
above 0; any other value (an accuracy in %, a time in s) has bounds at or above 0."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = [ROOT / "docs" / "reproduction.md", ROOT / "README.md"]
NUMBER = r"[-+]?\d+(?:\.\d+)?"
INTERVAL = re.compile(rf"(?<![\w.])({NUMBER})(%|x)? \[({NUMBER})%?, ({NUMBER})%?\]")


def printed_intervals(path: Path) -> list[tuple[str, str, str, str]]:
    return INTERVAL.findall(path.read_text())


def test_the_pattern_reads_the_reports_three_kinds_of_interval():
    found = INTERVAL.findall("85.49% (-0.33 [-1.09, +0.42] points), train time 0.71x [0.57, 0.88]; 96.59 [96.23, 96.93]")
    assert found == [("-0.33", "", "-1.09", "+0.42"), ("0.71", "x", "0.57", "0.88"), ("96.59", "", "96.23", "96.93")]


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda path: path.name)
def test_no_published_interval_lies_outside_its_quantitys_range_or_has_zero_width(path):
    intervals = printed_intervals(path)
    assert intervals, f"{path.name} prints no interval: the pattern no longer reads the report"
    wrong = []
    for value, unit, low, high in intervals:
        text = f"{value}{unit} [{low}, {high}]"
        if low == high or float(low) > float(high):
            wrong.append(f"{text}: zero width or reversed")
        elif not float(low) <= float(value) <= float(high):
            wrong.append(f"{text}: the value lies outside its interval")
        elif unit == "x" and float(low) <= 0:
            wrong.append(f"{text}: a ratio at or below 0")
        elif value[0] in "+-" and unit != "x" and not -100 <= float(low) <= float(high) <= 100:
            wrong.append(f"{text}: a difference outside +-100")
        elif value[0] not in "+-" and unit != "x" and float(low) < 0:
            wrong.append(f"{text}: an accuracy or a time below 0")
    assert not wrong, f"{path.name}: " + "; ".join(wrong)
