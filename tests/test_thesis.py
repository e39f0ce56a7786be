"""Every number stored in replication.thesis is read back from the thesis text.

The text is ../shared/thesis/thesis.txt (not part of the repository); the tests skip without it.
Each table is located between two anchor strings; its tab-separated rows are parsed (the row label,
when there is one, is dropped) and the sequence of numbers must equal the stored values in order.
"""
import json
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
    assert float(row[2]) == pytest.approx(sum(genders) / 2, abs=0.005)  # kept as printed, "97.1"
    # the citation repeats the four group values, each under its task
    citation = thesis.TABLE_4_13.literature["CLIP ViT-L/14 336px"]
    assert citation.endswith("(age {} and {}, gender {} and {})".format(*m.groups()))


def test_table_4_1_note_quotes_section_4_2s_range(text):
    """§4.2's prose gives the zero-shot age range up to 48.72%, a value not in Table 4.1 (highest 48.62%)."""
    low, high = map(float, re.search(r"age group classification the accuracy values go from ([\d.]+)% to ([\d.]+)%",
                                     text).groups())
    ages = [v for c, v in zip(thesis.TABLE_4_1.columns, thesis.TABLE_4_1.rows["zs"]) if c.endswith("/age")]
    assert low == min(ages) and high != max(ages)
    assert f"{high:.2f}%" in thesis.TABLE_4_1.cell_notes["zs", "utkface/age"]
    assert max(ages) == thesis.TABLE_4_1.value("zs", "utkface/age")


def test_fig_4_2_prints_no_balanced_accuracy(text):
    """§4.7.1 gives only differences to APViT / POSTER++, which FIG_4_2's note repeats."""
    section = block(text, "4.7.1 Emotion Recognition confusion matrices", "4.7.2")
    assert not re.search(r"balanced accuracy of [\d.]+ \(Acc", section)  # no Fig. 4.3-like caption
    assert "less than 0.2 percentage points for our MTLoRA model and of 0.46" in section
    assert "surpassing it in this metric by 0.2% and DoRA lagging behind by just 0.07%" in section
    assert all(v == (None,) for v in thesis.FIG_4_2.rows.values())


def test_table_3_1_matches_text(text):
    rows = block(text, "Dataset\tTrain\tVal\tTest\tTasks", "3.2 Balanced Sampling").strip()
    expected = ["\t".join((thesis.DATASET_NAMES[k], *v)) for k, v in thesis.TABLE_3_1.rows.items()]
    assert rows.splitlines() == expected


def test_every_table_is_checked():
    assert set(thesis.TABLES) == set(ANCHORS) | {"params", "fig4.2", "fig4.3", "3.1", "sizes", "conclusion"}


def test_literature_rows_are_cited_and_ours_are_not():
    lit = thesis.TABLE_4_13.literature
    assert set(lit) == {"MiVOLO-224", "MiVOLO-384", "CLIP ViT-L/14 336px", "ResEmoteNet",
                        "APViT", "POSTER++"}
    assert all(re.match(r"\[\d+\] ", c) for c in lit.values())
    assert {"mtlora", "dora"}.isdisjoint(lit)


def test_each_table_is_in_the_section_it_names(text):
    """A table's ``section`` is the heading its caption ("Table 4.7:") stands under, or one above it."""
    lines = text.splitlines()
    for table in thesis.TABLES.values():
        number = re.match(r"(\d\.\d+)", table.id)
        if not number:  # sizes, params, fig4.x, conclusion: no "Table" caption
            continue
        caption = next(i for i, line in enumerate(lines) if line.startswith(f"Table {number[1]}:"))
        heading = next(re.match(r"(\d(?:\.\d+)+) [A-Z]", line)[1] for line in reversed(lines[:caption])
                       if re.match(r"\d(?:\.\d+)+ [A-Z]", line))
        section = re.match(r"§([\d.]+)", table.section)[1]
        assert heading == section or heading.startswith(section + "."), (table.id, heading, table.section)


