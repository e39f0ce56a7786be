"""replication.pretrain: captions, multi-positive targets, and a tiny end-to-end pre-training."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from replication import pretrain
from replication.checkpoint import load_clip
from replication.labels import MISSING, TASKS
from replication.profiles import PROFILES, demo_inputs_help
from replication.tokenizer import get_tokenizer
from replication.zero_shot import PROMPTS


def test_captions_name_only_the_labels_an_image_has():
    rng = np.random.default_rng(0)
    captions = [pretrain.caption({"age": 3, "gender": 1, "emotion": MISSING}, rng) for _ in range(200)]
    assert all("between 20 and 29 years old" in c or c == PROMPTS["gender"][1] for c in captions)
    assert not any(w in c for c in captions for w in pretrain.EMOTION_WORDS.values())
    assert any(c in PROMPTS["age"] for c in captions) and any("woman" in c for c in captions)
    assert len(set(captions)) > 8          # varied wording
    emotion_only = {pretrain.caption({"age": MISSING, "gender": MISSING, "emotion": 5}, rng)
                    for _ in range(50)}
    assert all("angry" in c for c in emotion_only)
    assert any(c.endswith("an angry person") for c in emotion_only)


def test_caption_targets_count_every_agreeing_caption_as_positive():
    labels = np.array([[3, 1, MISSING], [3, 0, MISSING], [MISSING, MISSING, 5]])
    described = np.array([[3, 1, MISSING],          # composed: age + gender of image 0
                          [3, MISSING, MISSING],    # the age prompt "20-29"
                          [MISSING, MISSING, 5]])   # an emotion prompt
    expected = torch.tensor([[True, True, False],   # image 0 matches captions 0 and 1
                             [False, True, False],  # image 1 (male) only the age prompt
                             [False, False, True]])
    assert torch.equal(pretrain._caption_matches(labels, described), expected)
    assert list(pretrain._described(PROMPTS["gender"][1], labels[0])) == [MISSING, 1, MISSING]
    assert list(pretrain._described("a photo of a woman", labels[0])) == [3, 1, MISSING]


@pytest.fixture
def prepared(tmp_path):
    """12 train + 6 val + 3 test random crops with labels."""
    rng = np.random.default_rng(0)
    rows = []
    (tmp_path / "crops").mkdir()
    for i, split in enumerate(["train"] * 12 + ["val"] * 6 + ["test"] * 3):
        path = f"crops/{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / path)
        emotion = i % 7 if i % 3 == 0 else MISSING
        age, gender = (MISSING, MISSING) if emotion != MISSING else (i % 9, i % 2)
        rows.append((path, "rafdb" if emotion != MISSING else "fairface", split, age, gender, emotion))
    pd.DataFrame(rows, columns=["path", "dataset", "split", *TASKS]).to_csv(
        tmp_path / "manifest.csv", index=False)
    return tmp_path


def test_only_the_training_split_is_used(prepared):
    images, labels = pretrain.load_split(prepared, "train", 64)
    assert images.shape == (12, 3, 64, 64) and images.dtype == torch.uint8 and labels.shape == (12, 3)


def test_pretrain_writes_a_loadable_checkpoint_once(prepared, tmp_path, capsys):
    ckpt, bpe = tmp_path / "out" / "demo.pt", tmp_path / "out" / "bpe.txt.gz"
    pretrain.pretrain(prepared, ckpt, bpe, steps=2, batch_size=8)
    model = load_clip(ckpt, config="demo-tiny")          # the same loader as the real checkpoint
    tokens = get_tokenizer(bpe, 32, 1024)([p for ps in PROMPTS.values() for p in ps])
    assert int(tokens.max()) < 1024
    with torch.no_grad():
        assert model.encode_text(tokens).shape == (18, 64)
    report = (ckpt.with_suffix(".json")).read_text()
    assert '"train_images": 12' in report and "val_zero_shot_accuracy" in report
    stamp = ckpt.stat().st_mtime_ns
    capsys.readouterr()
    pretrain.pretrain(prepared, ckpt, bpe, steps=2, batch_size=8)   # idempotent
    assert ckpt.stat().st_mtime_ns == stamp
    assert capsys.readouterr().out == f"pretrain: {ckpt} exists, nothing to do\n"
    # other settings than the report's are named, not trained (nor was a 60-step encoder asked for 800 steps: a
    # later reproduce took it as it was, without a word)
    pretrain.pretrain(prepared, ckpt, bpe, steps=3, batch_size=8, seed=1)
    assert ckpt.stat().st_mtime_ns == stamp
    assert capsys.readouterr().out == (f"pretrain: {ckpt} exists, pre-trained with other settings (steps 2 -> 3, seed "
                                       f"0 -> 1): it is kept; to pre-train with these, delete it or give another "
                                       f"--checkpoint\n")
    assert not list(ckpt.parent.glob("*tmp*"))


@pytest.mark.parametrize("report, problem", [
    (b"{\"steps\": 8", "Expecting ',' delimiter: line 1 column 12 (char 11)"),
    (b"[800]", "a JSON list, not an object"),
    (b"\xff", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte")])
def test_a_damaged_report_beside_an_existing_encoder_is_said_and_the_encoder_kept(tmp_path, capsys, report, problem):
    ckpt = tmp_path / "demo.pt"
    ckpt.write_bytes(b"encoder")
    ckpt.with_suffix(".json").write_bytes(report)
    assert pretrain.pretrain(tmp_path / "crops", ckpt, tmp_path / "bpe.txt.gz") == ckpt
    assert capsys.readouterr().out == (f"pretrain: warning: {ckpt.with_suffix('.json')} is not the report pretrain "
                                       f"writes ({problem}); the settings demo.pt was pre-trained with are unknown\n"
                                       f"pretrain: {ckpt} exists, nothing to do\n")
    assert ckpt.read_bytes() == b"encoder"


def test_a_rerun_that_reuses_the_merges_file_trains_the_same_encoder(prepared, tmp_path):
    """An interrupted pretrain leaves the merges file and no checkpoint; the rerun reuses the file and must
    still draw what a fresh run draws (the corpus's captions came from the training rng)."""
    fresh, again = tmp_path / "fresh", tmp_path / "again"
    pretrain.pretrain(prepared, fresh / "demo.pt", fresh / "bpe.txt.gz", steps=2, batch_size=8)
    again.mkdir()
    shutil.copy(fresh / "bpe.txt.gz", again / "bpe.txt.gz")  # what the interrupted run left
    pretrain.pretrain(prepared, again / "demo.pt", again / "bpe.txt.gz", steps=2, batch_size=8)
    a, b = (torch.load(d / "demo.pt", weights_only=True) for d in (fresh, again))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def demo(tmp_path, monkeypatch):
    """The demo profile with its raw data, crops, encoder and merges in tmp_path, none of them made yet (this
    machine's own data/demo/ may hold them)."""
    root = tmp_path / "data" / "demo"
    monkeypatch.setitem(PROFILES, "demo", PROFILES["demo"].with_paths(
        raw_data=root / "raw", prepared=root / "prepared", checkpoint=root / "demo.pt", bpe=root / "bpe.txt.gz"))
    return PROFILES["demo"]


def test_cli_names_the_missing_manifest_in_one_error(tmp_path, capsys, demo):
    """As train reports a missing input: `pretrain: error:` and the help, without argparse's usage block."""
    assert pretrain.cli(["--prepared", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pretrain: error: {tmp_path / 'manifest.csv'} not found.\n") and "usage" not in err


def test_cli_says_prepared_takes_the_folder_of_the_manifest(prepared, tmp_path, capsys):
    """manifest.csv given for its folder was looked for as manifest.csv/manifest.csv, and `prepare --out
    .../manifest.csv` offered to make it."""
    for given, says in ((prepared / "manifest.csv", f": --prepared {prepared}"), (prepared / "crops" / "0.jpg", "")):
        assert pretrain.cli(["--prepared", str(given), "--checkpoint", str(tmp_path / "demo.pt")]) == 2
        assert capsys.readouterr().err == (f"pretrain: error: --prepared {given} is a file; it takes the folder "
                                           f"holding manifest.csv{says}\n")


def test_cli_gives_the_exact_commands_that_make_the_demo_data(tmp_path, capsys, monkeypatch, demo):
    """`prepare` alone defaults to the SSD at 336 px: the demo's data needs the arguments reproduce passes, and
    the commands write where the failed one looked (the demo's own folders, or the ones it was given)."""
    prepare = f"python3 -m replication prepare --data-root {demo.raw_data} --out {{}} --detector boxes --size 64"
    assert demo_inputs_help().splitlines() == [
        "`python3 -m replication reproduce --profile demo` makes the demo's data and encoder (then runs the "
        "notebooks); step by step, in the demo's folders:",
        f"  python3 -m replication demo-data --out {demo.raw_data}",
        "  " + prepare.format(demo.prepared),
        "  python3 -m replication pretrain"]
    monkeypatch.chdir(tmp_path)  # a relative --prepared is shown absolute, as the commands take it
    assert pretrain.cli(["--prepared", "crops", "--checkpoint", str(demo.checkpoint)]) == 2
    assert capsys.readouterr().err.splitlines()[-4:] == [
        "Make the demo's data and encoder in the folders given:",
        f"  python3 -m replication demo-data --out {demo.raw_data}",
        "  " + prepare.format(tmp_path / "crops"),
        f"  python3 -m replication pretrain --prepared {tmp_path / 'crops'}"]


def test_a_mistyped_demo_path_is_answered_with_the_demo_s_own(tmp_path, monkeypatch):
    """A --prepared that does not exist, while the demo's own prepared folder does, is most likely a typo: the
    help names the folder that exists before the commands that would make new data."""
    own = tmp_path / "data" / "demo" / "prepared"
    own.mkdir(parents=True)
    monkeypatch.setitem(PROFILES, "demo", PROFILES["demo"].with_paths(prepared=own))
    lines = demo_inputs_help(prepared=tmp_path / "data" / "demo" / "prepard").splitlines()
    assert lines[:2] == [f"{tmp_path / 'data' / 'demo' / 'prepard'} does not exist, but the demo's {own} does: did "
                         f"you mean --prepared {own}?", "Make the demo's data and encoder in the folders given:"]
    (tmp_path / "elsewhere").mkdir()  # a folder that exists (empty) is the user's choice: no question
    assert demo_inputs_help(prepared=tmp_path / "elsewhere").splitlines()[0].startswith("Make the demo's data")


def test_the_help_gives_only_the_steps_still_to_take(demo, tmp_path, capsys):
    """Each step only if its output is missing, as reproduce takes them: demo-data refuses a raw folder that holds
    files, and pretrain keeps an encoder, whose merges file it writes with it (a user who had the raw data but no
    crops was told to run demo-data first, which failed)."""
    prepare = (f"  python3 -m replication prepare --data-root {demo.raw_data} --out {demo.prepared} --detector boxes "
               f"--size 64")
    demo.raw_data.mkdir(parents=True)
    assert demo_inputs_help().splitlines()[1:] == [prepare, "  python3 -m replication pretrain"]
    demo.prepared.mkdir()
    (demo.prepared / "manifest.csv").write_text("")
    assert demo_inputs_help().splitlines()[1:] == ["  python3 -m replication pretrain"]
    demo.checkpoint.write_bytes(b"")
    assert demo_inputs_help().splitlines()[1:] == [
        f"  rm {demo.checkpoint} && python3 -m replication pretrain  # its merges file is written with the encoder"]
    # pretrain writes --checkpoint and --bpe: a new file there is no typo of the demo's own
    new = tmp_path / "new.pt"
    assert pretrain.cli(["--prepared", str(tmp_path / "crops"), "--checkpoint", str(new)]) == 2
    assert "did you mean --checkpoint" not in capsys.readouterr().err
    assert demo_inputs_help(checkpoint=new).splitlines()[0] == (
        f"{new} does not exist, but the demo's {demo.checkpoint} does: did you mean --checkpoint {demo.checkpoint}?")


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--batch-size", "0"), ("--batch-size", "-8")])
def test_cli_refuses_steps_or_batch_size_below_one(prepared, capsys, flag, value):
    # --steps 0 was a ZeroDivisionError in the schedule, a batch size below one an error inside the training
    with pytest.raises(SystemExit) as exit_:
        pretrain.cli(["--prepared", str(prepared), flag, value])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: argument {flag}: expected a whole number >= 1, got '{value}'\n")


def test_cli_refuses_outputs_it_could_write_only_after_training(prepared, tmp_path, capsys, monkeypatch):
    """A folder as --checkpoint was taken as a finished pre-training ("exists, nothing to do"); a checkpoint or
    merges file under a file failed with a traceback, the checkpoint's only after the training."""
    monkeypatch.setattr(pretrain, "load_split", lambda *args: pytest.fail("pretrain trained with an unwritable output"))
    (tmp_path / "afile").write_text("")
    for given, says in (
            (["--checkpoint", str(tmp_path)], f"{tmp_path} is a folder; expected a file"),
            (["--checkpoint", str(tmp_path / "afile" / "demo.pt")],
             f"{tmp_path / 'afile' / 'demo.pt'}: {tmp_path / 'afile'} is a file, not a folder"),
            (["--checkpoint", str(tmp_path / "demo.pt"), "--bpe", str(tmp_path / "afile" / "bpe.txt.gz")],
             f"{tmp_path / 'afile' / 'bpe.txt.gz'}: {tmp_path / 'afile'} is a file, not a folder")):
        assert pretrain.cli(["--prepared", str(prepared), *given]) == 2
        assert capsys.readouterr() == ("", f"pretrain: error: {says}\n")


def test_cli_names_a_bpe_that_is_no_merges_file_in_one_line(prepared, tmp_path, capsys):
    """An existing --bpe is reused: one that is no merges file ended in MergesError's traceback (train said it in
    one line), and no checkpoint is written."""
    bpe = tmp_path / "notes.txt"
    bpe.write_text("#version: 0.2\n")
    assert pretrain.cli(["--prepared", str(prepared), "--checkpoint", str(tmp_path / "demo.pt"), "--bpe", str(bpe),
                         "--steps", "1", "--batch-size", "4"]) == 2
    assert capsys.readouterr().err == (f"pretrain: error: {bpe}: no BPE merges after the header line (expected "
                                       f"CLIP's bpe_simple_vocab_16e6.txt.gz, or the demo's file written by "
                                       f"train_bpe)\n")
    assert not (tmp_path / "demo.pt").exists()


def test_the_loss_is_the_symmetric_multi_positive_infonce_at_the_clamped_learned_scale(prepared, tmp_path, monkeypatch):
    """Listing 2.2's objective, recomputed by hand from one step's features: logits = exp(logit_scale) x the
    cosine similarities (images x captions), cross-entropy image->text and text->image, each row's target spread
    evenly over its positives, the two averaged; after the step the temperature is capped at CLIP's 100."""
    seen = {}
    real_load, real_matches = pretrain.load_clip, pretrain._caption_matches

    def load_clip(path, config):
        model = real_load(path, config=config)
        with torch.no_grad():
            model.logit_scale.fill_(5.0)  # above log(100): the step's update leaves it there, the cap must not
        model.register_forward_hook(lambda m, args, out: seen.setdefault("features", [t.detach() for t in out[:2]])
                                    and None)  # a hook returning a value would replace the output
        seen["model"] = model
        return model

    def matches(labels, described):
        seen["positives"] = real_matches(labels, described).float()
        return real_matches(labels, described)

    monkeypatch.setattr(pretrain, "load_clip", load_clip)
    monkeypatch.setattr(pretrain, "_caption_matches", matches)
    monkeypatch.setattr(pretrain, "zero_shot_accuracy", lambda *args: {})
    ckpt = tmp_path / "out" / "demo.pt"
    pretrain.pretrain(prepared, ckpt, tmp_path / "out" / "bpe.txt.gz", steps=1, batch_size=8)
    images, texts = seen["features"]
    positives = seen["positives"]
    assert not torch.equal(positives, positives.T)  # captions naming fewer labels match more images
    logits = np.exp(5.0) * images.double() @ texts.double().T

    def infonce(logits, positives):
        return -(positives / positives.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()

    expected = (infonce(logits, positives.double()) + infonce(logits.T, positives.T.double())) / 2
    report = json.loads(ckpt.with_suffix(".json").read_text())
    assert report["final_loss"] == pytest.approx(float(expected), rel=1e-4)
    assert float(seen["model"].logit_scale.detach()) == pytest.approx(np.log(100))


def test_cli_names_a_manifest_without_training_rows_in_one_line(prepared, tmp_path, capsys):
    """A manifest of test sets only (e.g. `prepare --datasets utkface,vggface2`) has nothing to pre-train on: it
    was a ValueError traceback, which pretrain's one-line errors did not cover."""
    manifest = pd.read_csv(prepared / "manifest.csv")
    manifest[manifest["split"] == "test"].to_csv(prepared / "manifest.csv", index=False)
    assert pretrain.cli(["--prepared", str(prepared), "--checkpoint", str(tmp_path / "demo.pt"),
                         "--bpe", str(tmp_path / "bpe.txt.gz")]) == 2
    assert capsys.readouterr().err == (f"pretrain: error: {prepared / 'manifest.csv'} has no rows with split == "
                                       f"'train'\n")
    assert not (tmp_path / "demo.pt").exists()


@pytest.mark.parametrize("value", ["0", "-0.001", "nan"])
def test_cli_refuses_a_learning_rate_that_is_not_positive(prepared, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        pretrain.cli(["--prepared", str(prepared), "--lr", value])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: argument --lr: expected a number > 0, got '{value}'\n")
