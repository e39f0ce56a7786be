"""The thesis's figures, regenerated: figures/<profile>/figure_<id>.png, e.g. figure_2_8.png (matplotlib Agg
+ seaborn).

* Figs 2.8–2.13 (§2.7): class distribution of each dataset, per task and split;
* Fig 3.1 (§3.1): Listing 3.1's training augmentation applied to crops;
* Fig 4.1 (§4.4.1): the uncertainty-weighting variances σ² = exp(s_k) learned per epoch;
* Figs 4.2–4.3 (§4.7): confusion matrices with accuracy and balanced accuracy;
* Figs 4.4–4.6 (§4.8): PCA and t-SNE (on the first 50 principal components, as §4.8) of features;
* Fig 5.1 (§5.1): test images with the model's predictions.

Every figure of the demo profile has "demo profile — not the thesis's data or model" drawn on it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from replication import metrics  # noqa: E402
from replication.data import class_counts  # noqa: E402
from replication.files import atomic_write  # noqa: E402
from replication.labels import MISSING, TASKS  # noqa: E402
from replication.profiles import label  # noqa: E402
from replication.thesis import DATASET_NAMES  # noqa: E402

# Figs 2.8–2.13: figure id -> dataset (the thesis draws VGGFace2's ages on a log scale)
DATASET_FIGURES = {"2.8": "fairface", "2.9": "utkface", "2.10": "lagenda", "2.11": "rafdb",
                   "2.12": "vggface2", "2.13": "celebahq"}
LOG_SCALE_AGE = {"vggface2"}
AGE_BY_GENDER = {"lagenda"}  # §2.7.3: "gender balance within each [age] group, as illustrated in Figure 2.10"
PROJECTIONS = {"pca": "PCA", "tsne": "t-SNE"}  # §4.8's 2-D maps, as the thesis names them


def draw_label(fig: plt.Figure, profile: str) -> None:
    """The demo profile's warning, drawn across the bottom of the figure."""
    if label(profile):
        fig.text(0.5, -0.01, label(profile), ha="center", va="top", fontsize=10, color="crimson",
                 weight="bold", bbox={"facecolor": "white", "edgecolor": "crimson", "alpha": 0.9})


def save(fig: plt.Figure, out_dir: str | Path, fig_id: str, profile: str) -> Path:
    """Draw the demo label (demo profile) and write <out_dir>/figure_<id>.png atomically."""
    draw_label(fig, profile)
    path = Path(out_dir) / f"figure_{fig_id.replace('.', '_')}.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def _denormalise(x: torch.Tensor) -> np.ndarray:
    """A (3, H, W) tensor normalised with mean = std = 0.5 back to an (H, W, 3) image in [0, 1]."""
    return (x.permute(1, 2, 0).numpy() * 0.5 + 0.5).clip(0, 1)


# --- §2.7 -----------------------------------------------------------------------------------