def test_tables_are_read_only():
    """The tables are module constants shared by every notebook: an assignment to one is refused."""
    with pytest.raises(AttributeError):
        thesis.TABLE_4_1.rows = {}


def test_table_shapes_and_lookup():
    for table in thesis.TABLES.values():
        assert all(len(v) == len(table.columns) for v in table.rows.values()), table.id
    assert thesis.TABLE_4_5.value("dora", "average") == 63.72
    for table in thesis.TABLES.values():  # every cell note names a cell of its table
        assert all(row in table.rows and column in table.columns
                   for row, column in table.cell_notes), table.id


# --- the thesis's own arithmetic -------------------------------------------------------------

# §4: a task's average is the mean over these test sets (VGGFace2 left out of the age average)
AVERAGED = {"emotion": ("rafdb/emotion",), "age": ("utkface/age", "fairface/age"),
            "gender": ("utkface/gender", "fairface/gender", "vggface2/gender")}
SINGLE_TASK = {"emotion": "4.4", "age": "4.5", "gender": "4.6"}   # §4.3, per test set
MULTI_TASK = {"emotion": "4.8", "age": "4.9", "gender": "4.10"}   # §4.4, per test set


def task_average_sources(tables: dict, row: str, task: str) -> list:
    """The cells a task average of ``row`` is the mean of (the zero-shot ones are in Table 4.1)."""
    table_id = "4.1" if row == "zs" else tables[task]
    return [(table_id, row, column) for column in AVERAGED[task]]


def derived_cells() -> dict:
    """(table, row, column) of every printed cell the thesis computes or repeats from other printed
    cells -> those cells (the printed value should be their mean)."""
    out = {}
    for task in AVERAGED:
        out["4.2", "zs", task] = task_average_sources(SINGLE_TASK, "zs", task)
        out["4.16", "dora", task] = task_average_sources(MULTI_TASK, "dora", task)
        # §4.4: the multi-task LP rows are the single-task probes
        for column in thesis.TABLES[MULTI_TASK[task]].columns:
            out[MULTI_TASK[task], "lp", column] = [(SINGLE_TASK[task], "lp", column)]
    out["4.2", "zs", "global"] = [("4.2", "zs", task) for task in AVERAGED]
    for table_id, task in (("4.5", "age"), ("4.6", "gender")):
        for row in thesis.TABLES[table_id].rows:
            out[table_id, row, "average"] = [(table_id, row, c) for c in AVERAGED[task]]
    for table_id, per_test_set in (("4.11", SINGLE_TASK), ("4.12", MULTI_TASK)):
        for row in thesis.TABLES[table_id].rows:
            for task in AVERAGED:
                out[table_id, row, task] = task_average_sources(per_test_set, row, task)
            out[table_id, row, "overall"] = [(table_id, row, task) for task in AVERAGED]
    for row in thesis.TABLE_4_7.rows:
        method, weighting = row.split("/")
        if weighting == "uw":  # §4.4.1: the multi-task models of Tables 4.8-4.12 use UW
            for task in AVERAGED:
                out["4.7", row, task] = task_average_sources(MULTI_TASK, method, task)
        out["4.7", row, "overall"] = [("4.7", row, task) for task in AVERAGED]
    for row in thesis.TABLE_4_14.rows:  # the multi-task overall average (merged DoRA = DoRA)
        method = {"dora_merged": "dora"}.get(row, row)
        out["4.14", row, "avg_acc"] = [("4.12", method, task) for task in AVERAGED]
    for method in ("mtlora", "dora"):  # Table 4.13's own rows and Fig. 4.3's captions
        for column in thesis.TABLE_4_13.columns:
            out["4.13", method, column] = [(MULTI_TASK[column.split("/")[1]], method, column)]
        for dataset in ("fairface", "utkface"):
            out["fig4.3", f"{method}/{dataset}", "accuracy"] = [("4.9", method, f"{dataset}/age")]
    # §5.1 repeats cells of Tables 4.3 and 4.14 and of §3.3-3.6.1
    out["conclusion", "zs", "avg_acc"] = [("4.14", "zs", "avg_acc")]
    out["conclusion", "zs", "gflops"] = [("4.3", "gflops", "value")]
    out["conclusion", "dora", "avg_acc"] = [("4.14", "dora_merged", "avg_acc")]
    out["conclusion", "dora", "gflops"] = [("4.14", "dora_merged", "gflops")]
    out["conclusion", "dora", "percent"] = [("params", "dora", "percent")]
    out["conclusion", "ft4", "percent"] = [("params", "ft4", "percent")]
    return out


