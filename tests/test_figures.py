"""replication.figures: every figure function writes a PNG; demo figures carry the label."""
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier

from replication import figures
from replication.labels import MISSING
from replication.profiles import DEMO_LABEL


def test_agg_backend():
    assert matplotlib.get_backend().lower() == "agg"


def test_label_drawn_only_for_demo():
    fig = plt.figure()
    figures.draw_label(fig, "demo")
    assert [t.get_text() for t in fig.texts] == [DEMO_LABEL]
    fig2 = plt.figure()
    figures.draw_label(fig2, "full")
    assert fig2.texts == []
    plt.close("all")


def is_png(path):
    with Image.open(path) as im:
        return im.format == "PNG" and im.size[0] > 100


def test_dataset_distribution(tmp_path):
    rows = [("x.jpg", "vggface2", "test", i % 9, i % 2, MISSING) for i in range(30)]
    manifest = pd.DataFrame(rows, columns=["path", "dataset", "split", "age", "gender", "emotion"])
    path = figures.dataset_distribution(manifest, "2.12", tmp_path, "demo")
    assert path.name == "figure_2_12.png" and is_png(path)
    with pytest.raises(ValueError, match="rafdb"):
        figures.dataset_distribution(manifest, "2.11", tmp_path, "demo")


def test_augmentation_examples(tmp_path):
    crop = tmp_path / "crop.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(crop)
    from replication.transforms import train_transform
    path = figures.augmentation_examples([crop, crop], train_transform(64), tmp_path, "demo", 3)
    assert is_png(path)


def test_learned_variances_confusion_and_predictions(tmp_path):
    history = [{"age": -0.1 * e, "gender": 0.05 * e, "emotion": 0.0} for e in range(4)]
    assert is_png(figures.learned_variances({"MTLoRA": history, "DoRA": history}, tmp_path, "demo"))
    cm = np.array([[5, 1], [0, 4]])
    assert is_png(figures.confusion_matrices([("a", cm, ["m", "f"]), ("b", cm, ["m", "f"])],
                                             "4.2", "emotion on RAF-DB", tmp_path, "full"))
    crop = tmp_path / "c.jpg"
    Image.new("RGB", (64, 64), "gray").save(crop)
    ex = [(crop, "utkface", {"age": "20-29", "gender": "male"}, {"age": "30-39"})] * 3
    assert is_png(figures.prediction_examples(ex, tmp_path, "demo", columns=2))


def test_confusion_matrices_print_counts_shade_recall_and_say_so(tmp_path, monkeypatch):
    """Figs 4.2/4.3: each cell prints its count and is shaded by its share of the true class (a class of
    3 images reads on the scale of one of 300); a colour bar says so, the heading names the figure, and
    four panels stand two by two as the thesis's (a)-(d)."""
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, *args: drawn.append(fig))
    cm = np.array([[297, 3, 0], [1, 2, 0], [0, 0, 0]])  # the third class has no test image
    figures.confusion_matrices([(f"p{i}", cm, ["a", "b", "c"]) for i in range(4)], "4.3",
                               "age on FairFace and UTKFace", tmp_path, "demo")
    fig = drawn[0]
    assert fig._suptitle.get_text() == "Fig. 4.3 — age on FairFace and UTKFace"
    panels = [ax for ax in fig.axes if ax.get_title().startswith("p")]
    assert len({ax.get_position().x0 for ax in panels}) == 2 and len({ax.get_position().y0 for ax in panels}) == 2
    shading = np.asarray(panels[0].collections[0].get_array()).reshape(3, 3)
    np.testing.assert_allclose(shading, [[0.99, 0.01, 0], [1 / 3, 2 / 3, 0], [0, 0, 0]])
    assert [t.get_text() for t in panels[0].texts] == [str(v) for v in cm.flat]
    assert (panels[0].get_xlabel(), panels[0].get_ylabel()) == ("predicted", "true")
    assert panels[0].collections[0].get_clim() == (0, 1)  # one scale for every panel: a share of 0..1
    colour_bars = [ax for ax in fig.axes if ax not in panels]
    assert [ax.get_ylabel() for ax in colour_bars] == ["share of the true class (diagonal: recall)"]
    plt.close(fig)


