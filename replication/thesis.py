"""Every number the thesis publishes in its tables, stored once, as data.

Nothing here is computed: these are the thesis's own values, copied from the text
(Tables 3.2, 4.1–4.16, the parameter figures of §3.3–3.6.1, the balanced accuracies in the
captions of Fig. 4.3 (Fig. 4.2's are empty cells, as it prints none) and the figures §5.1 sums
up). `tests/test_thesis.py` re-reads each of them from the thesis text.
`replication.tables` puts them beside the replicated values.

Row keys are method ids (``zs``, ``lp``, ``ap``, ``ft4``, ``lora``, ``dora``, ``mtlora``) or
class/component names; column keys are ``<dataset>/<task>`` or metric names, so that a table
builder can look up the replicated value of each cell. ``None`` marks a cell the thesis leaves
empty; Table 4.13 keeps its markers as printed ('-' not designed for the task, '...' unavailable).

The thesis is not always self-consistent; the discrepancies are stored as notes on the cells
they concern (``Table.cell_notes``; the values are never "fixed"), e.g. Table 4.2's "Global" 69.61
is not the mean of its own three averages (70.20, the value Table 4.11 gives), and Table 4.14's FT4
average 80.56 differs from Table 4.12's 82.94. `tests/test_thesis.py` recomputes every printed
average and repeated cell from the cells it comes from and checks that exactly the ones that
disagree carry a note.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Table:
    """One published table: ``rows[row_key]`` holds one value per key of ``columns``."""

    id: str                       # "4.5", "3.2/age", "params", "fig4.3"
    title: str
    section: str                  # where it is in the thesis, e.g. "§4.3.3"
    columns: tuple[str, ...]
    rows: dict[str, tuple]
    literature: dict[str, str] = field(default_factory=dict)  # row key -> citation (not ours)
    notes: tuple[str, ...] = ()   # remarks on the whole table
    cell_notes: dict[tuple[str, str], str] = field(default_factory=dict)  # (row, column) -> remark

    def value(self, row: str, column: str):
        return self.rows[row][self.columns.index(column)]


# Display names of the method ids (the thesis writes FT₄ for partial fine-tuning of 4 blocks).
METHOD_NAMES = {"zs": "ZS", "lp": "LP", "ap": "AP", "ft4": "FT4", "lora": "LoRA", "dora": "DoRA",
                "mtlora": "MTLoRA", "dora_merged": "DoRA (merged)"}

# --- Chapter 2 -------------------------------------------------------------------------------

# §2.7 gives each dataset's size in its text (RAF-DB's it does not); rows are replication.labels.DATASETS ids.
SECTION_2_7 = Table(
    "sizes", "Dataset sizes given in the text", "§2.7", ("images",),
    {"fairface": (108501,), "utkface": (24103,), "lagenda": (67159,), "vggface2": (3310000,),
     "celebahq": (30000,)},
    cell_notes={("fairface", "images"): "the FairFace paper's total; its released train and val label files "
                                        "list 86,744 + 10,954 = 97,698 images (no test set is released)",
                ("vggface2", "images"): "'3.31 million images of 9131 subjects': the whole dataset, of which "
                                        "the thesis tests on the test part only (Fig. 2.12)"})

# --- Chapter 3 -------------------------------------------------------------------------------

# Table 3.1 is checkmarks, stored as printed ("✓" / "-"); rows are replication.labels.DATASETS ids.
TABLE_3_1 = Table(
    "3.1", "Dataset composition and usage", "§3.1",
    ("train", "val", "test", "tasks"),
    {"lagenda": ("✓", "✓", "-", "Gender, Age"), "fairface": ("✓", "✓", "✓", "Gender, Age"),
     "rafdb": ("✓", "✓", "✓", "Emotion"), "celebahq": ("✓", "✓", "-", "Gender"),
     "utkface": ("-", "-", "✓", "Gender, Age"), "vggface2": ("-", "-", "✓", "Gender, Age")},
    cell_notes={("rafdb", "tasks"): "§2.7.4: RAF-DB is 'also labeled for gender', and Table 3.2a counts those "
                                    "labels in training."})
DATASET_NAMES = {"lagenda": "LAGENDA", "fairface": "FairFace", "rafdb": "RAF-DB",
                 "celebahq": "CelebA-HQ", "utkface": "UTKFace", "vggface2": "VGGFace2"}

TABLE_3_2_AGE = Table(
    "3.2/age", "Distribution of the training set: age group", "§3.2",
    ("samples", "percent", "weighted_percent"),
    {"0-2": (2935, 2.15, 6.63), "3-9": (15699, 11.48, 11.31), "10-19": (16032, 11.72, 11.36),
     "20-29": (29784, 21.78, 16.37), "30-39": (24462, 17.89, 14.56),
     "40-49": (17976, 13.15, 12.14), "50-59": (14413, 10.54, 10.89),
     "60-69": (10618, 7.76, 9.44), "70+": (4828, 3.53, 7.31)},
    notes=("The thesis obtained 'Weighted %' by a 10-iteration Monte Carlo simulation; the "
           "replication computes the exact expectation (replication.sampling).",))
TABLE_3_2_GENDER = Table(
    "3.2/gender", "Distribution of the training set: gender", "§3.2",
    ("samples", "percent", "weighted_percent"),
    {"male": (82147, 48.79, 49.26), "female": (86215, 51.21, 50.74)})
TABLE_3_2_EMOTION = Table(
    "3.2/emotion", "Distribution of the training set: emotion", "§3.2",
    ("samples", "percent", "weighted_percent"),
    {"Surprise": (912, 9.90, 12.14), "Fear": (218, 2.37, 8.44), "Disgust": (544, 5.90, 9.99),
     "Happy": (3701, 40.16, 26.85), "Sad": (1301, 14.12, 14.20), "Angry": (556, 6.03, 10.25),
     "Neutral": (1983, 21.52, 18.13)})
TABLE_3_2_TASKS = Table(
    "3.2a", "Task distribution of the training set", "§3.2 Table 3.2(a)",
    ("samples", "percent"),
    {"gender": (168362, 100.00), "age": (136747, 81.22), "emotion": (9215, 5.47),
     "total": (168362, None)})

# §3.3–3.6.1: "Trainable parameters / Total parameters / Percentage of trainable" of each method. The totals are
# of the multi-task model (three heads, the frozen backbone and any adapter included); the trainable counts are
# the single-task age model's for LP, AP and FT4 and the multi-task model's for DoRA and MTLoRA (accounting.py).
PARAMS = Table(
    "params", "Trainable and total parameters of each method", "§3.3–3.6.1",
    ("trainable", "total", "percent"),
    {"lp": (1058825, 320324629, 0.33), "ap": (13656073, 320324629, 4.29),
     "ft4": (64040969, 320324629, 20.13), "dora": (29352981, 346504213, 8.47),
     "mtlora": (36730901, 354093077, 10.38)},
    cell_notes={
        ("ap", "percent"): "4.29% is 13,656,073 / 318,212,106 (Table 4.3's 'visual encoder' "
                           "figure), not / the stated total 320,324,629 (4.26%).",
        ("ft4", "percent"): "20.13% is 64,040,969 / 318,212,106 (Table 4.3's 'visual encoder' "
                            "figure), not / the stated total 320,324,629 (19.99%).",
        ("mtlora", "percent"): "36,730,901 / 354,093,077 is 10.373%, which rounds to 10.37, not "
                               "the printed 10.38.",
        # 8.47 is right (29,352,981 / 346,504,213 = 8.471%); the text contradicts it, not the counts.
        ("dora", "percent"): "§3.6 also writes 8.41% for DoRA in the text that follows its 8.47% figure."})

# --- §4.2 zero-shot baseline -----------------------------------------------------------------

TABLE_4_1 = Table(
    "4.1", "Baseline zero-shot accuracy per test set", "§4.2",
    ("utkface/age", "utkface/gender", "fairface/age", "fairface/gender", "rafdb/emotion",
     "vggface2/age", "vggface2/gender"),
    {"zs": (48.62, 96.63, 46.11, 97.60, 66.57, 42.01, 95.78)},
    cell_notes={("zs", "utkface/age"): "§4.2's text gives the age accuracies as going 'from 42.01% to "
                                       "48.72%'; the table's highest is this 48.62%."})
TABLE_4_2 = Table(
    "4.2", "Mean baseline accuracy", "§4.2",
    ("age", "gender", "emotion", "global"),
    {"zs": (47.36, 96.67, 66.57, 69.61)},
    notes=("Age average excludes VGGFace2 (§4 opening).",),
    cell_notes={("zs", "global"): "69.61 keeps VGGFace2 in the age mean ((45.58 + 96.67 + 66.57) "
                                  "/ 3); the mean of the three averages is 70.20, as in Table "
                                  "4.11."})
TABLE_4_3 = Table(
    "4.3", "Parameters used by the zero-shot baseline during inference", "§4.2",
    ("value",),
    {"text_encoder": (353986561,), "visual_encoder": (318212106,), "total": (671137793,),
     "gflops": (699.76,)},
    notes=("The vision tower alone has 317,151,232 parameters; replication.accounting's note "
           "says what the thesis's 318,212,106 equals.",))

# --- §4.3 single-task ------------------------------------------------------------------------

TABLE_4_4 = Table(
    "4.4", "Single-task accuracy (%) on the emotion task", "§4.3",
    ("rafdb/emotion",),
    {"zs": (66.57,), "lp": (84.32,), "ap": (84.91,), "ft4": (88.78,), "dora": (90.83,)})
TABLE_4_5 = Table(
    "4.5", "Single-task accuracy (%) on the age task", "§4.3",
    ("utkface/age", "fairface/age", "vggface2/age", "average"),
    {"zs": (48.62, 46.11, 42.01, 47.36), "lp": (61.56, 61.69, 57.75, 61.28),
     "ap": (61.41, 61.75, 57.80, 61.47), "ft4": (63.11, 62.50, 59.78, 62.80),
     "dora": (63.80, 63.64, 61.24, 63.72)},
    notes=("Average excludes VGGFace2.",),
    cell_notes={
        ("lp", "average"): "61.28 is not the mean of this row's UTKFace and FairFace (61.56 + "
                           "61.69) / 2 = 61.625; it is the mean with Table 4.9's LP FairFace "
                           "61.00: (61.56 + 61.00) / 2 = 61.28.",
        ("ap", "average"): "61.47 is not the mean of this row's UTKFace and FairFace (61.41 + "
                           "61.75) / 2 = 61.58."})
TABLE_4_6 = Table(
    "4.6", "Single-task accuracy (%) on the gender task", "§4.3",
    ("utkface/gender", "fairface/gender", "vggface2/gender", "average"),
    {"zs": (96.63, 97.60, 95.78, 96.67), "lp": (97.00, 97.70, 97.92, 97.54),
     "ap": (96.92, 97.74, 97.98, 97.55), "ft4": (97.02, 97.71, 97.99, 97.57),
     "dora": (96.97, 97.72, 98.01, 97.56)})

# --- §4.4 multi-task -------------------------------------------------------------------------

TABLE_4_7 = Table(
    "4.7", "EMA vs uncertainty weighting (multi-task accuracy, %)", "§4.4.1",
    ("emotion", "age", "gender", "overall"),
    {"ft4/ema": (86.47, 62.96, 97.44, 82.29), "ft4/uw": (88.43, 63.00, 97.41, 82.94),
     "mtlora/ema": (88.98, 63.29, 97.51, 83.26), "mtlora/uw": (90.06, 64.03, 97.51, 83.86)},
    notes=("The UW rows are the multi-task models of Tables 4.8-4.12 (§4.4.1).",
           "The thesis captions this table 'Model Accuracy (%) on the Emotion Task', as Tables 4.4 and 4.8; its "
           "columns are the three tasks and the overall average.",),
    cell_notes={("ft4/uw", "emotion"): "88.43, as in Table 4.12; Table 4.8 gives 88.42."})
TABLE_4_8 = Table(
    "4.8", "Multi-task accuracy (%) on the emotion task", "§4.4",
    ("rafdb/emotion",),
    {"lp": (84.82,), "ap": (85.12,), "ft4": (88.42,), "dora": (91.21,), "mtlora": (90.06,)},
    notes=("LP is the three single-task probes loaded on one backbone (§4.4).",),
    cell_notes={("lp", "rafdb/emotion"): "§4.4 says the LP rows are the single-task probes, but "
                                         "Table 4.4 gives LP 84.32 (and Table 4.12 84.91)."})
TABLE_4_9 = Table(
    "4.9", "Multi-task accuracy (%) on the age task", "§4.4",
    ("utkface/age", "fairface/age", "vggface2/age"),
    {"lp": (61.56, 61.00, 57.75), "ap": (63.04, 61.89, 59.94), "ft4": (62.54, 63.45, 61.68),
     "dora": (63.34, 63.73, 61.69), "mtlora": (63.96, 64.11, 62.74)},
    cell_notes={("lp", "fairface/age"): "§4.4 says the LP rows are the single-task probes, but "
                                        "Table 4.5 gives LP FairFace 61.69; Table 4.5's LP "
                                        "average 61.28 is computed with this 61.00."})
TABLE_4_10 = Table(
    "4.10", "Multi-task accuracy (%) on the gender task", "§4.4",
    ("utkface/gender", "fairface/gender", "vggface2/gender"),
    {"lp": (97.00, 97.70, 97.92), "ap": (96.79, 97.63, 97.79), "ft4": (96.68, 97.71, 97.81),
     "dora": (96.90, 97.57, 98.00), "mtlora": (96.93, 97.62, 98.00)})
TABLE_4_11 = Table(
    "4.11", "Average performance in single-task (%)", "§4.4",
    ("emotion", "age", "gender", "overall"),
    {"zs": (66.57, 47.36, 96.67, 70.20), "lp": (84.32, 61.28, 97.54, 81.05),
     "ap": (84.91, 61.47, 97.55, 81.31), "ft4": (88.78, 62.80, 97.57, 83.05),
     "dora": (90.83, 63.72, 97.56, 84.04)},
    cell_notes={
        ("lp", "age"): "Table 4.5's LP average 61.28, not the mean of Table 4.5's LP UTKFace and "
                       "FairFace (61.56 + 61.69) / 2 = 61.625 (see Table 4.5).",
        ("ap", "age"): "Table 4.5's AP average 61.47, not the mean of Table 4.5's AP UTKFace and "
                       "FairFace (61.41 + 61.75) / 2 = 61.58."})
TABLE_4_12 = Table(
    "4.12", "Average performance in multi-task (%)", "§4.4",
    ("emotion", "age", "gender", "overall"),
    {"zs": (66.57, 47.36, 96.67, 69.61), "lp": (84.91, 61.28, 97.54, 78.76),
     "ap": (85.12, 62.46, 97.40, 81.66), "ft4": (88.43, 63.00, 97.41, 82.94),
     "dora": (91.21, 63.53, 97.49, 84.07), "mtlora": (90.06, 64.03, 97.51, 83.86)},
    cell_notes={
        ("zs", "overall"): "69.61 keeps VGGFace2 in the age mean ((45.58 + 96.67 + 66.57) / 3); "
                           "the mean of this row is 70.20, as in Table 4.11.",
        ("lp", "emotion"): "Table 4.8 gives LP 84.82; 84.91 is the single-task AP value of "
                           "Table 4.4.",
        ("lp", "overall"): "78.76 is not the mean of this row (81.24).",
        ("ft4", "emotion"): "Table 4.8 gives FT4 88.42."})

# --- §4.5 state of the art, §4.6 efficiency --------------------------------------------------

# Table 4.13's footnote: CLIP's FairFace accuracies for the 'White' and 'Other' groups, whose means are its row
CLIP_GROUP_ACCURACIES = {"age": (63.8, 63.1), "gender": (96.5, 97.7)}
TABLE_4_13 = Table(
    "4.13", "Comparison with the state of the art (accuracy, %)", "§4.5",
    ("fairface/age", "utkface/age", "fairface/gender", "utkface/gender", "rafdb/emotion"),
    {"MiVOLO-224": (61.07, "3.7 MAE", 95.73, 98.84, "-"),
     # 97.5 and 97.1 kept as printed (one decimal), so the table does not show them as 97.50 and 97.10
     "MiVOLO-384": (62.28, "...", "97.5", "...", "-"),
     "CLIP ViT-L/14 336px": (63.45, "...", "97.1", "...", "-"),
     "ResEmoteNet": ("-", "-", "-", "-", 94.76),
     "APViT": ("-", "-", "-", "-", 92.21),
     "POSTER++": ("-", "-", "-", "-", 91.98),
     "mtlora": (64.11, 63.96, 97.62, 96.93, 90.06),
     "dora": (63.73, 63.34, 97.57, 96.90, 91.21)},
    literature={
        "MiVOLO-224": "[21] Kuprashevich & Tolstykh, MiVOLO: Multi-input Transformer for Age and "
                      "Gender Estimation, arXiv:2307.04616 (2023)",
        "MiVOLO-384": "[22] Kuprashevich, Alekseenko & Tolstykh, Beyond Specialization: Assessing "
                      "the Capabilities of MLLMs in Age and Gender Estimation, arXiv:2403.02302 "
                      "(2024)",
        "CLIP ViT-L/14 336px": "[14] Radford et al., Learning Transferable Visual Models From "
                               "Natural Language Supervision, arXiv:2103.00020 (2021); mean of "
                               "the 'White' and 'Other' groups (age {} and {}, gender {} and {})".format(
                                   *CLIP_GROUP_ACCURACIES["age"], *CLIP_GROUP_ACCURACIES["gender"]),
        "ResEmoteNet": "[18] Roy et al., ResEmoteNet, IEEE Signal Processing Letters 32 (2025) "
                       "491-495, doi:10.1109/LSP.2024.3521321",
        "APViT": "[19] Xue et al., Vision Transformer With Attentive Pooling for Robust Facial "
                 "Expression Recognition, IEEE Trans. Affective Computing 14(4) (2023) "
                 "3244-3256, doi:10.1109/TAFFC.2022.3226473",
        "POSTER++": "[20] Mao et al., POSTER++: A simpler and stronger facial expression "
                    "recognition network, Pattern Recognition 157 (2025) 110951",
    },
    notes=("The thesis's own rows are labelled 'MTLRA' and 'LoRA'; their values are the "
           "multi-task MTLoRA and DoRA rows of Tables 4.8-4.10.",
           "As in the thesis, '-' marks a method not designed for the task and '...' a result "
           "that was unavailable."))

TABLE_4_14 = Table(
    "4.14", "Model size, computational cost and average accuracy", "§4.6",
    ("params_m", "gflops", "avg_acc"),
    {"zs": (671, 699.76, 69.61), "ft4": (320, 352.18, 80.56),
     "dora_merged": (320, 352.18, 84.07), "mtlora": (329, 368.01, 83.89)},
    notes=("GFLOPs of one 336x336 image; the zero-shot figure includes the 18 text prompts.",),
    cell_notes={
        ("zs", "avg_acc"): "69.61 keeps VGGFace2 in the age mean ((45.58 + 96.67 + 66.57) / 3); "
                           "the replicated average leaves it out (§4 opening), as Table 4.11's "
                           "70.20 does.",
        ("ft4", "avg_acc"): "80.56 differs from FT4's overall average 82.94 in Table 4.12.",
        ("mtlora", "avg_acc"): "83.89 differs from MTLoRA's overall average 83.86 in Table "
                               "4.12 (83.88 in the §4.4.5 text)."})

# --- §4.7 balanced accuracy ------------------------------------------------------------------

# §4.7 reports balanced accuracy "in the age and emotion tasks", but Fig. 4.2 (RAF-DB) prints no
# number; its text gives only differences to literature models, kept as a note.
FIG_4_2 = Table(
    "fig4.2", "Emotion balanced accuracy of its RAF-DB confusion matrices", "§4.7.1",
    ("balanced_accuracy",),
    {"mtlora/rafdb": (None,), "dora/rafdb": (None,)},
    notes=("The thesis prints no value. §4.7.1 puts MTLoRA 0.2 points above POSTER++ and DoRA "
           "0.07 below it (and, from APViT, MTLoRA less than 0.2 and DoRA 0.46), i.e. MTLoRA about 0.27 points above "
           "DoRA in balanced accuracy although 1.15 below it in accuracy (Table 4.8).",))

FIG_4_3 = Table(
    "fig4.3", "Age balanced accuracy and accuracy in its captions", "§4.7.2",
    ("balanced_accuracy", "accuracy"),
    {"mtlora/fairface": (62.78, 64.11), "mtlora/utkface": (61.98, 63.96),
     "dora/fairface": (64.26, 63.73), "dora/utkface": (61.91, 63.34)},
    notes=("The captions call the multi-task DoRA model 'LoRA': their accuracies (63.73, 63.34) are "
           "the DoRA row of Table 4.9.",))
TABLE_4_15 = Table(
    "4.15", "Concordance of predictions (%)", "§4.7",
    ("lp_vs_zs", "lora_vs_zs", "lp_vs_lora"),
    {"fairface/age": (56.13, 53.45, 81.89), "fairface/gender": (98.69, 98.30, 98.79),
     "rafdb/emotion": (69.29, 66.75, 85.22)},
    notes=("The thesis does not say which model 'LoRA' is; this replication reads it as the "
           "multi-task DoRA model (as Fig. 4.3's captions use the name). LP stands for the three single-task "
           "probes.",))
TABLE_4_16 = Table(
    "4.16", "LoRA vs DoRA ablation (multi-task, %)", "§4.7",
    ("age", "gender", "emotion"),
    {"lora": (63.45, 97.52, 90.44), "dora": (63.53, 97.49, 91.21)})

# --- Chapter 5 --------------------------------------------------------------------------------

# §5.1 sums chapter 4 up in its prose; each figure repeats a cell of Table 4.14 or of §3.3–3.6.1.
SECTION_5_1 = Table(
    "conclusion", "The figures the conclusion sums up", "§5.1",
    ("avg_acc", "gflops", "percent"),
    {"zs": (69.61, 699.76, None), "dora": (84.07, 352, 8.47), "ft4": (None, None, 20.13)},
    notes=("§5.1 calls DoRA with LoRA+ 'LoRA' (the §4 opening); its 84.07 % overall average and 352 GFLOPs "
           "are Table 4.14's merged-DoRA row (which §5.1 also rounds to ≈ 350 GFLOPs for every adapted "
           "model), its 8.47 % of trainable parameters against FT4's 20.13 % are §3.6's and §3.5's.",
           "§5.1 also says age 'saw a performance increase across all MTL models'; Tables 4.11 and 4.12 give "
           "DoRA 63.72 single-task and 63.53 multi-task, the 'negative transfer seen in the standard DoRA model' "
           "of §4.4.4.",),
    cell_notes={("dora", "gflops"): "352 is Table 4.14's 352.18, rounded."})

TABLES: dict[str, Table] = {t.id: t for t in (
    SECTION_2_7, TABLE_3_1, TABLE_3_2_AGE, TABLE_3_2_GENDER, TABLE_3_2_EMOTION, TABLE_3_2_TASKS, PARAMS,
    TABLE_4_1, TABLE_4_2, TABLE_4_3, TABLE_4_4, TABLE_4_5, TABLE_4_6, TABLE_4_7, TABLE_4_8,
    TABLE_4_9, TABLE_4_10, TABLE_4_11, TABLE_4_12, TABLE_4_13, TABLE_4_14, FIG_4_2, FIG_4_3,
    TABLE_4_15, TABLE_4_16, SECTION_5_1)}
