"""The three tasks, their class vocabularies and the test sets of each (thesis §1.2, §2.7, §3.1, §4's opening).

Every other module refers to classes by the integer ids defined here:
age 0..8 in FairFace's bin order, gender 0 male / 1 female, emotion 0..6 in RAF-DB's order.
-1 (``MISSING``) marks a label a sample does not have (§3.7.1 masked labelling).
"""
from __future__ import annotations

MISSING = -1

AGE_GROUPS = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")
GENDERS = ("male", "female")
EMOTIONS = ("Surprise", "Fear", "Disgust", "Happy", "Sad", "Angry", "Neutral")

# Task name -> class names. The order of the dict is the order tasks are reported in.
TASKS = {"age": AGE_GROUPS, "gender": GENDERS, "emotion": EMOTIONS}
NUM_CLASSES = {task: len(names) for task, names in TASKS.items()}

# Dataset identifiers used in the manifest's `dataset` column.
DATASETS = ("lagenda", "fairface", "rafdb", "celebahq", "utkface", "vggface2")

# §3.1 Table 3.1: which test sets evaluate which task.
TEST_SETS = {
    "age": ("utkface", "fairface", "vggface2"),
    "gender": ("utkface", "fairface", "vggface2"),
    "emotion": ("rafdb",),
}
# §4 opening: VGGFace2 ages are automatic estimates, so the age average leaves it out.
AVERAGE_EXCLUDES = {"age": ("vggface2",)}


def age_to_group(age: int | float) -> int:
    """Bin an age in years into the 9 FairFace groups (0-2, 3-9, 10-19, ..., 60-69, 70+)."""
    if age < 0:
        raise ValueError(f"age must be non-negative, got {age}")
    if age < 3:
        return 0
    if age < 10:
        return 1
    return min(int(age) // 10 + 1, 8)
