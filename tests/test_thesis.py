"""Every number stored in replication.thesis is read back from the thesis text.

The text is ../shared/thesis/thesis.txt (not part of the repository); the tests skip without it.
Each table is located between two anchor strings; its tab-separated rows are parsed (the row label,
when there is one, is dropped) and the sequence of numbers must equal the stored values in order.
"""
import re
from pathlib import Path

import pytest

from replication import thesis

THESIS = Path(__file__).resolve().parents[2] / "shared" / "thesis" / "thesis.txt"

# table id -> (text right before the table's rows, text right after them)
ANCHORS = {
    "3.2/age": ("Age Group\tSamples", "Gender\tSamples"),
    "3.2/gender": ("Gender\tSamples", "Emotion\tSamples"),
    "3.2/emotion": ("Emotion\tSamples", "(a) Task distribution"),
    "3.2a": ("Task\tSamples\t%", "3.3 Linear probing"),
    "4.1": ("UTK-Age\tUTK-Gender", "Table 4.1:"),
    "4.2": ("Age*\tGender\tEmotion\tGlobal", "* Average"),
    "4.3": ("Component\tParameters", "Table 4.3:"),
    "4.4": ("Table 4.4:", "Table 4.5:"),
    "4.5": ("Table 4.5:", "* Average"),
    "4.6": ("Table 4.6:", "4.3.1 Gender"),
    "4.7": ("Table 4.7:", "From table 4.7"),
    "4.8": ("Table 4.8:", "Table 4.9:"),
    "4.9": ("Table 4.9:", "Table 4.10:"),
    "4.10": ("Table 4.10:", "Table 4.11:"),
    "4.11": ("Table 4.11:", "Table 4.12:"),
    "4.12": ("Table 4.12:", "4.4.2 Gender"),
    "4.13": ("Method\tAge (Acc. %)", "Table 4.13:"),
    "4.14": ("Table 4.14:", "One of our primary goals"),
    "4.15": ("C-Index", "Table 4.15:"),
    "4.16": ("Model\tAvg Age Acc.", "Table 4.16:"),
}

NUMBER = re.compile(r"(\d[\d ,]*(?:\.\d+)?)\s*(?:%|MAE)?")


@pytest.fixture(scope="module")
def text():
    if not THESIS.exists():
        pytest.skip(f"thesis text not found at {THESIS}")
    return THESIS.read_text(encoding="utf-8")


def block(text: str, start: str, end: str) -> str:
    i = text.index(start) + len(start)
    return text[i:text.index(end, i)]


def field_number(field: str) -> float | None:
    """'15 699' -> 15699, '1,058,825' -> 1058825, '48.62%' -> 48.62, '3.7 MAE' -> 3.7."""
    m = NUMBER.fullmatch(field.strip())
    return float(m.group(1).replace(" ", "").replace(",", "")) if m else None


def table_numbers(lines: str) -> list[float]:
    numbers = []
    for line in lines.splitlines():
        fields = line.split("\t")
        if len(fields) < 2:          # captions, headers in prose, blank lines
            continue
        if field_number(fields[0]) is None:
            fields = fields[1:]      # drop the row label
        numbers += [n for n in map(field_number, fields) if n is not None]
    return numbers


def stored_numbers(table: thesis.Table) -> list[float]:
    out = []
    for values in table.rows.values():
        for v in values:
            if isinstance(v, str):
                v = field_number(v)
            if v is not None:
                out.append(float(v))
    return out


@pytest.mark.parametrize("table_id", sorted(ANCHORS))
def test_table_matches_text(text, table_id):
    numbers = table_numbers(block(text, *ANCHORS[table_id]))
    assert numbers == stored_numbers(thesis.TABLES[table_id])


def test_parameter_figures_match_text(text):
    """§3.3–3.6.1: 'Trainable parameters: N', 'Total parameters: N', 'Percentage of trainable: P%'."""
    pattern = re.compile(r"Trainable parameters:\s*([\d,]+)\s*\n\s*(?:\n\s*)?"
                         r"Total parameters:\s*([\d,]+)\s*\n\s*(?:\n\s*)?"
                         r"Percentage of trainable:\s*([\d.]+)%")
    found = [tuple(field_number(g) for g in m.groups()) for m in pattern.finditer(text)]
    assert found == [tuple(map(float, row)) for row in thesis.PARAMS.rows.values()]


def test_fig_4_3_captions_match_text(text):
    found = re.findall(r"balanced accuracy of ([\d.]+) \(Acc\. ([\d.]+)\)", text)
    assert [tuple(map(float, f)) for f in found] == list(thesis.FIG_4_3.rows.values())


def test_clip_footnote_matches_text(text):
    m = re.search(r"Age: ([\d.]+)% and ([\d.]+)%; Gender: ([\d.]+)% and ([\d.]+)%", text)
    ages, genders = thesis.CLIP_GROUP_ACCURACIES["age"], thesis.CLIP_GROUP_ACCURACIES["gender"]
    assert tuple(map(float, m.groups())) == ages + genders
    # the table's CLIP row is the mean of the two groups, as the footnote says
    row = thesis.TABLE_4_13.rows["CLIP ViT-L/14 336px"]
    assert row[0] == pytest.approx(sum(ages) / 2, abs=0.005)
    assert row[2] == pytest.approx(sum(genders) / 2, abs=0.005)


def test_table_3_1_matches_text(text):
    rows = block(text, "Dataset\tTrain\tVal\tTest\tTasks", "3.2 Balanced Sampling").strip()
    expected = ["\t".join((thesis.DATASET_NAMES[k], *v)) for k, v in thesis.TABLE_3_1.rows.items()]
    assert rows.splitlines() == expected


def test_every_table_is_checked():
    assert set(thesis.TABLES) == set(ANCHORS) | {"params", "fig4.3", "3.1"}


def test_literature_rows_are_cited_and_ours_are_not():
    lit = thesis.TABLE_4_13.literature
    assert set(lit) == {"MiVOLO-224", "MiVOLO-384", "CLIP ViT-L/14 336px", "ResEmoteNet",
                        "APViT", "POSTER++"}
    assert all(re.match(r"\[\d+\] ", c) for c in lit.values())
    assert {"mtlora", "dora"}.isdisjoint(lit)


def test_table_shapes_and_lookup():
    for table in thesis.TABLES.values():
        assert all(len(v) == len(table.columns) for v in table.rows.values()), table.id
    assert thesis.TABLE_4_5.value("dora", "average") == 63.72
