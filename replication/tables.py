"""Thesis-vs-replicated tables: one DataFrame per thesis table, written to tables/<name>.csv and .md.

Every table has one row per published cell: ``row`` and ``column`` name the cell (method, dataset/
task, class...), ``thesis`` is the published value (replication.thesis), ``replicated`` the value
this replication computed, ``difference`` = replicated − thesis, ``profile`` the profile that
produced it, ``note`` what the cell is when that needs saying (a literature row with its citation,
a thesis inconsistency, a replicated average that lacks some of the task's test sets), and
``label`` the profile's visible warning: every demo table says "demo profile — not the thesis's
data or model" in each CSV row and at the top of its Markdown. CSVs write integer-valued numbers
as integers, so a parameter count reads 353986561 there.

The replicated values come from run folders through replication.metrics (§4.1 accuracy, balanced
accuracy, §4 averages that leave VGGFace2 out of the age average, Table 4.15 concordance), from the
prepared manifest through replication.sampling (Table 3.2) and from replication.accounting (the
parameter and GFLOPs figures of §3.3–3.6.1, Tables 4.3 and 4.14). No result number is written here.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from replication import metrics, sampling, thesis
from replication.data import read_report, training_distribution
from replication.files import atomic_write_text
from replication.labels import AVERAGE_EXCLUDES, MISSING, TASKS, TEST_SETS
from replication.profiles import label

COLUMNS = ["table", "row", "column", "thesis", "replicated", "difference", "profile", "note", "label"]


def compare(table: thesis.Table, replicated: Callable[[str, str], float | None], profile: str,
            notes: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per published cell of ``table``; ``replicated(row, column)`` gives our value or None.

    ``notes`` maps a row key, or a (row, column) pair, to a note on our value of those cells; it
    follows the thesis's own note on the cell (``table.cell_notes``). A literature row cites its source
    on its first cell; remarks on the whole table (``table.notes``) are printed under the .md's title."""
    notes = dict(notes or {})
    records = []
    for row, values in table.rows.items():
        for column, published in zip(table.columns, values):
            if row in table.literature:
                ours = None
                note = _join_notes(f"Literature: {table.literature[row]}") if column == table.columns[0] else ""
            else:
                ours = replicated(row, column)
                note = _join_notes(table.cell_notes.get((row, column)), notes.get((row, column), notes.get(row)))
            records.append({
                "table": table.id, "row": thesis.METHOD_NAMES.get(row, row), "column": column,
                "thesis": published, "replicated": np.nan if ours is None else ours,
                "difference": _difference(published, ours), "profile": profile, "note": note,
                "label": label(profile)})
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def _join_notes(*parts: str | None) -> str:
    """The non-empty ``parts`` as one note, each ending with a full stop, so a fragment such as
    "vision tower + text tower" does not run into the next remark."""
    return " ".join(p if p.endswith((".", "!", "?")) else p + "."
                    for p in (p.strip() for p in parts if p) if p)


def _difference(published, ours) -> float:
    if isinstance(published, (int, float)) and ours is not None and not isinstance(ours, str):
        return float(ours) - float(published)
    return np.nan


# --- writing -----------------------------------------------------------------------------------

# tables the thesis gives in its text, not as numbered tables (headed by their section): id -> file name
_TEXT_TABLES = {"params": "parameters_3_3-3_6_1", "sizes": "dataset_sizes_2_7", "conclusion": "conclusion_5_1"}


def filename(table_id: str) -> str:
    """'4.5' -> 'table_4_5', '3.2/age' -> 'table_3_2_age', 'fig4.3' -> 'figure_4_3'."""
    if table_id in _TEXT_TABLES:
        return _TEXT_TABLES[table_id]
    stem = table_id.replace(".", "_").replace("/", "_")
    return f"figure_{stem[3:]}" if table_id.startswith("fig") else f"table_{stem}"


def write(df: pd.DataFrame, out_dir: str | Path, title: str = "") -> tuple[Path, Path]:
    """Write ``df`` to <out_dir>/<name>.csv and .md atomically; returns both paths. The CSV names its table as
    the thesis does ('Table 4.10': the bare id 4.10 would be read back as the number 4.1)."""
    table_id = df["table"].iloc[0]
    stem = Path(out_dir) / filename(table_id)
    paths = stem.with_suffix(".csv"), stem.with_suffix(".md")
    atomic_write_text(paths[0], df.assign(table=heading(table_id)).map(_csv_number).to_csv(index=False))
    atomic_write_text(paths[1], markdown(df, title))
    return paths