def dataset_distribution(manifest: pd.DataFrame, fig_id: str, out_dir, profile: str,
                         report: Mapping | None = None) -> Path:
    """Figs 2.8–2.13: one bar chart per labelled task of the dataset, bars coloured by split; for LAGENDA
    (AGE_BY_GENDER) also the age groups split by gender, which §2.7.3 says Fig. 2.10 illustrates.

    ``report`` (prepare's report.json) adds the records Table 3.1 does not use as one more split, e.g.
    CelebA-HQ's official val folder: probably the 'Test Set' of the thesis's Fig. 2.13b."""
    dataset = DATASET_FIGURES[fig_id]
    rows = manifest[manifest["dataset"] == dataset]
    counts = class_counts(rows)
    if counts.empty:
        raise ValueError(f"the manifest has no labelled rows of {dataset!r} (Fig. {fig_id})")
    unused = pd.DataFrame((report or {}).get("datasets", {}).get(dataset, {}).get("not_used_class_counts", []))
    if not unused.empty:
        counts = pd.concat([counts, unused.assign(split="released " + unused["split"] + " (unused)")])
    splits = [s for s in ("train", "val", "test") if s in set(counts["split"])]
    splits += sorted(set(counts["split"]) - set(splits))
    tasks = [t for t in TASKS if (counts["task"] == t).any()]
    by_gender = dataset in AGE_BY_GENDER and {"age", "gender"} <= set(tasks)
    panels = len(tasks) + by_gender
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        data = counts[counts["task"] == task]
        sns.barplot(data=data, x="class_name", y="count", hue="split", ax=ax,
                    order=list(TASKS[task]), hue_order=[s for s in splits if s in set(data["split"])])
        ax.set(title=f"{DATASET_NAMES[dataset]}: {task}", xlabel="", ylabel="images")
        # a class without images draws no bar (on a log axis it cannot): a "0" tells it from a class left out
        totals = data.groupby("class_name")["count"].sum()
        for x, name in enumerate(TASKS[task]):
            if totals.get(name, 0) == 0:
                ax.annotate("0", (x, 0), xycoords=ax.get_xaxis_transform(), xytext=(0, 3),
                            textcoords="offset points", ha="center", va="bottom")
        if task == "age" and dataset in LOG_SCALE_AGE:
            ax.set_yscale("log")
            # plain numbers, and the ticks between the decades labelled too, so a bar of 70 reads as about 70
            ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False,
                                                                        minor_thresholds=(2, 0.5)))
        ax.tick_params(axis="x", rotation=45)
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1), title="split")  # beside the bars, not on them
    if by_gender:
        both = rows[(rows["age"] != MISSING) & (rows["gender"] != MISSING)]
        data = pd.DataFrame({"age": [TASKS["age"][i] for i in both["age"]],
                             "gender": [TASKS["gender"][i] for i in both["gender"]]})
        ax = axes[0][-1]
        sns.countplot(data=data, x="age", hue="gender", order=list(TASKS["age"]), hue_order=list(TASKS["gender"]),
                      ax=ax)
        ax.set(title=f"{DATASET_NAMES[dataset]}: age by gender (all splits)", xlabel="", ylabel="images")
        ax.tick_params(axis="x", rotation=45)
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1), title="gender")
    fig.suptitle(f"Fig. {fig_id} — {DATASET_NAMES[dataset]} class distribution")
    fig.tight_layout()
    return save(fig, out_dir, fig_id, profile)


# --- §3.1 -----------------------------------------------------------------------------------

def augmentation_examples(paths: Sequence[str | Path], transform, out_dir, profile: str,
                          n_augmented: int = 5, seed: int = 0) -> Path:
    """Fig 3.1: each crop (first column) and ``n_augmented`` draws of Listing 3.1's transform."""
    torch.manual_seed(seed)
    fig, axes = plt.subplots(len(paths), n_augmented + 1,
                             figsize=(1.8 * (n_augmented + 1), 1.9 * len(paths)), squeeze=False)
    for row, path in zip(axes, paths):
        image = Image.open(path).convert("RGB")
        row[0].imshow(image)
        row[0].set_title("crop", fontsize=8)
        for ax in row[1:]:
            ax.imshow(_denormalise(transform(image)))
        for ax in row:
            ax.axis("off")
    fig.suptitle("Fig. 3.1 — training augmentation (Listing 3.1)")
    fig.tight_layout()
    return save(fig, out_dir, "3.1", profile)


# --- §4.4.1 ---------------------------------------------------------------------------------

