"""replication.tables: cell values against hand computations / scikit-learn on small synthetic runs."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from replication import tables, thesis
from replication.labels import MISSING
from replication.profiles import DEMO_LABEL

REQUIRED = {"thesis", "replicated", "difference", "profile", "label"}


def predictions(seed=0, n=60):
    """Predictions of a fake 3-task model on every test set (labels and preds random, fixed seed)."""
    rng = np.random.default_rng(seed)
    frames = []
    for dataset, task, classes in [("utkface", "age", 9), ("fairface", "age", 9),
                                   ("vggface2", "age", 9), ("utkface", "gender", 2),
                                   ("fairface", "gender", 2), ("vggface2", "gender", 2),
                                   ("rafdb", "emotion", 7)]:
        label = rng.integers(classes, size=n)
        pred = np.where(rng.random(n) < 0.6, label, rng.integers(classes, size=n))
        frames.append(pd.DataFrame({"path": [f"{dataset}/{i}.jpg" for i in range(n)],
                                    "dataset": dataset, "task": task, "label": label,
                                    "pred": pred}))
    return pd.concat(frames, ignore_index=True)


def test_scores_match_sklearn_and_section_4_averages():
    p = predictions()
    s = tables.scores(p)
    expected = {}
    for (dataset, task), g in p.groupby(["dataset", "task"]):
        expected[dataset, task] = 100 * accuracy_score(g.label, g.pred)
        assert s[f"{dataset}/{task}"] == pytest.approx(expected[dataset, task])
        assert s[f"{dataset}/{task}/balanced"] == pytest.approx(
            100 * balanced_accuracy_score(g.label, g.pred))
    # §4: the age average leaves VGGFace2 out, the gender average does not
    assert s["age"] == pytest.approx((expected["utkface", "age"] + expected["fairface", "age"]) / 2)
    assert s["gender"] == pytest.approx(np.mean([expected[d, "gender"]
                                                 for d in ("utkface", "fairface", "vggface2")]))
    assert s["overall"] == pytest.approx((s["age"] + s["gender"] + s["emotion"]) / 3)


def test_accuracy_table_cells_difference_and_label():
    s = tables.scores(predictions())
    df = tables.accuracy_table("4.5", {"dora": s}, "demo")
    assert REQUIRED <= set(df.columns)
    cell = df[(df.row == "DoRA") & (df.column == "fairface/age")].iloc[0]
    assert cell.thesis == 63.64 and cell.replicated == pytest.approx(s["fairface/age"])
    assert cell.difference == pytest.approx(s["fairface/age"] - 63.64)
    average = df[(df.row == "DoRA") & (df.column == "average")].iloc[0]
    assert average.replicated == pytest.approx(s["age"])
    # rows without a run have no replicated value, never a made-up one
    assert df[df.row == "LP"].replicated.isna().all()
    assert (df.label == DEMO_LABEL).all() and (df.profile == "demo").all()
    assert (tables.accuracy_table("4.5", {}, "full").label == "").all()


def test_thesis_cell_notes_go_on_their_cells():
    df = tables.accuracy_table("4.5", {}, "demo").set_index(["row", "column"])
    assert "(61.56 + 61.00) / 2 = 61.28" in df.at[("LP", "average"), "note"]
    assert "= 61.58" in df.at[("AP", "average"), "note"]
    assert df.at[("DoRA", "average"), "note"] == ""
    assert df.at[("ZS", "utkface/age"), "note"] == ""
    # the table's own remark is printed once, under the title, not on a cell
    assert "\n\nNotes: Average excludes VGGFace2.\n\n| row |" in tables.markdown(df.reset_index())
    t414 = tables.table_4_14(ACCOUNTING, {}, "demo").set_index(["row", "column"])
    assert "keeps VGGFace2 in the age mean" in t414.at[("ZS", "avg_acc"), "note"]


def test_notes_joined_on_one_cell_are_separate_sentences():
    """The thesis's cell note and ours on one cell each end with a full stop, so a fragment ("vision tower +
    text tower") does not run into the next remark."""
    table = thesis.Table("t", "T", "§0", ("value",), {"a": (1,), "b": (2,)},
                         cell_notes={("a", "value"): "printed twice"})
    df = tables.compare(table, lambda row, column: 1, "demo", {"a": "ours counts x", "b": "ours (y)"})
    assert list(df.note) == ["printed twice. ours counts x.", "ours (y)."]