# Tables counted on the PE-Core-L14-336 architecture (built on the meta device, no weights): their counts are
# the full model's whatever the profile, which the demo label must not hide
_L14 = "of the PE-Core-L14-336 architecture (no weights needed), the same in every profile"
_ARCHITECTURE_TABLES = {
    "params": f"The counts are {_L14}.",
    "4.3": f"The counts are {_L14}.",
    "4.14": f"Params (M) and GFLOPs are {_L14}; only the average accuracy comes from this profile's runs.",
    "conclusion": f"GFLOPs and % are {_L14}; only the average accuracies come from this profile's runs."}


def markdown(df: pd.DataFrame, title: str = "") -> str:
    """The .md file's text: the title, the profile's label (demo), the remarks on the whole table, then
    every cell with its note, rows and columns named as the thesis names them (display_name)."""
    table_id = df["table"].iloc[0]
    header = [f"# {title or table_id}", ""]
    warning = df["label"].iloc[0]
    if warning:
        header += [" ".join(filter(None, [f"**{warning}**", _ARCHITECTURE_TABLES.get(table_id)])), ""]
    table = thesis.TABLES.get(table_id)
    if table is not None and table.notes:
        header += [f"Notes: {_join_notes(*table.notes)}", ""]
    counts = _count_cells(table_id)
    return "\n".join(header + [to_markdown(df.drop(columns=["table", "label"]), counts), ""])


# words of the row and column ids, as the thesis's tables print them
_DISPLAY = {**thesis.METHOD_NAMES, **thesis.DATASET_NAMES, "uw": "UW", "ema": "EMA", "gflops": "GFLOPs",
            "params_m": "Params (M)", "avg_acc": "Avg. acc.", "percent": "%", "weighted_percent": "Weighted %",
            "balanced_accuracy": "Balanced acc.", "accuracy": "Acc.", "text_encoder": "Text encoder",
            "visual_encoder": "Visual encoder", "vs": "vs."}


def display_name(key: str) -> str:
    """A row or column id as the thesis prints it: 'fairface/age' -> 'FairFace Age', 'ft4/ema' -> 'FT4 EMA',
    'lp_vs_zs' -> 'LP vs. ZS', 'weighted_percent' -> 'Weighted %'; other lowercase words are capitalised, and a
    key with a space ('CLIP ViT-L/14 336px') is a name already."""
    if key in _DISPLAY or " " in key:
        return _DISPLAY.get(key, key)
    words = key.replace("_vs_", "/vs/").split("/")
    return " ".join(_DISPLAY.get(w, w.capitalize() if w.isalpha() and w.islower() else w) for w in words)


def _count_cells(table_id: str) -> set[tuple[str, str]]:
    """The (row, column) cells the thesis publishes as counts (an int in replication.thesis): samples,
    images, parameters."""
    table = thesis.TABLES.get(table_id)
    if table is None:
        return set()
    return {(thesis.METHOD_NAMES.get(row, row), column) for row, values in table.rows.items()
            for column, v in zip(table.columns, values) if type(v) is int}


def _csv_number(v):
    """Integer-valued numbers as integers (the parameter tables exist to show that counts such as
    353,986,561 agree exactly; '%.6g' wrote 3.53987e+08), other floats rounded to 6 decimals."""
    if isinstance(v, float) and math.isfinite(v):  # numpy's float64 is a float too
        return str(int(v)) if v.is_integer() else repr(round(float(v), 6))
    return v


def heading(table_id: str) -> str:
    """How the thesis names a table: '4.5' -> 'Table 4.5', '3.2/age' -> 'Table 3.2 (age)', 'fig4.2' -> 'Fig. 4.2',
    'params' (the figures of §3.3-3.6.1's text) -> '§3.3–3.6.1', 'sizes' -> '§2.7'."""
    if table_id in _TEXT_TABLES:
        return thesis.TABLES[table_id].section
    if table_id.startswith("fig"):
        return f"Fig. {table_id[3:]}"
    number, _, part = table_id.partition("/")
    return f"Table {number}" + (f" ({part})" if part else "")


class Published:
    """A table as a notebook shows it: the text of its .md file, so the demo label and the notes (a thesis
    inconsistency, a counting convention, a literature citation) are read beside the numbers."""

    def __init__(self, text: str):
        self.text = text

    def _repr_markdown_(self) -> str:
        return self.text

    __repr__ = _repr_markdown_  # a plain-text view (console, nbconvert to text) shows the same table


def publish(df: pd.DataFrame, out_dir: str | Path) -> Published:
    """Write ``df`` (titled after its thesis table); return it as the notebook shows it."""
    table_id = df["table"].iloc[0]
    title = f"{heading(table_id)} — {thesis.TABLES[table_id].title}"
    write(df, out_dir, title)
    return Published(markdown(df, title))


