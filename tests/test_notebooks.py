"""CI: every notebook executed through papermill on a tiny demo, checking its tables and figures.

One session fixture builds the tiny demo once: demo-data, prepare, a subset of the manifest
(a few images per dataset and split, the crops shared by symlink), a few pre-training steps.
The notebooks then run in chapter order with one-epoch runs on a handful of samples; runs are
shared between notebooks through the run folders (runs.py), exactly as in `reproduce`.
"""
import ast
import json
import os
import signal
import threading
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from replication import pretrain, reproduce, runs, tables, thesis
from replication.data import demo, prepare, read_manifest
from replication.profiles import DEMO_LABEL, get_profile

ROWS_PER_SPLIT = 16

# notebook -> (tables it writes, figures it writes)
EXPECTED = {
    "02_datasets": (["dataset_sizes_2_7"], ["2_8", "2_9", "2_10", "2_11", "2_12", "2_13"]),
    "03_methodology": (["table_3_1", "table_3_2_age", "table_3_2_gender", "table_3_2_emotion",
                        "table_3_2a", "parameters_3_3-3_6_1"], ["3_1"]),
    "04_2_zero_shot": (["table_4_1", "table_4_2", "table_4_3"], []),
    "04_3_single_task": (["table_4_4", "table_4_5", "table_4_6"], []),
    "04_4_multi_task": (["table_4_7", "table_4_8", "table_4_9", "table_4_10", "table_4_11",
                         "table_4_12"], ["4_1"]),
    "04_5_sota_efficiency": (["table_4_13", "table_4_14"], []),
    "04_7_balanced_accuracy": (["figure_4_2", "figure_4_3", "table_4_15", "table_4_16"], ["4_2", "4_3"]),
    "04_8_tsne_pca": ([], ["4_4", "4_5", "4_6"]),
    "05_conclusion": (["conclusion_5_1"], ["5_1"]),
}
REQUIRED = ["thesis", "replicated", "difference", "profile", "label"]


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_demo")
    assert demo.cli(["--out", str(root / "raw")]) == 0
    assert prepare.cli(["--data-root", str(root / "raw"), "--out", str(root / "full"),
                        "--detector", "boxes", "--size", "64"]) == 0
    manifest = read_manifest(root / "full" / "manifest.csv")
    small = manifest.groupby(["dataset", "split"]).head(ROWS_PER_SPLIT)
    (root / "prepared").mkdir()
    small.to_csv(root / "prepared" / "manifest.csv", index=False)
    os.symlink(root / "full" / "report.json", root / "prepared" / "report.json")  # what prepare read (§2.7 sizes)
    for entry in (root / "full").iterdir():      # the crops, shared
        if entry.is_dir():
            os.symlink(entry, root / "prepared" / entry.name)
    pretrain.pretrain(root / "prepared", root / "ckpt.pt", root / "bpe.txt.gz", steps=3,
                      batch_size=32)
    return root


@pytest.fixture(scope="session")
def executed(tiny_demo):
    root = tiny_demo
    parameters = {"profile": "demo", "prepared": str(root / "prepared"),
                  "runs_dir": str(root / "runs"), "checkpoint": str(root / "ckpt.pt"),
                  "bpe": str(root / "bpe.txt.gz"), "tables_dir": str(root / "tables"),
                  "figures_dir": str(root / "figures"), "max_epochs": 1,
                  "max_train_samples": 32, "batch_size": 16, "checkpoint_blocks": {"lora": 1}}
    extra = {"03_methodology": {"n_augmentation_images": 2}, "04_8_tsne_pca": {"tsne_samples": 20},
             "05_conclusion": {"n_examples": 4}}
    outputs = {name: reproduce.execute(name, root / "executed",
                                       {**parameters, **extra.get(name, {})})
               for name in reproduce.NOTEBOOKS}
    return root, outputs