def test_confusion_panel_counts_one_test_set_and_titles_it_with_the_tables_values():
    """Figs 4.2/4.3: a panel counts only its test set's rows of its task, and its title repeats the
    balanced accuracy and accuracy of ``tables.scores`` (what Fig. 4.3's table prints beside it)."""
    from replication import tables
    predictions = pd.DataFrame({
        "dataset": ["utkface"] * 5 + ["fairface"] * 2 + ["utkface"] * 2,
        "task": ["gender"] * 7 + ["age"] * 2,
        "label": [0, 0, 0, 1, 1, 0, 1, 3, 4],
        "pred": [0, 0, 1, 1, 0, 1, 1, 3, 3]})
    run_scores = {"utkface/gender": 60.0, "utkface/gender/balanced": 58.333}
    title, counts, names = figures.confusion_panel(predictions, run_scores, "DoRA (UW)", "utkface", "gender")
    np.testing.assert_array_equal(counts, [[2, 1], [1, 1]])
    assert title == "DoRA (UW) on UTKFace\nbalanced acc. 58.33 (acc. 60.00)" and list(names) == ["male", "female"]
    s = tables.scores(predictions.assign(path="x"))
    assert figures.confusion_panel(predictions, s, "m", "utkface", "gender")[0].endswith(
        f"balanced acc. {s['utkface/gender/balanced']:.2f} (acc. {s['utkface/gender']:.2f})")


def clusters(n=90, dim=20, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = rng.normal(size=(3, dim)) * 10
    return centres[labels] + rng.normal(size=(n, dim)), labels


def test_projections():
    x, y = clusters()
    np.testing.assert_allclose(np.abs(figures.project(x, "pca")),
                               np.abs(PCA(2, random_state=0).fit_transform(x)), atol=1e-8)
    xy = figures.project(x, "tsne")
    # well separated clusters stay separated in the t-SNE map
    assert KNeighborsClassifier(3).fit(xy, y).score(xy, y) > 0.95
    with pytest.raises(ValueError, match="pca"):
        figures.project(x, "umap")


def test_feature_maps(tmp_path, monkeypatch):
    x, y = clusters(60)
    panels = [("t-SNE", x, y, ["a", "b", "c"], "tsne"), ("PCA", x, y, ["a", "b", "c"], "pca"),
              ("PCA2", x, y, ["a", "b", "c"], "pca")]
    assert is_png(figures.feature_maps(panels, "4.4", "RAF-DB, untrained vs trained", tmp_path, "demo"))
    # The figure names its dataset/model (the thesis's caption), and an unlabelled sample (MISSING) is not
    # drawn: names[-1] would silently colour it as the last class.
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, *args: drawn.append(fig))
    y_missing = y.copy()
    y_missing[:6] = MISSING
    figures.feature_maps([("PCA", x, y_missing, ["a", "b", "c"], "pca")], "4.5", "UTKFace", tmp_path, "demo")
    fig = drawn[0]
    assert fig._suptitle.get_text() == "Fig. 4.5 — UTKFace"
    ax = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 54
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]
    plt.close(fig)
    # a class keeps its colour in a panel that lacks another class, and no legend covers a point
    figures.feature_maps([("PCA", x, y, ["a", "b", "c"], "pca"), ("PCA", x[y > 0], y[y > 0], ["a", "b", "c"], "pca")],
                         "4.5", "UTKFace", tmp_path, "demo")
    fig = drawn[1]
    renderer = fig.canvas.get_renderer()
    colours = [{t.get_text(): matplotlib.colors.to_rgba(h.get_markerfacecolor()) for t, h in
                zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)} for ax in fig.axes]
    assert colours[1] == {k: colours[0][k] for k in ("b", "c")}
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        points = ax.transData.transform(np.concatenate([c.get_offsets() for c in ax.collections]))
        assert not any(legend.contains(*p) for p in points)
    plt.close(fig)
    # the heading stays above the panels' titles, however many rows (Fig. 4.5 has four)
    figures.feature_maps(panels[1:] * 4, "4.5", "UTKFace", tmp_path, "demo")
    fig = drawn[2]
    renderer = fig.canvas.get_renderer()
    heading = fig._suptitle.get_window_extent(renderer)
    assert all(heading.y0 > ax.title.get_window_extent(renderer).y1 for ax in fig.axes)
    plt.close(fig)