def test_an_average_lacking_a_test_set_says_which():
    p = predictions()
    s = tables.scores(p[p.dataset != "vggface2"])
    df = tables.accuracy_table("4.12", {"dora": s}, "demo").set_index(["row", "column"])
    lacks = "replicated average lacks test set(s) vggface2/gender"
    assert df.at[("DoRA", "gender"), "note"] == lacks + "."
    assert df.at[("DoRA", "overall"), "note"] == lacks + "."
    assert df.at[("DoRA", "age"), "note"] == ""          # VGGFace2 is not in the age average (§4)
    assert df.at[("DoRA", "gender"), "replicated"] == pytest.approx(
        (s["utkface/gender"] + s["fairface/gender"]) / 2)
    # the thesis's own note and ours both stay on the cell
    lp = tables.accuracy_table("4.12", {"lp": s}, "demo").set_index(["row", "column"])
    assert lp.at[("LP", "overall"), "note"] == "78.76 is not the mean of this row (81.24). " + lacks + "."
    t414 = tables.table_4_14(ACCOUNTING, {"dora": s}, "demo").set_index(["row", "column"])
    assert t414.at[("DoRA (merged)", "avg_acc"), "note"] == lacks + "."
    complete = tables.accuracy_table("4.12", {"dora": tables.scores(p)}, "demo")
    assert not complete.note.str.contains("lacks").any()


def test_table_4_6_average_is_the_gender_average():
    # Table 4.6's "average" column is the gender task's (Table 4.5's is age's)
    s = tables.scores(predictions())
    df = tables.accuracy_table("4.6", {"dora": s}, "demo").set_index(["row", "column"])
    assert df.at[("DoRA", "average"), "replicated"] == pytest.approx(
        np.mean([s[f"{d}/gender"] for d in ("utkface", "fairface", "vggface2")]))


def test_table_4_2_global_is_the_overall_average():
    s = tables.scores(predictions())
    df = tables.accuracy_table("4.2", {"zs": s}, "demo")
    assert df.set_index("column").at["global", "replicated"] == pytest.approx(s["overall"])


def test_literature_rows_are_marked_and_not_replicated():
    s = tables.scores(predictions())
    df = tables.accuracy_table("4.13", {"mtlora": s, "dora": s}, "demo")
    lit = df[df.row.isin(thesis.TABLE_4_13.literature)]
    assert lit.replicated.isna().all()
    # the citation once per row, on its first cell; the thesis's markers of a missing result kept
    firsts = lit.column == thesis.TABLE_4_13.columns[0]
    assert lit[firsts].note.str.startswith("Literature: [").all() and (lit[~firsts].note == "").all()
    mivolo = lit[lit.row == "MiVOLO-384"].set_index("column").thesis
    assert (mivolo["utkface/age"], mivolo["rafdb/emotion"]) == ("...", "-")
    ours = df[df.row == "MTLoRA"].set_index("column")
    assert ours.at["rafdb/emotion", "replicated"] == pytest.approx(s["rafdb/emotion"])
    assert ours.at["rafdb/emotion", "note"] == ""


def test_concordance_table_is_the_share_of_equal_predictions():
    zs, lp = predictions(0), predictions(1)
    dora = lp.assign(pred=np.where(np.arange(len(lp)) % 4 == 0, zs.pred, lp.pred))
    df = tables.table_4_15({"zs": zs, "lp": lp, "dora": dora}, "demo").set_index(["row", "column"])
    rows = (lp.dataset == "fairface") & (lp.task == "age")
    expected = 100 * np.mean(lp.pred[rows].to_numpy() == dora.pred[rows].to_numpy())
    assert df.at[("fairface/age", "lp_vs_lora"), "replicated"] == pytest.approx(expected)