def to_markdown(df: pd.DataFrame, counts: set[tuple[str, str]] = frozenset()) -> str:
    """A GitHub-flavoured Markdown table: numbers with two decimals, NaN as '—', and integers, or the
    whole numbers of a count row (``counts`` holds (row, column) pairs), with thousands separators, so
    a sample count reads 2,935 beside 54 rather than 2935.00 beside 54.00; row and column ids by their
    display_name."""
    def cell(key, v, count):
        if key in ("row", "column"):
            return display_name(str(v))
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return f"{v:,}"
        if isinstance(v, float):
            return "—" if math.isnan(v) else (f"{v:,.0f}" if count and v.is_integer() else f"{v:.2f}")
        return "—" if v is None else str(v).replace("|", "\\|")
    records = df.to_dict("records")
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(k, v, (r.get("row"), r.get("column")) in counts) for k, v in r.items()) + " |"
              for r in records]
    return "\n".join(lines)


# --- scores of runs (§4.1) ---------------------------------------------------------------------

def scores(predictions: pd.DataFrame) -> dict[str, float]:
    """Accuracy (%) of each '<dataset>/<task>', its balanced accuracy '<dataset>/<task>/balanced',
    each task's §4 average under the task's name and, when all three tasks are there, 'overall'."""
    summary = metrics.summarize_predictions(predictions)
    out = {}
    for task, res in summary["tasks"].items():
        for dataset, s in res["datasets"].items():
            out[f"{dataset}/{task}"] = 100 * s["accuracy"]
            out[f"{dataset}/{task}/balanced"] = 100 * s["balanced_accuracy"]
        out[task] = 100 * res["average_accuracy"]
    if "overall_average_accuracy" in summary:
        out["overall"] = 100 * summary["overall_average_accuracy"]
    return out


