"""Bring your own data: a study's recordings from an ``.npz`` or a CSV file.

Formats (``docs/study-file.md`` has the reference):

- ``.npz``: ``X`` (or ``x``) real numbers ``[n, channels, length]``, ``y``
  integer class labels ``[n]``, ``patient_id`` ``[n]`` (integers or strings);
  optional ``X_test``/``y_test`` (a held-out set) and ``classes`` (names).
- CSV, for tabular data: a header row; a ``y`` column, a ``patient_id``
  column, every other column a numeric feature (or the ones the study file
  names); optional ``split`` column, ``test`` marking held-out rows. A row is
  one sample of shape ``[features, 1]``.

One simulated device per patient (put a site id in ``patient_id`` for one
device per site), or, for data without patient ids, ``Partition.DIRICHLET``
over a stated number of devices. Without ``X_test``, whole patients are held
out for evaluation, so the held-out accuracy is on patients the federation
never saw. Inputs are normalised per channel with the mean and standard
deviation of the federation's training data: the pooled statistics a
federation obtains from per-device counts, sums and sums of squares (one
secure sum), never from the held-out set.

Every problem with a file is a ``DataFileError`` whose message names the file,
the key or column, what was found and how to fix it.
"""

from __future__ import annotations

import csv
import enum
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedward.errors import SimulationError

from .sensordata import StudyData

MIN_DEVICES = 2


class DataFileError(SimulationError, ValueError):
    """A data file is missing, unreadable or not in the documented shape."""


class DataFormat(enum.StrEnum):
    NPZ = "npz"
    CSV = "csv"


class Partition(enum.StrEnum):
    """How the rows become devices."""

    BY_PATIENT = "by_patient"  # one device per distinct patient_id
    DIRICHLET = "dirichlet"  # label mixes from Dirichlet(alpha) over `devices` devices


class Normalisation(enum.StrEnum):
    PER_CHANNEL = "per_channel"  # federation-wide mean and standard deviation per channel
    NONE = "none"


@dataclass(frozen=True, kw_only=True)
class FileDataConfig:
    """Everything that decides which rows each device holds (picklable: workers load it)."""

    path: Path
    format: DataFormat
    partition: Partition = Partition.BY_PATIENT
    devices: int | None = None  # Partition.DIRICHLET only
    alpha: float = 0.5
    test_patients: int | None = None  # held out when the file has no test set; None: 20%
    pretrain_patients: int = 0  # held out as a central warm-start cohort
    normalisation: Normalisation = Normalisation.PER_CHANNEL
    features: tuple[str, ...] = ()  # CSV: feature columns (empty: every other column)
    seed: int = 0

    def load(self) -> StudyData:
        return load_file_data(self).data


@dataclass(frozen=True)
class RawData:
    x: np.ndarray  # float32 [n, C, L]
    y: np.ndarray  # int64 [n]
    patient: np.ndarray | None  # [n] str, or None
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    classes: tuple[str, ...]


@dataclass(frozen=True)
class DataShape:
    """What the model is built from."""

    channels: int
    length: int
    num_classes: int
    classes: tuple[str, ...]
    devices: int
    samples: int


@dataclass(frozen=True)
class LoadedData:
    data: StudyData
    device_patients: list[str]
    pretrain_x: np.ndarray
    pretrain_y: np.ndarray
    mean: np.ndarray = field(repr=False)
    std: np.ndarray = field(repr=False)
    classes: tuple[str, ...] = ()


def data_format(path: Path) -> DataFormat:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return DataFormat.NPZ
    if suffix == ".csv":
        return DataFormat.CSV
    raise DataFileError(
        f"{path}: unknown data format {suffix or '(no suffix)'!r}; use .npz or .csv"
    )