def test_concordance_columns_compare_the_runs_they_name():
    # lp_vs_zs is LP against ZS and lora_vs_zs the multi-task DoRA against ZS (dora agrees with zs on every 4th row)
    zs, lp = predictions(0), predictions(1)
    dora = lp.assign(pred=np.where(np.arange(len(lp)) % 4 == 0, zs.pred, lp.pred))
    df = tables.table_4_15({"zs": zs, "lp": lp, "dora": dora}, "demo").set_index(["row", "column"])
    rows = (zs.dataset == "rafdb").to_numpy()

    def share(a, b):
        return 100 * np.mean(a.pred.to_numpy()[rows] == b.pred.to_numpy()[rows])
    assert share(dora, zs) != share(lp, zs)
    assert df.at[("rafdb/emotion", "lp_vs_zs"), "replicated"] == pytest.approx(share(lp, zs))
    assert df.at[("rafdb/emotion", "lora_vs_zs"), "replicated"] == pytest.approx(share(dora, zs))


def test_figure_4_3_table_reads_balanced_accuracy():
    s = tables.scores(predictions())
    df = tables.confusion_figure_table("fig4.3", {"mtlora": s, "dora": s}, "demo")
    df = df.set_index(["row", "column"])
    assert df.at[("mtlora/utkface", "balanced_accuracy"), "replicated"] == pytest.approx(
        s["utkface/age/balanced"])
    assert df.at[("dora/fairface", "accuracy"), "thesis"] == 63.73


def test_figure_4_2_table_has_the_emotion_balanced_accuracy_the_thesis_does_not_print():
    p = predictions()
    s, other = tables.scores(p), tables.scores(predictions(seed=1))
    df = tables.confusion_figure_table("fig4.2", {"mtlora": s, "dora": other}, "demo")
    cells = df.set_index("row")
    rafdb = p[p.dataset == "rafdb"]
    assert cells.at["mtlora/rafdb", "replicated"] == pytest.approx(
        100 * balanced_accuracy_score(rafdb.label, rafdb.pred))
    assert cells.at["dora/rafdb", "replicated"] == pytest.approx(other["rafdb/emotion/balanced"])
    assert df.thesis.isna().all() and df.difference.isna().all()
    assert "0.27 points above DoRA" in tables.markdown(df)


ACCOUNTING = [  # the thesis's own figures, as replication.accounting reports them when matched
    {"figure": f"{sec}/{m}_{kind}", "thesis": v, "replicated": v, "note": ""}
    for m, sec in [("lp", "s3.3"), ("ap", "s3.4"), ("ft4", "s3.5"), ("dora", "s3.6"),
                   ("mtlora", "s3.6.1")]
    for kind, v in zip(("trainable", "total"), thesis.PARAMS.rows[m][:2])
] + [{"figure": f"table4.3/{k}", "thesis": v[0], "replicated": v[0], "note": ""}
     for k, v in thesis.TABLE_4_3.rows.items() if k != "gflops"] + [
    {"figure": "table4.3/gflops_zero_shot", "thesis": 699.76, "replicated": 699.76, "note": "x"},
    {"figure": "table4.14/gflops_ft4", "thesis": 352.18, "replicated": 352.18, "note": ""},
    {"figure": "table4.14/gflops_dora_merged", "thesis": 352.18, "replicated": 352.18, "note": ""},
    {"figure": "table4.14/gflops_mtlora", "thesis": 368.01, "replicated": 368.01, "note": ""}]


def test_parameter_tables_recompute_percentages():
    out = tables.parameter_tables(ACCOUNTING, "demo")
    params = out["params"].set_index(["row", "column"])
    assert params.at[("FT4", "trainable"), "difference"] == 0
    assert params.at[("FT4", "percent"), "replicated"] == pytest.approx(100 * 64040969 / 320324629)
    assert abs(params.at[("DoRA", "percent"), "difference"]) < 0.005
    t43 = out["4.3"].set_index("row")
    assert t43.at["gflops", "replicated"] == 699.76 and t43.at["gflops", "note"] == "x."