def test_class_distribution_legend_is_beside_the_bars(tmp_path, monkeypatch):
    """Figs 2.8-2.13 name the dataset as the thesis does, and the split legend does not cover a bar."""
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, *args: drawn.append(fig))
    manifest = pd.DataFrame({"path": "x.jpg", "dataset": "utkface", "split": "test", "age": [0, 1, 1, 8],
                             "gender": [0, 0, 0, 1], "emotion": MISSING})
    figures.dataset_distribution(manifest, "2.9", tmp_path, "demo")
    fig = drawn[0]
    renderer = fig.canvas.get_renderer()
    assert fig._suptitle.get_text() == "Fig. 2.9 — UTKFace class distribution"
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        bars = [bar.get_window_extent(renderer) for bar in ax.patches if bar.get_height() > 0]
        assert bars and not any(legend.overlaps(bar) for bar in bars)
    plt.close(fig)


def test_lagenda_figure_shows_gender_within_each_age_group(tmp_path, monkeypatch):
    """§2.7.3: LAGENDA's 'gender balance within each group, as illustrated in Figure 2.10': a panel counts each
    age group's males and females; VGGFace2's log-scale age axis labels the values between its decades."""
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, *args: drawn.append(fig))
    manifest = pd.DataFrame({"path": "x.jpg", "dataset": "lagenda", "split": ["train"] * 5 + ["val"],
                             "age": [0, 0, 0, 3, 3, 8], "gender": [0, 1, 1, 0, MISSING, 1], "emotion": MISSING})
    figures.dataset_distribution(manifest, "2.10", tmp_path, "demo")
    ax = drawn[0].axes[-1]
    assert ax.get_title() == "LAGENDA: age by gender (all splits)"
    genders = [t.get_text() for t in ax.get_legend().get_texts()]  # one bar container per gender, in this order
    heights = {(g, round(b.get_x() + b.get_width() / 2)): b.get_height()
               for g, c in zip(genders, ax.containers) for b in c}
    assert {k: v for k, v in heights.items() if v > 0} == {("male", 0): 1, ("female", 0): 2, ("male", 3): 1,
                                                           ("female", 8): 1}
    plt.close(drawn[0])
    vgg = manifest.assign(dataset="vggface2", split="test", age=[0] * 2 + [1] * 4)
    figures.dataset_distribution(vgg, "2.12", tmp_path, "demo")
    age = drawn[1].axes[0]
    assert age.get_yscale() == "log" and drawn[1].axes[1].get_yscale() == "linear"  # the gender panel: linear
    assert len(drawn[1].axes) == 2  # no age-by-gender panel beyond LAGENDA
    drawn[1].canvas.draw()
    assert any(t.get_text() for t in age.yaxis.get_minorticklabels())
    # the empty age groups (2-8: no image) are marked "0" at their place, as the log axis draws no bar for them
    zeros = [t for t in age.texts if t.get_text() == "0"]
    assert sorted(round(t.xy[0]) for t in zeros) == list(range(2, 9))
    assert [t.get_text() for t in drawn[1].axes[1].texts] == []  # both genders have images
    plt.close(drawn[1])


def test_example_predictions_name_each_tasks_class_and_the_true_one_where_labelled(tmp_path):
    """Fig. 5.1's examples: the class names of the model's argmax per task, and the true class only of the
    tasks an image is labelled for (a RAF-DB test image has no age)."""
    import torch
    from replication.labels import TASKS

    for i in range(2):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(tmp_path / f"{i}.jpg")
    manifest = pd.DataFrame({"path": ["0.jpg", "1.jpg", "1.jpg"], "dataset": "rafdb", "split": ["test", "test", "val"],
                             "age": MISSING, "gender": [1, MISSING, 0], "emotion": [2, 5, 1]})  # a val row: never shown

    def model(images):  # class 3 of age, 0 of gender, 4 of emotion for every image
        n = len(images)
        return {t: torch.nn.functional.one_hot(torch.full((n,), c), len(TASKS[t])).float()
                for t, c in (("age", 3), ("gender", 0), ("emotion", 4))}

    examples = figures.example_predictions(model, tmp_path, manifest, ["rafdb"], 3, 16)
    predicted = {"age": TASKS["age"][3], "gender": TASKS["gender"][0], "emotion": TASKS["emotion"][4]}
    assert sorted((p.name, ds, pred, truth["emotion"], "gender" in truth) for p, ds, pred, truth in examples) == [
        ("0.jpg", "rafdb", predicted, TASKS["emotion"][2], True),
        ("1.jpg", "rafdb", predicted, TASKS["emotion"][5], False)]
    assert all("age" not in truth for _, _, _, truth in examples)