def content_hash(path: Path) -> str:
    """A short digest of the file's bytes (in warm-start cache keys and the report)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


# -- reading ---------------------------------------------------------------------


def _features(path: Path, name: str, value: np.ndarray) -> np.ndarray:
    if value.dtype.kind not in "iuf":
        raise DataFileError(
            f"{path}: {name} must hold real numbers, got dtype {value.dtype}; "
            f"convert it with {name}.astype('float32')"
        )
    if value.ndim != 3:
        hint = f" (one channel: {name}[:, None, :])" if value.ndim == 2 else ""
        raise DataFileError(
            f"{path}: {name} must be [n, channels, length], got shape {value.shape}{hint}"
        )
    if 0 in value.shape:
        raise DataFileError(f"{path}: {name} is empty (shape {value.shape})")
    out = value.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise DataFileError(f"{path}: {name} holds NaN or infinite values; drop or impute them")
    return out


def _labels(path: Path, name: str, value: np.ndarray, n: int, x_name: str) -> np.ndarray:
    if value.ndim != 1 or len(value) != n:
        raise DataFileError(
            f"{path}: {name} must be [n] with n = len({x_name}) = {n}, got shape {value.shape}"
        )
    if value.dtype.kind == "f" and np.all(np.isfinite(value)) and np.all(value == np.round(value)):
        value = value.astype(np.int64)
    if value.dtype.kind not in "iu":
        raise DataFileError(
            f"{path}: {name} must hold integer class labels 0..C-1, got dtype {value.dtype}; "
            "map class names to integers and list the names in 'classes'"
        )
    if value.min() < 0:
        raise DataFileError(f"{path}: {name} has negative labels; use 0..C-1")
    return value.astype(np.int64)


def _read_npz(path: Path) -> RawData:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as exc:  # object arrays need pickle, which we refuse (it runs code)
        raise DataFileError(
            f"{path}: cannot read the arrays without pickle ({exc}); save plain numeric "
            "or string arrays (np.savez with numpy dtypes, not Python objects)"
        ) from None
    except (OSError, EOFError) as exc:
        raise DataFileError(f"{path}: not a readable .npz file ({exc})") from None
    x_name = "X" if "X" in arrays else "x" if "x" in arrays else None
    if x_name is None or "y" not in arrays:
        missing = [k for k, ok in (("X (or x)", x_name), ("y", "y" in arrays)) if not ok]
        raise DataFileError(
            f"{path}: missing {' and '.join(missing)}; found keys {sorted(arrays)}. "
            "Expected X [n, channels, length], y [n], patient_id [n]"
        )
    x = _features(path, x_name, arrays[x_name])
    y = _labels(path, "y", arrays["y"], len(x), x_name)
    patient = None
    if "patient_id" in arrays:
        p = arrays["patient_id"]
        if p.ndim != 1 or len(p) != len(x):
            raise DataFileError(
                f"{path}: patient_id must be [n] with n = len({x_name}) = {len(x)}, "
                f"got shape {p.shape}"
            )
        patient = p.astype(str)
    test_x = test_y = None
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise DataFileError(f"{path}: give both X_test and y_test, or neither")
    if "X_test" in arrays:
        test_x = _features(path, "X_test", arrays["X_test"])
        test_y = _labels(path, "y_test", arrays["y_test"], len(test_x), "X_test")
        if test_x.shape[1:] != x.shape[1:]:
            raise DataFileError(
                f"{path}: X_test windows are {test_x.shape[1:]}, {x_name} windows "
                f"{x.shape[1:]}; they must match"
            )
    classes: tuple[str, ...] = ()
    if "classes" in arrays:
        classes = tuple(str(c) for c in arrays["classes"].reshape(-1))
    return RawData(x, y, patient, test_x, test_y, classes)


def _read_csv(path: Path, features: tuple[str, ...]) -> RawData:
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(f"{path}: not a readable CSV file ({exc})") from None
    if len(rows) < 2:
        raise DataFileError(f"{path}: needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    for needed in ("y", "patient_id"):
        if needed not in header:
            raise DataFileError(
                f"{path}: no {needed!r} column; the header has {header}. A CSV needs "
                "columns y (class 0..C-1), patient_id, and numeric feature columns"
            )
    reserved = {"y", "patient_id", "split"}
    names = list(features) or [h for h in header if h not in reserved]
    unknown = [n for n in names if n not in header]
    if unknown:
        raise DataFileError(f"{path}: feature columns {unknown} are not in the header {header}")
    if not names:
        raise DataFileError(f"{path}: no feature columns besides y and patient_id")
    col = {h: i for i, h in enumerate(header)}
    values = np.empty((len(rows) - 1, len(names)), dtype=np.float64)
    labels = np.empty(len(rows) - 1, dtype=np.int64)
    patients, test = [], np.zeros(len(rows) - 1, dtype=bool)
    for r, row in enumerate(rows[1:]):
        line = r + 2
        if len(row) != len(header):
            raise DataFileError(
                f"{path}: line {line} has {len(row)} fields, the header {len(header)}"
            )
        for j, name in enumerate(names):
            try:
                values[r, j] = float(row[col[name]])
            except ValueError:
                raise DataFileError(
                    f"{path}: line {line}, column {name!r}: {row[col[name]]!r} is not a number"
                ) from None
        try:
            labels[r] = int(row[col["y"]])
        except ValueError:
            raise DataFileError(
                f"{path}: line {line}, column 'y': {row[col['y']]!r} is not an integer class label"
            ) from None
        patients.append(row[col["patient_id"]].strip())
        test[r] = "split" in col and row[col["split"]].strip().lower() == "test"
    if not np.all(np.isfinite(values)):
        raise DataFileError(f"{path}: features hold NaN or infinite values; drop or impute them")
    if labels.min() < 0:
        raise DataFileError(f"{path}: column y has negative labels; use 0..C-1")
    x = values.astype(np.float32)[:, :, None]
    patient = np.array(patients, dtype=str)
    if test.any():
        train = ~test
        return RawData(x[train], labels[train], patient[train], x[test], labels[test], ())
    return RawData(x, labels, patient, None, None, ())


def read_raw(config: FileDataConfig) -> RawData:
    path = config.path
    if not path.exists():
        raise DataFileError(f"{path}: no such file (a path in a study file is relative to it)")
    if config.format is DataFormat.NPZ:
        return _read_npz(path)
    return _read_csv(path, config.features)


# -- devices -----------------------------------------------------------------------


def _num_classes(raw: RawData) -> int:
    top = int(raw.y.max())
    if raw.test_y is not None:
        top = max(top, int(raw.test_y.max()))
    count = max(top + 1, len(raw.classes))
    if raw.classes and top >= len(raw.classes):
        raise DataFileError(
            f"labels go up to {top} but 'classes' names only {len(raw.classes)} classes"
        )
    return count


def _dirichlet_split(
    y: np.ndarray, devices: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Row indices per device: each class spread over devices by Dirichlet(alpha)."""
    parts: list[list[int]] = [[] for _ in range(devices)]
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        cuts = (np.cumsum(rng.dirichlet(np.full(devices, alpha))) * len(rows)).astype(int)[:-1]
        for d, chunk in enumerate(np.split(rows, cuts)):
            parts[d].extend(chunk.tolist())
    # every device needs at least one row: move one from the largest where needed
    for d in range(devices):
        if not parts[d]:
            donor = max(range(devices), key=lambda i: len(parts[i]))
            parts[d].append(parts[donor].pop())
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