def test_params_dora_text_note_is_on_the_dora_percent_cell():
    """§3.6's second DoRA figure (8.41%) annotates DoRA's percentage, not the table's first cell (LP)."""
    params = tables.parameter_tables(ACCOUNTING, "demo")["params"].set_index(["row", "column"])
    assert "8.41%" in params.at[("DoRA", "percent"), "note"]
    assert not params.drop(index=[("DoRA", "percent")]).note.str.contains("8.41").any()


def test_table_4_14_sizes_and_accuracy():
    s = tables.scores(predictions())
    df = tables.table_4_14(ACCOUNTING, {"dora": s, "zs": s}, "demo").set_index(["row", "column"])
    assert df.at[("ZS", "params_m"), "replicated"] == 671
    assert df.at[("MTLoRA", "params_m"), "replicated"] == 329  # 329,763,858 truncated, as the thesis prints
    assert df.at[("DoRA (merged)", "params_m"), "replicated"] == 320
    assert df.at[("DoRA (merged)", "avg_acc"), "replicated"] == pytest.approx(s["overall"])
    assert np.isnan(df.at[("FT4", "avg_acc"), "replicated"])


def manifest():
    rows = []
    for i in range(40):
        rows.append(("a.jpg", "fairface", "train", i % 9, i % 2, MISSING))
    for i in range(10):
        rows.append(("b.jpg", "rafdb", "train", MISSING, MISSING, i % 7 if i < 7 else 3))
    rows += [("c.jpg", "utkface", "test", 1, 0, MISSING), ("d.jpg", "fairface", "val", 2, 1, MISSING)]
    return pd.DataFrame(rows, columns=["path", "dataset", "split", "age", "gender", "emotion"])


def test_table_3_2_counts_and_exact_weighted_shares():
    out = tables.tables_3_2(manifest(), "demo")
    emotion = out["3.2/emotion"].set_index(["row", "column"])
    assert emotion.at[("Happy", "samples"), "replicated"] == 4          # ids 3 + the three extra
    assert emotion.at[("Happy", "percent"), "replicated"] == pytest.approx(40.0)
    # inverse-frequency weights make the expected emotion classes uniform when emotion is alone
    assert emotion.at[("Happy", "weighted_percent"), "replicated"] == pytest.approx(100 / 7)
    tasks = out["3.2a"].set_index(["row", "column"])
    assert tasks.at[("total", "samples"), "replicated"] == 50
    assert tasks.at[("emotion", "percent"), "replicated"] == pytest.approx(20.0)


def test_table_3_1_checks_usage():
    rows = manifest()
    rows.loc[(rows["dataset"] == "rafdb").idxmax(), "gender"] = 1
    df = tables.table_3_1(rows, "demo").set_index(["row", "column"])
    assert df.at[("fairface", "train"), "replicated"] == 40
    assert df.at[("fairface", "test"), "difference"] == "differs"  # thesis tests on FairFace val
    assert df.at[("utkface", "test"), "difference"] == ""
    # RAF-DB's genders are used beyond Table 3.1's "Emotion" (§2.7.4, Table 3.2a): said, not hidden
    assert df.at[("rafdb", "tasks"), "replicated"] == "Gender, Emotion"
    assert df.at[("rafdb", "tasks"), "note"].endswith(" Labels used beyond Table 3.1's: Gender.")
    assert df.at[("fairface", "tasks"), "note"] == ""


def test_write_is_atomic_and_labelled(tmp_path):
    s = tables.scores(predictions())
    df = tables.accuracy_table("4.4", {"dora": s}, "demo")
    csv, md = tables.write(df, tmp_path, "Table 4.4")
    assert csv.name == "table_4_4.csv" and md.name == "table_4_4.md"
    back = pd.read_csv(csv)
    assert REQUIRED <= set(back.columns) and (back.label == DEMO_LABEL).all() and (back.table == "Table 4.4").all()
    assert (pd.read_csv(tables.write(tables.accuracy_table("4.10", {}, "demo"), tmp_path)[0]).table
            == "Table 4.10").all()  # not the number 4.1
    text = md.read_text()
    assert DEMO_LABEL in text.splitlines()[2]
    assert "| DoRA | RAF-DB Emotion | 90.83 |" in text
    assert not list(tmp_path.glob("*.tmp"))