def test_every_notebook_is_listed_and_has_a_parameters_cell():
    assert set(EXPECTED) == set(reproduce.NOTEBOOKS)
    for name in reproduce.NOTEBOOKS:
        nb = nbformat.read(reproduce.NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and 'profile = "demo"' in tagged[0].source, name


def test_notebooks_import_only_what_they_use():
    """A thin notebook's import cell names the library modules it calls, and no others."""
    for name in reproduce.NOTEBOOKS:
        nb = nbformat.read(reproduce.NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        trees = [ast.parse(c.source) for c in nb.cells if c.cell_type == "code"]
        imported = {alias.asname or alias.name for tree in trees for node in ast.walk(tree)
                    if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
        used = {node.id for tree in trees for node in ast.walk(tree) if isinstance(node, ast.Name)}
        assert imported <= used, (name, imported - used)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_notebook_writes_its_tables_and_figures(executed, name):
    root, outputs = executed
    assert outputs[name].exists()
    table_names, figure_names = EXPECTED[name]
    for stem in table_names:
        df = pd.read_csv(root / "tables" / f"{stem}.csv")
        assert list(df.columns) == tables.COLUMNS, stem
        assert (df["label"] == DEMO_LABEL).all() and (df["profile"] == "demo").all()
        assert DEMO_LABEL in (root / "tables" / f"{stem}.md").read_text()
    for stem in figure_names:
        assert (root / "figures" / f"figure_{stem}.png").stat().st_size > 1000, stem
    # the notebook shows each table as its .md file (title, demo label, notes), and no cell warns
    outputs = [o for c in nbformat.read(outputs[name], as_version=4).cells for o in c.get("outputs", [])]
    shown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})
             and o["data"]["text/markdown"].startswith("# ")]
    assert len(shown) == len(table_names) and all(t.splitlines()[2].startswith(f"**{DEMO_LABEL}**") for t in shown)
    assert not [o["text"] for o in outputs if o.get("name") == "stderr" and "Warning" in o["text"]]
    assert not [o["text"] for o in outputs if "nothing to do" in o.get("text", "")]  # set-up is silent when ready


def test_replicated_values_are_filled(executed):
    root, _ = executed
    t45 = pd.read_csv(root / "tables" / "table_4_5.csv")
    assert t45["replicated"].notna().all() and t45["replicated"].between(0, 100).all()
    params = pd.read_csv(root / "tables" / "parameters_3_3-3_6_1.csv")
    counts = params[params["column"] != "percent"]
    assert (counts["difference"] == 0).all()      # every §3 parameter figure matched exactly
    t413 = pd.read_csv(root / "tables" / "table_4_13.csv")
    literature = t413["row"].isin(thesis.TABLE_4_13.literature)
    assert literature.sum() == 30 and t413.loc[literature, "replicated"].isna().all()
    assert t413.loc[literature, "note"].fillna("").str.startswith("Literature: [").sum() == 6  # once per row


def test_runs_are_reused(executed):
    """The notebooks share runs: 1 zero-shot + 4x3 single-task + 7 multi-task run folders, exactly the
    runs `reproduce.training_runs()` lists (what `bench --wall-clock` estimates)."""
    root, _ = executed
    runs = sorted(p.name for p in (root / "runs").iterdir())
    assert len(runs) == 20, runs
    assert all((root / "runs" / r / "DONE").exists() for r in runs)
    S = reproduce.settings("demo", runs_dir=root / "runs", max_train_samples=32)
    listed = [S.train_config(m, t, w).name for m, t, w in reproduce.training_runs()]
    assert sorted(listed + [S.train_config("zero_shot").name]) == runs
    # the notebooks' checkpoint_blocks parameter reached the engine: LoRA's runs checkpointed 1 block
    written = {r: json.loads((root / "runs" / r / "config.json").read_text()) for r in runs}
    assert {r: c["checkpoint_blocks"] for r, c in written.items() if c["checkpoint_blocks"]} == \
        {r: 1 for r, c in written.items() if c["method"] == "lora"} != {}