def learned_variances(histories: Mapping[str, Sequence[Mapping[str, float]]], out_dir,
                      profile: str) -> Path:
    """Fig 4.1: σ_k² = exp(s_k) per epoch for each run (``histories[name]`` = per-epoch {task: s_k})."""
    fig, axes = plt.subplots(1, len(histories), figsize=(5 * len(histories), 3.6), squeeze=False)
    for ax, (name, epochs) in zip(axes[0], histories.items()):
        for task in TASKS:
            ax.plot(range(1, len(epochs) + 1), [np.exp(e[task]) for e in epochs], marker="o",
                    label=task)
        ax.set(title=name, xlabel="epoch", ylabel="σ² = exp(s)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend()
    fig.suptitle("Fig. 4.1 — learned task variances (uncertainty weighting)")
    fig.tight_layout()
    return save(fig, out_dir, "4.1", profile)


# --- §4.7 -----------------------------------------------------------------------------------

def confusion_panel(predictions: pd.DataFrame, run_scores: Mapping[str, float], name: str, dataset: str,
                    task: str) -> tuple[str, np.ndarray, Sequence[str]]:
    """One panel of Figs 4.2/4.3 for ``confusion_matrices``: the run's ``task`` predictions on the test set
    ``dataset`` as a confusion matrix, titled with its balanced accuracy and accuracy in % (``run_scores``:
    the run's ``tables.scores``, so the title repeats the tables' values)."""
    rows = predictions[(predictions["dataset"] == dataset) & (predictions["task"] == task)]
    counts = metrics.confusion_matrix(rows["label"], rows["pred"], len(TASKS[task]))
    title = (f"{name} on {DATASET_NAMES[dataset]}\nbalanced acc. {run_scores[f'{dataset}/{task}/balanced']:.2f} "
             f"(acc. {run_scores[f'{dataset}/{task}']:.2f})")
    return title, counts, TASKS[task]


def confusion_matrices(panels: Sequence[tuple[str, np.ndarray, Sequence[str]]], fig_id: str, title: str,
                       out_dir, profile: str, columns: int = 2) -> Path:
    """Figs 4.2/4.3: confusion matrices (true class per row), ``columns`` panels per row as the thesis lays
    them out. ``panels``: (title, counts (C, C), class names); titles carry the (balanced) accuracies.

    Each cell prints its count and is shaded by its share of the true class (row-normalised: the
    diagonal is the class's recall, whose mean is the balanced accuracy of §4.7), so classes of very
    different sizes read on one scale; the colour bar says so."""
    rows = -(-len(panels) // columns)
    columns = min(columns, len(panels))
    fig, axes = plt.subplots(rows, columns, figsize=(5.6 * columns, 5 * rows), squeeze=False,
                             layout="constrained")
    for ax, (panel_title, counts, names) in zip(axes.flat, panels):
        totals = counts.sum(axis=1, keepdims=True)
        recall = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
        sns.heatmap(recall, annot=counts, fmt="d", cmap="Blues", vmin=0, vmax=1, cbar=False,
                    xticklabels=names, yticklabels=names, ax=ax, annot_kws={"fontsize": 7})
        ax.set(title=panel_title, xlabel="predicted", ylabel="true")
        ax.tick_params(axis="y", rotation=0)  # "10-19" under "20-29", not run together
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.colorbar(axes.flat[0].collections[0], ax=axes, shrink=0.8,
                 label="share of the true class (diagonal: recall)")
    fig.suptitle(f"Fig. {fig_id} — {title}")
    return save(fig, out_dir, fig_id, profile)


# --- §4.8 -----------------------------------------------------------------------------------

def sample_test_images(prepared: str | Path, manifest: pd.DataFrame, dataset: str, n: int,
                       image_size: int, seed: int = 0) -> tuple[pd.DataFrame, torch.Tensor]:
    """Up to ``n`` test rows of ``dataset`` (a fixed random sample) and their eval-transformed images."""
    from replication.transforms import eval_transform

    rows = manifest[(manifest["dataset"] == dataset) & (manifest["split"] == "test")]
    rows = rows.sample(n=min(n, len(rows)), random_state=seed).reset_index(drop=True)
    transform = eval_transform(image_size)
    images = torch.stack([transform(Image.open(Path(prepared) / p)) for p in rows["path"]])
    return rows, images


@torch.no_grad()
def embeddings(encode, images: torch.Tensor, device: str = "cpu", batch_size: int = 128):
    """``encode`` applied batch by batch on ``device``: returning a tensor -> (N, D) array,
    a dict of tensors -> dict of arrays."""
    parts = [encode(images[i:i + batch_size].to(device)) for i in range(0, len(images), batch_size)]
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]).float().cpu().numpy() for k in parts[0]}
    return torch.cat(parts).float().cpu().numpy()