def test_a_notebook_shows_the_markdown_file_with_its_label_and_notes(tmp_path):
    """publish() gives the notebook the .md file's text: the demo label and the cell notes are read beside the
    numbers there too, and every column is shown (a wide DataFrame hid both, and was cut at 20 columns)."""
    df = tables.accuracy_table("4.1", {"zs": tables.scores(predictions())}, "demo")
    published = tables.publish(df, tmp_path)
    shown = published._repr_markdown_()
    assert shown == (tmp_path / "table_4_1.md").read_text() == repr(published)
    assert shown.splitlines()[0] == "# Table 4.1 — " + thesis.TABLES["4.1"].title
    assert shown.splitlines()[2] == f"**{DEMO_LABEL}**"
    assert len(shown.splitlines()) == 4 + 2 + len(df)


def test_csv_writes_counts_as_integers(tmp_path):
    out = tables.parameter_tables(ACCOUNTING, "demo")
    csv, md = tables.write(out["4.3"], tmp_path)
    assert "4.3,text_encoder,value,353986561,353986561,0,demo," in csv.read_text()
    back = pd.read_csv(csv).set_index("row")
    assert back.at["total", "replicated"] == 671137793 and back.at["gflops", "thesis"] == 699.76
    assert "| Text encoder | Value | 353,986,561 |" in md.read_text()
    csv, _ = tables.write(out["params"], tmp_path)
    percent = pd.read_csv(csv).set_index(["row", "column"]).at[("FT4", "percent"), "replicated"]
    assert percent == pytest.approx(100 * 64040969 / 320324629, abs=1e-6)


def test_markdown_writes_count_rows_as_integers_and_shares_with_two_decimals():
    """A count cell of the thesis (an int in replication.thesis) reads 2,935 beside 54 in every column, while a
    percentage keeps two decimals even when it is a whole number."""
    text = tables.markdown(tables.tables_3_2(manifest(), "demo")["3.2a"])
    assert "| Total | Samples | 168,362 | 50 | -168,312 |" in text
    assert "| Gender | % | 100.00 | " in text and "| Emotion | % | 5.47 | 20.00 | 14.53 |" in text
    s = tables.scores(predictions())
    text = tables.markdown(tables.table_4_14(ACCOUNTING, {"dora": s, "zs": s}, "demo"))
    assert "| ZS | Params (M) | 671 | 671 | 0 |" in text and "| ZS | GFLOPs | 699.76 | 699.76 | 0.00 |" in text


def test_rows_and_columns_are_named_as_the_thesis_names_them():
    names = ["fairface/age", "ft4/ema", "lp_vs_zs", "weighted_percent", "params_m", "male", "celebahq", "0-2",
             "DoRA (merged)", "CLIP ViT-L/14 336px", "text_encoder"]
    assert [tables.display_name(n) for n in names] == [
        "FairFace Age", "FT4 EMA", "LP vs. ZS", "Weighted %", "Params (M)", "Male", "CelebA-HQ", "0-2",
        "DoRA (merged)", "CLIP ViT-L/14 336px", "Text encoder"]


def test_architecture_counts_say_the_demo_label_does_not_cover_them():
    """The parameter and GFLOP counts are of PE-Core-L14-336 in every profile: a demo table says so beside
    its label (Table 4.14: only the accuracies are the demo's), and each GFLOPs cell of Table 4.14 carries
    accounting's note on how it was counted."""
    rows = [dict(r, note=f"how {r['figure']} was counted") for r in ACCOUNTING]
    df = tables.table_4_14(rows, {}, "demo")
    text = tables.markdown(df)
    assert "model** Params (M) and GFLOPs are of the PE-Core-L14-336 architecture" in text
    assert "only the average accuracy comes from this profile's runs." in text
    gflops = df[df.column == "gflops"].set_index("row").note
    assert gflops["MTLoRA"] == "how table4.14/gflops_mtlora was counted."
    assert gflops["ZS"] == "how table4.3/gflops_zero_shot was counted."
    assert "architecture" not in tables.markdown(tables.table_4_14(rows, {}, "full"))