def test_a_notebooks_training_log_names_each_run_before_its_epochs(executed):
    """The epoch lines of a run trained inside a notebook follow a line naming the run, so a reader of
    §4.3's twelve single-task runs knows whose losses and accuracies each block shows."""
    root, outputs = executed
    cells = nbformat.read(outputs["04_3_single_task"], as_version=4).cells
    log = "".join(o.get("text", "") for c in cells for o in c.get("outputs", []) if o.get("name") == "stdout")
    S = reproduce.settings("demo", runs_dir=root / "runs", max_train_samples=32)
    starts = [log.index(f"run {S.train_config(m, t).name}: training (at most 1 epoch)")
              for m in reproduce.SINGLE_TASK_METHODS for t in ("age", "gender", "emotion")]
    assert starts == sorted(starts) and log.index("epoch 1 (") > starts[0]
    assert log.count("epoch 1 (") == len(starts)  # one block of epoch lines per named run


def test_settings_resolve_profile_defaults_and_overrides(tmp_path):
    s = reproduce.settings("demo", max_epochs=2, prepared=str(tmp_path), bpe=None)
    assert s.max_epochs == 2 and s.prepared == tmp_path and s.bpe.name == "bpe_demo.txt.gz"
    cfg = s.train_config("dora", ("age", "gender", "emotion"))
    assert cfg.weighting == "uw" and cfg.prepared == str(tmp_path) and cfg.model_config == "demo-tiny"
    assert s.train_config("lp", "age").weighting == "none"
    # the thesis's learning rates in the full profile; the demo's scaled for its short runs
    full = reproduce.settings("full").train_config("ft4", "age")
    assert (full.lr_head, full.lr_backbone) == (1e-4, 1e-5)
    demo_profile = get_profile("demo")
    assert (cfg.lr_head, cfg.lr_backbone) == (demo_profile.lr_head, demo_profile.lr_backbone)
    with pytest.raises(TypeError, match="unknown settings"):
        reproduce.settings("demo", epochs=3)
    # a checkpoint_blocks override updates the profile's per method; the profile itself is read-only
    for given in ("lora=8, ft4=21", {"lora": 8, "ft4": 21}):  # reproduce's flag; a notebook parameter
        blocks = reproduce.settings("full", checkpoint_blocks=given)
        assert blocks.checkpoint_blocks == {"lora": 8, "dora": 19, "mtlora": 21, "ft4": 21}
    assert blocks.train_config("lora").checkpoint_blocks == 8 and blocks.train_config("ap", "age").checkpoint_blocks == 0
    assert dict(get_profile("full").checkpoint_blocks) == {"lora": 18, "dora": 19, "mtlora": 21}
    with pytest.raises(TypeError):
        get_profile("full").checkpoint_blocks["lora"] = 8
    for bad, why in (("lora", "expected METHOD=N"), ("lora=-1", "expected METHOD=N"), ("lora=²", "expected METHOD=N"),
                     ("", "expected METHOD=N"), (8, "expected METHOD=N"), ("qlora=3", "unknown method 'qlora'"),
                     ("lora=2,lora=3", "lora given twice"), ({"LoRA": 8}, "unknown method 'LoRA'"),
                     ({"lora": -1}, "lora=-1 is not"), ({"lora": 2.5}, "lora=2.5 is not"),
                     ({"lora": True}, "lora=True is not")):
        with pytest.raises(ValueError, match=why):
            reproduce.settings("full", checkpoint_blocks=bad)