def test_derived_cells_disagree_exactly_where_a_cell_note_says_so():
    """A printed mean of n >= 2 two-decimal cells may differ from their recomputed mean by up to
    0.005 (rounding of the cells) + 0.005 (rounding of the mean); a repeated cell must be equal."""
    derived = derived_cells()
    disagree = set()
    for (table_id, row, column), sources in derived.items():
        mean = sum(thesis.TABLES[t].value(r, c) for t, r, c in sources) / len(sources)
        tolerance = 0.01 if len(sources) > 1 else 0.0
        if abs(thesis.TABLES[table_id].value(row, column) - mean) > tolerance + 1e-9:
            disagree.add((table_id, row, column))
    noted = {cell for cell in derived if cell[1:] in thesis.TABLES[cell[0]].cell_notes}
    assert disagree == noted
    # the check is not vacuous: the review's findings are among the disagreements
    assert {("4.5", "lp", "average"), ("4.5", "ap", "average"), ("4.9", "lp", "fairface/age"),
            ("4.11", "lp", "age"), ("4.12", "lp", "emotion"), ("4.14", "zs", "avg_acc")} <= disagree


def test_parameter_percentages_disagree_exactly_where_a_cell_note_says_so():
    # DoRA's 8.47 agrees with its counts; its note is about §3.6's text, which also writes 8.41%.
    for method, (trainable, total, percent) in thesis.PARAMS.rows.items():
        disagrees = round(100 * trainable / total, 2) != percent
        assert disagrees == ((method, "percent") in thesis.PARAMS.cell_notes and method != "dora"), method
    assert thesis.PARAMS.cell_notes.keys() == {("ap", "percent"), ("ft4", "percent"),
                                               ("dora", "percent"), ("mtlora", "percent")}
    assert "8.41%" in thesis.PARAMS.cell_notes["dora", "percent"]


def test_section_2_7_sizes_are_the_texts(text):
    """§2.7 gives the sizes in prose, not in a table: each stored value is read back from its sentence."""
    section = block(text, "2.7.1 FairFace\n", "Figure 2.13: CelebA-HQ")
    stated = {"fairface": "contains 108,501 images", "utkface": "contains 24,103 images",
              "lagenda": "contains 67,159 samples", "vggface2": "contains 3.31 million images",
              "celebahq": "provides 30,000 high-quality images"}
    for dataset, phrase in stated.items():
        assert phrase in section, dataset
        number = phrase.split()[1]
        expected = 3.31e6 if "million" in phrase else int(number.replace(",", ""))
        assert thesis.SECTION_2_7.value(dataset, "images") == expected, dataset
    assert set(thesis.SECTION_2_7.rows) == set(stated)