def test_celebahq_figure_adds_the_released_val_folder_from_the_report(tmp_path, monkeypatch):
    """Fig. 2.13b draws a CelebA-HQ 'Test Set' the manifest lacks (Table 3.1 does not use it): prepare's report
    counts its classes, and the figure draws them as one more split."""
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, *args: drawn.append(fig))
    manifest = pd.DataFrame({"path": "x.jpg", "dataset": "celebahq", "split": ["train"] * 3 + ["val"],
                             "age": MISSING, "gender": [0, 1, 1, 0], "emotion": MISSING})
    report = {"datasets": {"celebahq": {"not_used_class_counts": [
        {"split": "val", "task": "gender", "class_id": 0, "class_name": "male", "count": 5, "percent": 62.5},
        {"split": "val", "task": "gender", "class_id": 1, "class_name": "female", "count": 3, "percent": 37.5}]}}}
    figures.dataset_distribution(manifest, "2.13", tmp_path, "demo", report=report)
    [ax] = drawn[0].axes
    splits = [t.get_text() for t in ax.get_legend().get_texts()]
    assert splits == ["train", "val", "released val (unused)"]
    heights = {s: [b.get_height() for b in c] for s, c in zip(splits, ax.containers)}
    assert heights == {"train": [1, 2], "val": [1, 0], "released val (unused)": [5, 3]}
    plt.close(drawn[0])
    figures.dataset_distribution(manifest, "2.13", tmp_path, "demo")  # without a report: the manifest's splits
    assert [t.get_text() for t in drawn[1].axes[0].get_legend().get_texts()] == ["train", "val"]
    plt.close(drawn[1])


def test_every_saved_figure_carries_the_demo_label_and_fig_4_1_plots_the_variances(tmp_path, monkeypatch):
    """`save` draws the label on whatever figure it writes; Fig. 4.1 plots σ² = exp(s) per epoch, not s;
    Fig. 5.1 names the true class beside the prediction where the image is labelled."""
    fig = plt.figure()
    figures.save(fig, tmp_path, "9.9", "demo")
    assert [t.get_text() for t in fig.texts] == [DEMO_LABEL] and (tmp_path / "figure_9_9.png").exists()
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, *args: drawn.append(fig))
    history = [{"age": -0.5 * e, "gender": 0.25 * e, "emotion": 0.0} for e in range(3)]
    figures.learned_variances({"MTLoRA": history}, tmp_path, "demo")
    lines = {line.get_label(): list(line.get_ydata()) for line in drawn[0].axes[0].get_lines()}
    np.testing.assert_allclose(lines["age"], np.exp([0, -0.5, -1.0]))
    crop = tmp_path / "c.jpg"
    Image.new("RGB", (16, 16), "gray").save(crop)
    figures.prediction_examples([(crop, "utkface", {"age": "20-29", "gender": "male"}, {"age": "30-39"})], tmp_path,
                                "demo", columns=1)
    assert drawn[1].axes[0].get_title().splitlines() == ["UTKFace test image", "age: 20-29 (true 30-39)",
                                                         "gender: male"]
    plt.close("all")


def test_tsne_runs_on_the_first_50_principal_components_and_on_few_samples(monkeypatch):
    """§4.8: t-SNE of the first 50 principal components; the notebooks map 20 samples, fewer than t-SNE's
    default perplexity of 30 allows."""
    x, _ = clusters(60, dim=80)
    seen = []
    real = figures.TSNE

    class Recording(real):
        def fit_transform(self, features):
            seen.append((features, self.perplexity))
            return super().fit_transform(features)

    monkeypatch.setattr(figures, "TSNE", Recording)
    figures.project(x, "tsne")
    np.testing.assert_allclose(np.abs(seen[0][0]), np.abs(PCA(50, random_state=0).fit_transform(x)), atol=1e-6)
    assert figures.project(x[:20], "tsne").shape == (20, 2) and seen[1][1] < 20 / 3