def test_reproduce_hands_its_overrides_to_every_notebook(monkeypatch, tmp_path, capsys):
    """Every option of `reproduce` reaches every notebook as a papermill parameter that its parameters cell
    declares and its `reproduce.settings(...)` call passes on (papermill only warns about an undeclared one)."""
    seen = {}
    monkeypatch.setattr(reproduce, "ready_demo", lambda profile: None)
    monkeypatch.setattr(reproduce, "execute", lambda name, out, parameters: seen.update({name: parameters}))
    assert reproduce.cli(["--out", str(tmp_path), "--checkpoint-blocks", "lora=8", "--batch-size", "32",
                          "--max-epochs", "2", "--max-train-samples", "9", "--device", "cpu", "--amp", "bf16", "--tables-dir", "t",
                          "--figures-dir", "f"]) == 0
    assert list(seen) == list(reproduce.NOTEBOOKS)
    parameters = seen[reproduce.NOTEBOOKS[0]]
    assert parameters["checkpoint_blocks"] == {"lora": 8} and parameters["batch_size"] == 32
    assert parameters["amp"] == "bf16"
    assert set(parameters) == {"profile", "prepared", "runs_dir", "checkpoint", "bpe", "tables_dir", "figures_dir",
                               "max_epochs", "max_train_samples", "batch_size", "device", "amp",
                               "checkpoint_blocks"}
    for name in reproduce.NOTEBOOKS:
        nb = nbformat.read(reproduce.NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        declared = {t.id for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])
                    for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}
        calls = [node for cell in nb.cells if cell.cell_type == "code" for node in ast.walk(ast.parse(cell.source))
                 if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "settings"]
        assert len(calls) == 1, name
        passed = {k.arg: k.value.id for k in calls[0].keywords} | {calls[0].args[0].id: calls[0].args[0].id}
        assert set(seen[name]) <= declared and all(passed.get(p) == p for p in seen[name]), name
    with pytest.raises(SystemExit):
        reproduce.cli(["--checkpoint-blocks", "lora=x"])
    assert "checkpoint_blocks: expected METHOD=N" in capsys.readouterr().err


def test_reproduce_hands_the_notebooks_absolute_paths(monkeypatch, tmp_path):
    """A relative path option names the same place in the notebooks (run in the repository root) as in the
    checks and the data preparation `reproduce` does in the caller's working directory."""
    prepared_here, seen = [], {}
    monkeypatch.setattr(reproduce, "ready_demo", lambda profile: prepared_here.append(profile.prepared))
    monkeypatch.setattr(reproduce, "execute", lambda name, out, parameters: seen.update(out=out, **parameters))
    monkeypatch.chdir(tmp_path)
    assert reproduce.cli(["--only", "02", "--out", "nb", "--prepared", "prep", "--runs-dir", "runs",
                          "--checkpoint", "ckpt.pt", "--tables-dir", "t", "--figures-dir", "f"]) == 0
    assert prepared_here == [Path(seen["prepared"])]
    for key, name in (("out", "nb"), ("prepared", "prep"), ("runs_dir", "runs"), ("checkpoint", "ckpt.pt"),
                      ("tables_dir", "t"), ("figures_dir", "f")):
        assert Path(seen[key]) == tmp_path.resolve() / name, key


def test_an_interrupted_demo_generation_is_redone(monkeypatch, tmp_path):
    """demo-data stopped half-way must not leave a raw folder that the next run prepares as if complete."""
    profile = get_profile("demo").with_paths(raw_data=tmp_path / "raw", prepared=tmp_path / "prepared")
    monkeypatch.setattr(pretrain, "pretrain", lambda *args, **kwargs: None)

    def interrupted(argv):
        (tmp_path / argv[1] / "fairface").mkdir(parents=True)  # one dataset written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "cli", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reproduce.ready_demo(profile, log=lambda text: None)
    assert not profile.raw_data.exists()
    generated = []

    def generate(argv):
        generated.append(argv)
        demo.make_demo(argv[1], scale=0.05)
        return 0

    monkeypatch.setattr(demo, "cli", generate)
    monkeypatch.setattr(prepare, "cli", lambda argv: 0)
    reproduce.ready_demo(profile, log=lambda text: None)
    assert len(generated) == 1 and sorted(d.name for d in profile.raw_data.iterdir()) == sorted(demo.DATASETS)