def test_the_encoder_configs_are_table_2_1s(text):
    """Table 2.1 (Meta's B, L and G scales): width, depth, MLP, heads of both towers, the CLIP dimension and the
    text context, read from the thesis, are those the encoder is built from (L is the thesis's model, §2.3)."""
    from replication.config import get_config

    lines = block(text, "CLIP Dim\tContext\n", "Table 2.1:").strip().splitlines()
    configs = {"B": "PE-Core-B16-224", "L": "PE-Core-L14-336", "G": "PE-Core-G14-448"}
    for vision_line, text_line in zip(lines[::2], lines[1::2]):
        scale, _, _, *vision = vision_line.split("\t")
        width, depth, mlp, heads, clip_dim, context = map(int, vision)
        cfg = get_config(configs[scale])
        v, t = cfg.vision, cfg.text
        assert (v.width, v.layers, v.mlp_dim, v.heads, v.output_dim, t.context_length) == (
            width, depth, mlp, heads, clip_dim, context), scale
        assert (t.width, t.layers, t.mlp_dim, t.heads, t.output_dim) == (
            *map(int, text_line.split("\t")[3:7]), clip_dim), scale
    assert [line.split("\t")[0] for line in lines[::2]] == ["B", "L", "G"]


def test_section_5_1_figures_are_the_texts(text):
    """§5.1 states its figures in prose: each stored value is read back from its sentence."""
    section = block(text, "5.1 Analysis of findings\n", "5.2 Future works")
    for phrase in ("modest capability (69.61% overall average)", "from 699.76 GFLOPs to \\approx 350 GFLOPs",
                   "highest overall average accuracy (84.07%)", "computationally efficient (352 GFLOPs)",
                   "(8.47% vs. 20.13%)"):
        assert phrase in section, phrase
    stored = {(r, c): v for r, values in thesis.SECTION_5_1.rows.items()
              for c, v in zip(thesis.SECTION_5_1.columns, values) if v is not None}
    assert stored == {("zs", "avg_acc"): 69.61, ("zs", "gflops"): 699.76, ("dora", "avg_acc"): 84.07,
                      ("dora", "gflops"): 352, ("dora", "percent"): 8.47, ("ft4", "percent"): 20.13}


# --- the notebooks' prose --------------------------------------------------------------------

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
DECIMAL = re.compile(r"(?<![\d.])\d+\.\d+(?![\d.])")  # 48.62, not a section number such as 4.3.1


def test_notebook_prose_states_only_the_theses_numbers(text):
    """Every decimal the notebooks' markdown states is one the thesis prints, or one derived here from
    the thesis's own numbers: a misquoted thesis figure fails, and so does a demo result written into the
    prose (unless the thesis prints the same number): what a run gives is read from its tables."""
    t413, t48 = thesis.TABLE_4_13, thesis.TABLE_4_8
    derived = {
        "14.3": round(100 / 7, 1),                      # chance on the seven emotions (§4.2 writes ≈ 14.2)
        "1.00": round(t413.value("APViT", "rafdb/emotion") - t413.value("dora", "rafdb/emotion"), 2),
        "0.27": round(0.2 + 0.07, 2),                   # §4.7.1: MTLoRA 0.2 above POSTER++, DoRA 0.07 below
        "1.15": round(t48.value("dora", "rafdb/emotion") - t48.value("mtlora", "rafdb/emotion"), 2),
        "0.87": 0.87,                                   # the training log's fractions, by example (0.87 = 87 %)
    }
    printed = set(DECIMAL.findall(text))
    stated = {}
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            if cell["cell_type"] == "markdown":
                for number in DECIMAL.findall("".join(cell["source"])):
                    stated.setdefault(number, path.stem)
    assert stated, "no notebook prose found"
    unexplained = {n: nb for n, nb in stated.items() if n not in printed and n not in derived}
    assert not unexplained
    assert all(float(n) == v for n, v in derived.items())


def test_section_4_5_swaps_the_gaps_to_apvit_and_poster(text):
    """§4.5's 'Poster++ (1% gap) and ApViT (0.77% gap)': Table 4.13 gives the reverse (what 04_5 says)."""
    assert "Poster++ (1% gap) and ApViT (0.77% gap)" in text
    t = thesis.TABLE_4_13
    gaps = {m: round(t.value(m, "rafdb/emotion") - t.value("dora", "rafdb/emotion"), 2) for m in ("APViT", "POSTER++")}
    assert gaps == {"APViT": 1.0, "POSTER++": 0.77}