def test_section_5_1_repeats_the_replicated_cells_its_figures_come_from():
    """§5.1's six figures beside the replicated values of the Table 4.14 and §3.3-3.6.1 cells they repeat (and
    with those cells' thesis notes); cells §5.1 does not state are not rows."""
    p = predictions()
    zs, dora = tables.scores(p), tables.scores(p[p.index % 3 > 0])
    accounting = [dict(r, replicated=r["replicated"] + 1) for r in ACCOUNTING]  # so a wrong source shows
    t414 = tables.table_4_14(accounting, {"zs": zs, "dora": dora}, "demo")
    params = tables.parameter_tables(accounting, "demo")["params"]
    df = tables.section_5_1(t414, params, "demo").set_index(["row", "column"])
    assert list(df.index) == [("ZS", "avg_acc"), ("ZS", "gflops"), ("DoRA", "avg_acc"), ("DoRA", "gflops"),
                              ("DoRA", "percent"), ("FT4", "percent")]
    assert df.at[("ZS", "avg_acc"), "replicated"] == pytest.approx(zs["overall"])
    assert df.at[("DoRA", "avg_acc"), "replicated"] == pytest.approx(dora["overall"])
    assert df.at[("ZS", "gflops"), "replicated"] == 699.76 + 1
    assert df.at[("DoRA", "gflops"), "replicated"] == 352.18 + 1
    ft4 = [r for r in accounting if r["figure"].startswith("s3.5/ft4")]
    assert df.at[("FT4", "percent"), "replicated"] == pytest.approx(100 * ft4[0]["replicated"] / ft4[1]["replicated"])
    assert df.at[("FT4", "percent"), "note"].startswith("20.13% is 64,040,969 / 318,212,106")
    assert df.at[("DoRA", "gflops"), "note"] == ("352 is Table 4.14's 352.18, rounded. Replicated as Table 4.14's "
                                                 "cell DoRA (merged) / GFLOPs.")
    assert tables.heading("conclusion") == "§5.1"


def test_section_5_1_percentages_are_each_methods_own():
    # §5.1's DoRA and FT4 shares are §3.6's 29,352,981 / 346,504,213 and §3.5's 64,040,969 / 320,324,629
    params = tables.parameter_tables(ACCOUNTING, "demo")["params"]
    t414 = tables.table_4_14(ACCOUNTING, {}, "demo", inference_params=dict.fromkeys(("zs", "ft4", "dora_merged",
                                                                                     "mtlora"), 0))
    df = tables.section_5_1(t414, params, "demo").set_index(["row", "column"])
    assert df.at[("DoRA", "percent"), "replicated"] == pytest.approx(100 * 29_352_981 / 346_504_213)
    assert df.at[("FT4", "percent"), "replicated"] == pytest.approx(100 * 64_040_969 / 320_324_629)


def test_headings_name_tables_as_the_thesis_does():
    assert [tables.heading(t) for t in ("4.5", "3.2/age", "3.2a", "fig4.3", "params", "sizes")] == [
        "Table 4.5", "Table 3.2 (age)", "Table 3.2a", "Fig. 4.3", "§3.3–3.6.1", "§2.7"]


def test_dataset_sizes_compare_the_records_prepare_read(tmp_path):
    """§2.7's sizes beside report.json's rows_read; a dataset prepare did not find has no value."""
    import json

    report = {"datasets": {"utkface": {"rows_read": 24103}, "fairface": {"rows_read": 97698}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    df = tables.dataset_sizes(tmp_path, "full").set_index("row")
    assert df.at["utkface", "difference"] == 0 and df.at["fairface", "difference"] == 97698 - 108501
    assert np.isnan(df.at["lagenda", "replicated"]) and df.at["vggface2", "thesis"] == 3310000
    assert "97,698" in df.at["fairface", "note"] and list(df.index) == ["fairface", "utkface", "lagenda",
                                                                          "vggface2", "celebahq"]


def test_filenames_are_unique():
    names = [tables.filename(t) for t in thesis.TABLES]
    assert len(set(names)) == len(names)
    assert tables.filename("3.2/age") == "table_3_2_age" and tables.filename("fig4.3") == "figure_4_3"