def test_an_existing_demo_encoder_pre_trained_otherwise_is_said(monkeypatch, tmp_path):
    """reproduce keeps an encoder that `pretrain --steps 60` wrote where the demo's goes, and says so: its tables
    cannot match the committed tables/demo."""
    profile = reproduce.get_profile("demo").with_paths(prepared=tmp_path / "crops", checkpoint=tmp_path / "demo.pt")
    (tmp_path / "crops").mkdir()
    (tmp_path / "crops" / "manifest.csv").write_text("")
    profile.checkpoint.write_bytes(b"encoder")
    monkeypatch.setattr(pretrain, "pretrain", lambda *args, **kwargs: pytest.fail("an existing encoder retrained"))
    said = []
    for report, expected in (({"config": "demo-tiny", **pretrain.DEFAULTS}, []),
                             ({"config": "demo-tiny", "steps": 60, "batch_size": 128}, [
                                 f"reproduce: note: {profile.checkpoint} was pre-trained with other settings than "
                                 f"the demo's (steps 60 -> 800); it is used as it is, so the results will differ "
                                 f"from the committed tables/demo; delete it to pre-train the demo's"])):
        profile.checkpoint.with_suffix(".json").write_text(json.dumps(report))
        reproduce.ready_demo(profile, log=said.append)
        assert said == expected
        said.clear()


def test_full_profile_notebooks_refuse_to_run_without_weights(tmp_path):
    """The notebooks take the full profile's Settings as `train --profile full` does: never random weights."""
    (tmp_path / "manifest.csv").write_text("")
    with pytest.raises(ValueError, match="checkpoint .* and bpe"):
        reproduce.settings("full", prepared=tmp_path).ensure_data()
    reproduce.settings("full", prepared=tmp_path, checkpoint="PE-Core-L14-336.pt", bpe="bpe.txt.gz").ensure_data()


def test_the_kernel_runs_without_a_transport_warning(monkeypatch, tmp_path, capfd):
    """reproduce's kernel talks over local IPC sockets: ipykernel (7.x) printed a warning that TCP without
    CurveZMQ keys is unencrypted, once per notebook, into reproduce's output."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", tmp_path)
    out = reproduce.execute("tiny", tmp_path / "executed", {}, log=lambda text: None)
    assert nbformat.read(out, as_version=4).cells[0].outputs[0]["text"] == "42\n"
    assert "without encryption" not in capfd.readouterr().err


def test_a_failed_notebook_leaves_the_last_complete_copy(monkeypatch, tmp_path):
    """papermill saves cell by cell: the executed copy is renamed into place only when every cell ran."""
    import papermill

    def failing(source, output, **kwargs):
        Path(output).write_text("half")
        raise RuntimeError("cell 3 failed")

    (tmp_path / "02_datasets.ipynb").write_text("complete")
    monkeypatch.setattr(papermill, "execute_notebook", failing)
    with pytest.raises(RuntimeError, match="cell 3"):
        reproduce.execute("02_datasets", tmp_path, {}, log=lambda text: None)
    assert (tmp_path / "02_datasets.ipynb").read_text() == "complete"
    assert (tmp_path / "02_datasets.partial.ipynb").read_text() == "half"
    monkeypatch.setattr(papermill, "execute_notebook", lambda source, output, **kwargs: Path(output).write_text("new"))
    assert reproduce.execute("02_datasets", tmp_path, {}, log=lambda text: None).read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["02_datasets.ipynb"]


def test_only_selects_sections():
    assert reproduce.select("04_3") == ["04_3_single_task"]
    assert reproduce.select("04") == [n for n in reproduce.NOTEBOOKS if n.startswith("04")]
    with pytest.raises(ValueError, match="matches no notebook"):
        reproduce.select("06")


def test_full_profile_names_everything_missing(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        reproduce.cli(["--profile", "full", "--raw-data", str(tmp_path / "nope"),
                       "--checkpoint", str(tmp_path / "PE-Core-L14-336.pt")])
    message = str(err.value)
    for expected in ("--raw-data", "nope", "--checkpoint", "PE-Core-L14-336.pt", "--bpe not given",
                     "--detector-dir", "deploy.prototxt"):
        assert expected in message


def test_only_is_checked_before_the_data_is_made(monkeypatch, capsys):
    """A wrong --only must not first wait for the demo's data generation and pre-training; it is an option's
    mistake, said as argparse says one (usage, then `<prog>: error: ...`, exit 2)."""
    monkeypatch.setattr(reproduce, "ready_demo", lambda profile: pytest.fail("data made before --only was checked"))
    with pytest.raises(SystemExit) as exit_:
        reproduce.cli(["--only", "99"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and err.endswith(
        f"reproduce: error: --only '99' matches no notebook; known: {', '.join(reproduce.NOTEBOOKS)}\n")


def test_full_profile_says_where_to_get_each_missing_input(tmp_path):
    """Each line says where its file comes from, and the detector's names what `reproduce` accepts (it has no
    --detector: the full profile crops with the thesis's SSD)."""
    with pytest.raises(SystemExit) as err:
        reproduce.cli(["--profile", "full", "--raw-data", str(tmp_path),
                       "--checkpoint", str(tmp_path / "PE-Core-L14-336.pt")])
    message = str(err.value)
    lines = {line.split()[0]: line for line in message.splitlines() if line.startswith("  --")}
    assert set(lines) == {"--checkpoint", "--bpe", "--detector-dir:"}
    assert "(PE-Core weights: Hugging Face facebook/PE-Core-L14-336, file PE-Core-L14-336.pt)" in lines["--checkpoint"]
    assert "bpe_simple_vocab_16e6.txt.gz, from facebookresearch/perception_models" in lines["--bpe"]
    assert "--detector boxes" not in message and "Pass that folder with --detector-dir." in message