def load_file_data(config: FileDataConfig) -> LoadedData:
    """Read, check, split into devices / held-out / warm-start cohort, normalise."""
    raw = read_raw(config)
    path = config.path
    num_classes = _num_classes(raw)
    if len(np.unique(raw.y)) < 2:
        raise DataFileError(
            f"{path}: y holds one class only ({int(raw.y[0])}); a classifier needs at least two"
        )
    rng = np.random.default_rng(config.seed)
    if config.partition is Partition.DIRICHLET:
        if config.devices is None:
            raise DataFileError("partition dirichlet needs a number of devices (data.devices)")
        needed = config.devices + (0 if raw.test_x is not None else 1)
        if len(raw.y) < needed:
            raise DataFileError(
                f"{path}: {len(raw.y)} rows cannot fill {config.devices} devices"
                + ("" if raw.test_x is not None else " and a held-out set")
            )
        x, y = raw.x, raw.y
        test_x, test_y = raw.test_x, raw.test_y
        if test_x is None:  # hold out a stratified fifth of the rows
            held = np.zeros(len(y), dtype=bool)
            for c in np.unique(y):
                rows = rng.permutation(np.flatnonzero(y == c))
                held[rows[: max(1, len(rows) // 5)]] = True
            test_x, test_y, x, y = x[held], y[held], x[~held], y[~held]
        split = _dirichlet_split(y, config.devices, config.alpha, rng)
        device_x = [x[i] for i in split]
        device_y = [y[i] for i in split]
        names = [f"part-{d}" for d in range(config.devices)]
        pre_x, pre_y = x[:0], y[:0]
    else:
        if raw.patient is None:
            raise DataFileError(
                f"{path}: no patient_id; add patient_id [n] (one device per patient), or "
                "partition the rows with data.partition: dirichlet and data.devices: N"
            )
        patients = sorted(set(raw.patient.tolist()))
        shuffled = [patients[i] for i in rng.permutation(len(patients))]
        if raw.test_x is not None:
            held_out = 0
        elif config.test_patients is not None:
            held_out = config.test_patients
        else:
            held_out = max(1, len(patients) // 5)
        federated = len(patients) - held_out - config.pretrain_patients
        if federated < MIN_DEVICES:
            raise DataFileError(
                f"{path}: {len(patients)} patients leave {federated} for the federation after "
                f"{held_out} held out for evaluation and {config.pretrain_patients} for the "
                f"warm start; a federation needs at least {MIN_DEVICES}. Add patients, lower "
                "data.test_patients or warm_start.patients, or supply X_test/y_test"
            )
        test_ids = set(shuffled[:held_out])
        pre_ids = set(shuffled[held_out : held_out + config.pretrain_patients])
        names = [p for p in patients if p not in test_ids and p not in pre_ids]
        device_x = [raw.x[raw.patient == p] for p in names]
        device_y = [raw.y[raw.patient == p] for p in names]
        if raw.test_x is not None:
            test_x, test_y = raw.test_x, raw.test_y
        else:
            test = np.isin(raw.patient, sorted(test_ids))
            test_x, test_y = raw.x[test], raw.y[test]
        pre = np.isin(raw.patient, sorted(pre_ids))
        pre_x, pre_y = raw.x[pre], raw.y[pre]
    if test_y is None or len(test_y) == 0:
        raise DataFileError(f"{path}: the held-out set is empty")
    train_y = np.concatenate(device_y)
    if len(np.unique(train_y)) < 2:
        raise DataFileError(
            f"{path}: the federation's devices hold one class only; add patients with other "
            "classes or hold out fewer"
        )
    mean, std = federation_statistics(device_x)
    if config.normalisation is Normalisation.PER_CHANNEL:

        def scale(a: np.ndarray) -> np.ndarray:
            return ((a - mean[None, :, None]) / std[None, :, None]).astype(np.float32)

        device_x = [scale(a) for a in device_x]
        test_x, pre_x = scale(test_x), scale(pre_x)
    classes = raw.classes or tuple(str(c) for c in range(num_classes))
    data = StudyData(device_x, device_y, test_x, test_y)
    return LoadedData(data, names, pre_x, pre_y, mean, std, classes)


def federation_statistics(device_x: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over every device's samples.

    Computed from what each device would contribute to one secure sum: its
    sample count and per-channel sums and sums of squares (float64). A
    channel that never varies gets standard deviation 1 (left unscaled).
    """
    count = sum(a.shape[0] * a.shape[2] for a in device_x)
    total = sum(a.astype(np.float64).sum(axis=(0, 2)) for a in device_x)
    squares = sum((a.astype(np.float64) ** 2).sum(axis=(0, 2)) for a in device_x)
    mean = total / count
    var = np.maximum(squares / count - mean**2, 0.0)
    std = np.sqrt(var)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def inspect_data(config: FileDataConfig) -> DataShape:
    """The shapes the study's model is built from (loads and checks the file once)."""
    loaded = load_file_data(config)
    x = loaded.data.device_x[0]
    return DataShape(
        channels=int(x.shape[1]),
        length=int(x.shape[2]),
        num_classes=len(loaded.classes),
        classes=loaded.classes,
        devices=len(loaded.data.device_x),
        samples=sum(len(v) for v in loaded.data.device_y),
    )