def project(features: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """2-D map of ``features``: 'pca', or 'tsne' applied to the first 50 principal components."""
    features = np.asarray(features, dtype=np.float64)
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    if method not in PROJECTIONS:
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    reduced = PCA(n_components=min(50, *features.shape), random_state=seed).fit_transform(features)
    perplexity = min(30.0, (len(features) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed
                ).fit_transform(reduced)


def feature_maps(panels: Sequence[tuple[str, np.ndarray, np.ndarray, Sequence[str], str]],
                 fig_id: str, title: str, out_dir, profile: str, columns: int = 2) -> Path:
    """Figs 4.4–4.6: scatter of each panel (title, features, labels, class names, 'pca'|'tsne').

    ``title`` names what the thesis's caption names (dataset, model), which the panels do not.
    Samples without the task's label (MISSING) have no class to colour and are left out. A class
    has one colour in every panel, and each legend stands beside its panel, clear of the points."""
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.9 * columns, 4.2 * rows), squeeze=False)
    for ax, (panel_title, features, labels, names, method) in zip(axes.flat, panels):
        labelled = np.asarray(labels) != MISSING
        features, labels = np.asarray(features)[labelled], np.asarray(labels)[labelled]
        xy = project(features, method)
        colours = dict(zip(names, sns.color_palette("tab10", len(names))))
        sns.scatterplot(x=xy[:, 0], y=xy[:, 1], hue=[names[i] for i in labels], ax=ax, s=14,
                        hue_order=[n for i, n in enumerate(names) if i in set(labels)],
                        palette=colours, linewidth=0)
        ax.set(title=panel_title, xticks=[], yticks=[])
        ax.legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"Fig. {fig_id} — {title}")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # 0.3 in. for the heading, off the panels
    return save(fig, out_dir, fig_id, profile)


# --- §5.1 -----------------------------------------------------------------------------------

@torch.no_grad()
def example_predictions(model, prepared: str | Path, manifest: pd.DataFrame, datasets: Sequence[str], n: int,
                        image_size: int, device: str = "cpu") -> list[tuple[Path, str, dict, dict]]:
    """Fig. 5.1's examples: ``n`` test images of each dataset (sample_test_images), each as (path, dataset, the
    multi-task ``model``'s class per task, the true class of each task it is labelled for)."""
    examples = []
    for dataset in datasets:
        rows, images = sample_test_images(prepared, manifest, dataset, n, image_size)
        predicted = {t: logits.argmax(-1).tolist() for t, logits in model(images.to(device)).items()}
        for i, row in rows.iterrows():
            examples.append((Path(prepared) / row["path"], dataset, {t: TASKS[t][predicted[t][i]] for t in predicted},
                             {t: TASKS[t][row[t]] for t in predicted if row[t] != MISSING}))
    return examples


def prediction_examples(examples: Sequence[tuple[str | Path, str, Mapping[str, str], Mapping[str, str]]],
                        out_dir, profile: str, columns: int = 4) -> Path:
    """Fig 5.1: each (image path, dataset, predicted class per task, true class per task where labelled)."""
    rows = -(-len(examples) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 4.1 * rows), squeeze=False)
    for ax, (path, dataset, predicted, truth) in zip(axes.flat, examples):
        ax.imshow(Image.open(path).convert("RGB"))
        lines = [f"{DATASET_NAMES[dataset]} test image"] + [
            f"{task}: {predicted[task]}" + (f" (true {truth[task]})" if task in truth else "")
            for task in TASKS if task in predicted]
        ax.set_title("\n".join(lines), fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Fig. 5.1 — MTLoRA predictions")
    fig.tight_layout()
    return save(fig, out_dir, "5.1", profile)
