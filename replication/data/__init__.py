"""Datasets of thesis §2.7 -> face crops + one manifest (the layout the engine reads).

``readers`` parses the six datasets in their native layouts, ``compose`` applies Table 3.1's
splits, ``faces`` crops faces (§2.7 SSD / boxes / none), ``prepare`` is the ``prepare``
command, ``demo`` writes procedurally drawn stand-ins in the native layouts (``demo-data``),
``stats`` counts classes per dataset and split (Figs 2.8-2.13, Table 3.2).
"""
from .compose import compose, training_totals
from .prepare import (MANIFEST_COLUMNS, ManifestError, PreparedFolderError, read_manifest, read_prepare_settings,
                      read_report, run_prepare)
from .readers import READERS, Record
from .stats import class_counts, training_distribution

__all__ = ["MANIFEST_COLUMNS", "ManifestError", "PreparedFolderError", "READERS", "Record", "class_counts", "compose",
           "read_manifest", "read_prepare_settings", "read_report", "run_prepare", "training_distribution",
           "training_totals"]