def test_full_profile_trains_on_crops_prepared_elsewhere_without_the_datasets(monkeypatch, tmp_path):
    """The datasets and the detector only make the crops: once PREPARED/manifest.csv is there (prepared on
    another machine, or by `prepare` by hand), the notebooks run with the checkpoint and the merges alone."""
    import torch

    torch.save({"proj": torch.zeros(2)}, tmp_path / "PE-Core-L14-336.pt")
    (tmp_path / "bpe.txt.gz").write_bytes(b"")
    argv = ["--profile", "full", "--only", "02", "--prepared", str(tmp_path / "prepared"), "--checkpoint",
            str(tmp_path / "PE-Core-L14-336.pt"), "--bpe", str(tmp_path / "bpe.txt.gz")]
    with pytest.raises(SystemExit) as err:  # nothing prepared yet: both are needed, and named
        reproduce.cli(argv)
    assert [line.split()[0] for line in str(err.value).splitlines() if line.startswith("  --")] == [
        "--raw-data", "--detector-dir:"]
    assert f"to prepare {tmp_path / 'prepared'})" in str(err.value)
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "manifest.csv").write_text("path,dataset,split,age,gender,emotion\n")
    seen = []
    monkeypatch.setattr(reproduce, "execute", lambda name, out, parameters: seen.append(name))
    assert reproduce.cli(argv) == 0 and seen == ["02_datasets"]

@pytest.mark.parametrize("profile", ["demo", "full"])
@pytest.mark.parametrize("method", ["lp", "ap", "ft4", "lora", "dora", "mtlora"])
def test_train_command_and_notebooks_take_the_same_config_from_a_profile(profile, method):
    """`python3 -m replication train` and the notebooks' Settings turn a profile into one TrainConfig."""
    tasks = "age,gender,emotion" if method == "mtlora" else "age"
    argv = ["--profile", profile, "--method", method, "--tasks", tasks]
    s = reproduce.settings(profile)
    if profile == "full":
        argv += ["--checkpoint", "PE-Core-L14-336.pt"]
        s = reproduce.settings(profile, checkpoint="PE-Core-L14-336.pt")
    from_cli = runs.parse_config(argv)
    assert from_cli == s.train_config(method, tuple(tasks.split(",")))
    # §3.1 batch 128 fits 48 GB only with some of LoRA/DoRA/MTLoRA's blocks checkpointed (README, Performance)
    assert (from_cli.checkpoint_blocks > 0) == (profile == "full" and method in ("lora", "dora", "mtlora"))


