"""A held-out set the coordinator evaluates each new model on (validation studies).

Attached per study with ``StudyService.attach_holdout`` (``fedward coordinator
serve --holdout STUDY=FILE.npz``); kept in memory only: it is the operator's
validation data, not a record of the study, and a restarted coordinator is
given it again. Its accuracy is what the stop rule's ``target_accuracy`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Holdout:
    x: np.ndarray  # float32 [n, channels, window]
    y: np.ndarray  # int64 [n]
    model: Any = field(repr=False)  # the study's model, built once, parameters loaded per version
    evaluated_version: int = -1