def combined_predictions(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Single-task runs put together as one model (§4.4: the three LP probes on one backbone)."""
    return pd.concat(list(frames), ignore_index=True)


def _missing_test_sets(run_scores: Mapping[str, float], key: str) -> str:
    """The note of an average cell (``key``: a task or 'overall') whose run lacks test sets.

    metrics averages the test sets a run has predictions for (its ``average_over``), so such an
    average is over fewer sets than the thesis's (Table 3.1). A note, not an error: a replication
    without, say, VGGFace2 still has every other cell to compare. A set without predictions has no
    '<dataset>/<task>' score; VGGFace2 is never in the age average (§4)."""
    tasks = tuple(TASKS) if key == "overall" else (key,) if key in TASKS else ()
    missing = [f"{dataset}/{task}" for task in tasks if task in run_scores
               for dataset in TEST_SETS[task]
               if dataset not in AVERAGE_EXCLUDES.get(task, ())
               and f"{dataset}/{task}" not in run_scores]
    return f"replicated average lacks test set(s) {', '.join(missing)}" if missing else ""


def accuracy_table(table_id: str, scores_by_row: Mapping[str, Mapping[str, float]],
                   profile: str) -> pd.DataFrame:
    """Tables 4.1, 4.2, 4.4–4.12, 4.16: cells are looked up as scores_by_row[row][column]."""
    # the averages are called "global" in Table 4.2 and "average" in Tables 4.5/4.6
    keys = {"global": "overall", "average": {"4.5": "age", "4.6": "gender"}.get(table_id)}
    table = thesis.TABLES[table_id]
    notes = {(row, col): _missing_test_sets(scores_by_row.get(row, {}), keys.get(col, col))
             for row in table.rows for col in table.columns}
    return compare(table, lambda row, col: scores_by_row.get(row, {}).get(keys.get(col, col)),
                   profile, notes)


# §4.7: the task of each confusion-matrix figure (Fig. 4.2 RAF-DB emotion, Fig. 4.3 age)
FIGURE_TASKS = {"fig4.2": "emotion", "fig4.3": "age"}


def confusion_figure_table(figure_id: str, scores_by_row: Mapping[str, Mapping[str, float]],
                           profile: str) -> pd.DataFrame:
    """Balanced accuracy (and accuracy, Fig. 4.3's captions) of the confusion matrices of
    Figs 4.2 and 4.3; rows are 'method/dataset' ('mtlora/rafdb', 'dora/fairface', ...)."""
    task = FIGURE_TASKS[figure_id]

    def value(row, column):
        method, dataset = row.split("/")
        suffix = "/balanced" if column == "balanced_accuracy" else ""
        return scores_by_row.get(method, {}).get(f"{dataset}/{task}{suffix}")
    return compare(thesis.TABLES[figure_id], value, profile)


def table_4_15(predictions: Mapping[str, pd.DataFrame], profile: str) -> pd.DataFrame:
    """Concordance (%) of LP, ZS and the multi-task DoRA ('LoRA' in the thesis) predictions."""
    pairs = {"lp_vs_zs": ("lp", "zs"), "lora_vs_zs": ("dora", "zs"), "lp_vs_lora": ("lp", "dora")}
    frames = {}
    for column, (a, b) in pairs.items():
        c = metrics.concordance(predictions[a], predictions[b])
        frames[column] = {f"{r.dataset}/{r.task}": 100 * r.concordance for r in c.itertuples()}
    return compare(thesis.TABLE_4_15, lambda row, column: frames[column].get(row), profile)


# --- accounting (§3.3–3.6.1, Tables 4.3, 4.14) ------------------------------------------------

def parameter_tables(rows: Iterable[Mapping], profile: str) -> dict[str, pd.DataFrame]:
    """The parameter figures of §3.3–3.6.1 and Table 4.3 from replication.accounting's rows.

    ``rows`` are accounting's ``{"figure", "thesis", "replicated", "note"}`` dicts; the percentages
    are recomputed from the replicated counts. Counts are of PE-Core-L14-336 built on the meta
    device, so they are the same in every profile."""
    by_id = {r["figure"]: r for r in rows}
    sections = {"lp": "s3.3", "ap": "s3.4", "ft4": "s3.5", "dora": "s3.6", "mtlora": "s3.6.1"}

    def params_figure(method, column):  # accounting's row of a §3.3–3.6.1 count
        return by_id[f"{sections[method]}/{method}_{column}"]

    def table_4_3_figure(row):  # accounting's row of a Table 4.3 cell
        return by_id["table4.3/gflops_zero_shot" if row == "gflops" else f"table4.3/{row}"]

    def params(method, column):
        if column == "percent":
            return 100 * params(method, "trainable") / params(method, "total")
        return params_figure(method, column)["replicated"]

    notes_3 = {(m, kind): params_figure(m, kind)["note"] for m in sections for kind in ("trainable", "total")}
    notes_43 = {row: table_4_3_figure(row)["note"] for row in thesis.TABLE_4_3.rows}
    return {"params": compare(thesis.PARAMS, params, profile, notes_3),
            "4.3": compare(thesis.TABLE_4_3, lambda row, column: table_4_3_figure(row)["replicated"], profile,
                           notes_43)}


def table_4_14(rows: Iterable[Mapping], scores_by_row: Mapping[str, Mapping[str, float]],
               profile: str, inference_params: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Params (M) and GFLOPs from accounting (L14 architecture), average accuracy from our runs.

    ``inference_params``: accounting.inference_parameters() (computed on the meta device when not
    given). The thesis prints millions truncated (MTLoRA 329.76 M -> 329), so we truncate too."""
    if inference_params is None:
        from replication.accounting import inference_parameters
        inference_params = inference_parameters()
    by_id = {r["figure"]: r for r in rows}
    params = dict(inference_params)
    gflops = {"zs": "table4.3/gflops_zero_shot", "ft4": "table4.14/gflops_ft4",
              "dora_merged": "table4.14/gflops_dora_merged", "mtlora": "table4.14/gflops_mtlora"}
    accuracy_row = {"dora_merged": "dora"}

    def run_scores(row):
        return scores_by_row.get(accuracy_row.get(row, row), {})

    def value(row, column):
        if column == "params_m":
            return math.floor(params[row] / 1e6)
        if column == "gflops":
            return by_id[gflops[row]]["replicated"]
        return run_scores(row).get("overall")
    notes = {(row, "avg_acc"): _missing_test_sets(run_scores(row), "overall")
             for row in thesis.TABLE_4_14.rows}
    notes.update({(row, "gflops"): by_id[key]["note"] for row, key in gflops.items()})  # how each was counted
    return compare(thesis.TABLE_4_14, value, profile, notes)


# §5.1's figures: (row, column) -> the thesis table and (row, column) of the cell each repeats
_CONCLUSION_SOURCES = {("zs", "avg_acc"): ("4.14", "zs", "avg_acc"), ("zs", "gflops"): ("4.14", "zs", "gflops"),
                       ("dora", "avg_acc"): ("4.14", "dora_merged", "avg_acc"),
                       ("dora", "gflops"): ("4.14", "dora_merged", "gflops"),
                       ("dora", "percent"): ("params", "dora", "percent"),
                       ("ft4", "percent"): ("params", "ft4", "percent")}


def section_5_1(table_4_14: pd.DataFrame, params: pd.DataFrame, profile: str) -> pd.DataFrame:
    """§5.1's summary figures beside the replicated values of the cells they repeat (``table_4_14`` and
    ``params`` are what table_4_14() and parameter_tables()["params"] return), each with the thesis's own
    note on that cell."""
    frames = {"4.14": table_4_14.set_index(["row", "column"]), "params": params.set_index(["row", "column"])}

    def value(row, column):
        if (row, column) not in _CONCLUSION_SOURCES:  # a cell §5.1 does not state (dropped below)
            return None
        table_id, source_row, source_column = _CONCLUSION_SOURCES[row, column]
        ours = frames[table_id].at[(thesis.METHOD_NAMES[source_row], source_column), "replicated"]
        return None if pd.isna(ours) else ours
    notes = {cell: _join_notes(thesis.TABLES[table_id].cell_notes.get((source_row, source_column)),
                               f"Replicated as {heading(table_id)}'s cell {thesis.METHOD_NAMES[source_row]} / "
                               f"{display_name(source_column)}")
             for cell, (table_id, source_row, source_column) in _CONCLUSION_SOURCES.items()}
    df = compare(thesis.SECTION_5_1, value, profile, notes)
    return df[df["thesis"].notna()].reset_index(drop=True)  # only the six figures §5.1 states


# --- data (§3.1 Table 3.1, §3.2 Table 3.2) ---------------------------------------------------

def dataset_sizes(prepared: str | Path, profile: str) -> pd.DataFrame:
    """§2.7's dataset sizes beside the records `prepare` read from each dataset's files (report.json's
    rows_read, before any was skipped); a dataset absent from the raw data has no value."""
    report = read_report(prepared)["datasets"]
    return compare(thesis.SECTION_2_7, lambda row, column: report[row]["rows_read"] if row in report else None,
                   profile)


def table_3_1(manifest: pd.DataFrame, profile: str) -> pd.DataFrame:
    """Dataset usage (Table 3.1): the thesis's checkmarks beside the manifest's image counts and
    the tasks each dataset carries labels for; ``difference`` says "differs" where a split's usage
    differs or a task of the thesis's is missing, and a note names the tasks used beyond it."""
    def value(dataset, column):
        rows = manifest[manifest["dataset"] == dataset]
        if column == "tasks":
            return ", ".join(t.capitalize() for t in ("gender", "age", "emotion")
                             if (rows[t] != MISSING).any())
        return int((rows["split"] == column).sum())
    df = compare(thesis.TABLE_3_1, value, profile)
    used = df["thesis"] != "-"
    agrees = [(set(t.split(", ")) <= set(str(r).split(", "))) if c == "tasks" else (r > 0) == u
              for c, t, r, u in zip(df["column"], df["thesis"], df["replicated"], used)]
    df["difference"] = ["" if a else "differs" for a in agrees]
    # a dataset's labels beyond Table 3.1's are used (RAF-DB's genders, thesis.TABLE_3_1's cell note): said, not
    # marked as differing
    for i in df.index[df["column"] == "tasks"]:
        extra = set(str(df.at[i, "replicated"]).split(", ")) - set(df.at[i, "thesis"].split(", "))
        if extra:
            df.at[i, "note"] = _join_notes(df.at[i, "note"],
                                          f"Labels used beyond Table 3.1's: {', '.join(sorted(extra))}.")
    return df


def tables_3_2(manifest: pd.DataFrame, profile: str) -> dict[str, pd.DataFrame]:
    """Table 3.2 on the training split: samples and % (replication.data.stats) and the exact
    'Weighted %' of §3.2's class-balanced sampler (replication.sampling)."""
    distribution = training_distribution(manifest)
    train = manifest[manifest["split"] == "train"]
    labels = {task: train[task].to_numpy() for task in TASKS}
    shares = sampling.expected_class_shares(sampling.class_balanced_weights(labels), labels)
    out = {}
    for task in TASKS:
        frame = distribution[task].assign(class_name=lambda f: f["class_name"].str.lower())
        frame["weighted_percent"] = 100 * np.pad(shares[task], (0, len(frame) - len(shares[task])))
        frame = frame.set_index("class_name")
        out[f"3.2/{task}"] = compare(thesis.TABLES[f"3.2/{task}"],
                                     lambda row, col, f=frame: f.at[row.lower(), col], profile)
    tasks = distribution["tasks"].set_index("task")

    def task_value(row, column):
        if row == "total":
            return len(train) if column == "samples" else None
        return tasks.at[row, column]
    out["3.2a"] = compare(thesis.TABLE_3_2_TASKS, task_value, profile)
    return out