@pytest.mark.parametrize("flag", ["--batch-size", "--max-epochs", "--max-train-samples"])
@pytest.mark.parametrize("value", ["0", "-8"])
def test_reproduce_refuses_a_number_below_one_before_any_work(monkeypatch, capsys, flag, value):
    # it reached the notebooks, which failed inside
    monkeypatch.setattr(reproduce, "ready_demo", lambda profile: pytest.fail("data made before the numbers were "
                                                                             "checked"))
    with pytest.raises(SystemExit) as exit_:
        reproduce.cli([flag, value])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: argument {flag}: expected a whole number >= 1, got '{value}'\n")


def test_reproduce_names_a_device_this_machine_lacks_before_any_work(monkeypatch, capsys):
    """As train says it (distributed.device_problem): the batch made the data and ran notebooks 02 and 03 first,
    then failed inside 04_2 on torch's error."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(reproduce, "ready_demo", lambda profile: pytest.fail("data made before --device was checked"))
    for device, message in (("gpu", "--device 'gpu' is not a torch device (e.g. cpu, cuda, cuda:1)"),
                            ("cuda", "--device cuda but CUDA is not available")):
        assert reproduce.cli(["--device", device]) == 2
        assert capsys.readouterr().err == f"reproduce: error: {message}\n"


def test_an_empty_only_is_refused(monkeypatch, capsys):
    # every name starts with "": it ran the whole batch
    monkeypatch.setattr(reproduce, "ready_demo", lambda profile: pytest.fail("an empty --only was taken"))
    with pytest.raises(SystemExit) as exit_:
        reproduce.cli(["--only", ""])
    assert exit_.value.code == 2 and "error: --only '' matches no notebook" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--out", "--tables-dir", "--figures-dir", "--runs-dir"])
def test_an_output_folder_that_cannot_be_made_is_said_before_any_work(monkeypatch, tmp_path, capsys, flag):
    monkeypatch.setattr(reproduce, "ready_demo", lambda profile: pytest.fail("data made before the folders were "
                                                                             "checked"))
    (tmp_path / "afile").write_text("")
    folders = {f: str(tmp_path / f.strip("-")) for f in ("--out", "--tables-dir", "--figures-dir", "--runs-dir")}
    folders[flag] = str(tmp_path / "afile" / "sub")
    assert reproduce.cli([x for item in folders.items() for x in item]) == 2
    assert capsys.readouterr().err == (f"reproduce: error: {folders[flag]}: {tmp_path / 'afile'} is a file, not a "
                                       "folder\n")


@pytest.mark.parametrize("raised, code, says", [
    (KeyboardInterrupt, 130, "\nreproduce: interrupted; the same command continues: finished runs are reused and an "
                             "interrupted one resumes from its last checkpoint\n"),
    (reproduce.NotebookError("02_datasets failed in cell 3: ValueError: bad; the partly executed copy: x"), 2,
     "reproduce: error: 02_datasets failed in cell 3: ValueError: bad; the partly executed copy: x\n"),
])
def test_an_interrupted_or_failed_notebook_is_one_line(monkeypatch, tmp_path, capsys, raised, code, says):
    def execute(name, out, parameters):
        raise raised
    monkeypatch.setattr(reproduce, "ready_demo", lambda profile: None)
    monkeypatch.setattr(reproduce, "execute", execute)
    assert reproduce.cli(["--out", str(tmp_path / "nb"), "--tables-dir", str(tmp_path / "t"),
                          "--figures-dir", str(tmp_path / "f")]) == code
    assert capsys.readouterr().err == says


def test_a_failed_cell_is_named_with_the_partly_executed_copy(monkeypatch, tmp_path):
    """[2] is what the partial copy shows beside the failed cell."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("x / 0")])
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", tmp_path)
    with pytest.raises(reproduce.NotebookError) as err:
        reproduce.execute("tiny", tmp_path / "executed", {}, log=lambda text: None)
    partial = tmp_path / "executed" / "tiny.partial.ipynb"
    assert str(err.value) == ("tiny failed in cell 2: ZeroDivisionError: division by zero; the partly executed copy: "
                              f"{partial}")
    executed = [c for c in nbformat.read(partial, as_version=4).cells if c.cell_type == "code"]
    assert [c.execution_count for c in executed] == [1, 2] and executed[1].outputs[0]["ename"] == "ZeroDivisionError"


def test_a_finished_notebooks_kernel_is_shut_down_without_an_interrupt(monkeypatch, tmp_path):
    """jupyter_client 8 sends SIGINT before every shutdown; landing while ipykernel still finished the last reply, it
    logged "ERROR | KeyboardInterrupt caught in kernel" into reproduce's output."""
    sent = []
    make = reproduce._kernel_manager

    def recording(groups):
        class Recording(make(groups)):
            async def _async_signal_kernel(self, signum):
                sent.append(signum)
                await super()._async_signal_kernel(signum)
        return Recording

    monkeypatch.setattr(reproduce, "_kernel_manager", recording)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", tmp_path)
    reproduce.execute("tiny", tmp_path / "executed", {}, log=lambda text: None)
    assert signal.SIGINT not in sent


def test_ctrl_c_interrupts_the_running_cell_and_the_kernel_stops_quietly(monkeypatch, tmp_path, capfd):
    """Ctrl-C (SIGINT to reproduce) is handed to the running cell, which fails with KeyboardInterrupt into the partial
    copy; papermill stopped mid-cell instead shut the kernel down with the cell's reply unsent (ipykernel's ZMQError
    tracebacks) and saved no error."""
    started = tmp_path / "started"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(120)")])
    nbformat.write(nb, tmp_path / "slow.ipynb")
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", tmp_path)

    def press_ctrl_c():
        for _ in range(1200):  # at most 2 minutes for the kernel to start
            if started.exists():
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.1)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        reproduce.execute("slow", tmp_path / "executed", {}, log=lambda text: None)
    cell = nbformat.read(tmp_path / "executed" / "slow.partial.ipynb", as_version=4).cells[-1]
    assert cell.outputs[-1]["ename"] == "KeyboardInterrupt"
    assert not (tmp_path / "executed" / "slow.ipynb").exists()
    assert "Traceback" not in capfd.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is the caller's again


def test_reproduce_generates_the_demo_data_over_a_half_written_partial_folder(monkeypatch, tmp_path):
    """demo-data refuses a non-empty --out; reproduce's generation writes into a .partial folder it empties first."""
    profile = get_profile("demo").with_paths(raw_data=tmp_path / "raw", prepared=tmp_path / "prepared")
    (tmp_path / "raw.partial" / "fairface").mkdir(parents=True)  # what an interrupted generation left
    make_demo = demo.make_demo
    monkeypatch.setattr(demo, "make_demo", lambda out, seed, scale: make_demo(out, seed, 0.05))
    monkeypatch.setattr(prepare, "cli", lambda argv: 0)
    monkeypatch.setattr(pretrain, "pretrain", lambda *args, **kwargs: None)
    reproduce.ready_demo(profile, log=lambda text: None)
    assert sorted(d.name for d in profile.raw_data.iterdir()) == sorted(demo.DATASETS)
    assert not (tmp_path / "raw.partial").exists()
