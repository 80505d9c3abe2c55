"""Built-in data sets for simulations: nothing is downloaded.

Real data that ships inside installed packages (scikit-learn's wheel):

- ``breast_cancer``: Breast Cancer Wisconsin, 569 tumours, binary (table);
- ``diabetes``: 442 patients, disease progression after one year (table, regression);
- ``digits``: 1,797 hand-written digits, 8×8 grey images, 10 classes (image). Not
  medical, but a real image set with no download, to exercise the imaging path.

Synthetic data, generated from a fixed seed, for the kinds no installed package carries
(say so when quoting their metrics):

- ``vitals``: hourly vital signs of ward patients, label = deterioration (sequence);
- ``notes``: short admission notes, label = pneumonia, 25 % positive (text).

Each is a :class:`BuiltinDataset`: its schema, one row per example to split into sites,
and how to write a subset as a site's file. A user's own hospitals come in through
``--data-dir`` (:func:`simulations.prepare.prepare_simulation`); the Fed-TCGA-BRCA files
become such a folder with :func:`write_fed_tcga_brca`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import datasets as skdatasets

from models.data.schema import FeatureSpec, SiteSchema
from models.data.transforms import LOG

SiteWriter = Callable[[pd.DataFrame, Path], Path]
# Each center's test rows beside a Fed-TCGA-BRCA data folder's sites: hidden (a dot name),
# so the strict data-folder check (simulations.prepare.folder_sources) passes it by.
CENTER_TESTS = ".center-tests"


@dataclass(frozen=True)
class BuiltinDataset:
    """A data set ready to be split into simulated sites.

    Parameters
    ----------
    schema : SiteSchema
        The federation's schema.
    examples : DataFrame
        One row per example (table row, image, patient, note) with the label column;
        partitioning and the test split select rows of it.
    write : callable
        ``write(subset, stem)`` writes the examples of ``subset`` (rows of ``examples``)
        as one site's data at ``stem`` plus the kind's suffix, and returns that path.
    """

    schema: SiteSchema
    examples: pd.DataFrame
    write: SiteWriter


def _csv_writer(subset: pd.DataFrame, stem: Path) -> Path:
    path = stem.with_suffix(".csv")
    subset.to_csv(path, index=False)
    return path


def _column_name(raw: str) -> str:
    return raw.strip().replace(" ", "_")


# Breast Cancer Wisconsin's description gives ten cell-nucleus measurements three times
# each: their mean over the image, their standard error and their "worst" (the mean of the
# three largest). The schema declares the means and the worsts: the standard errors add 10
# weights, and DP-SGD's noise with them, and cost accuracy at ε = 1 (rows ``log-defaults``
# and ``log-defaults+mean+worst20`` of ``benchmarks/results/utility_methods.md``).
# Each one's published range: the "Summary Statistics" table of scikit-learn's
# description (``load_breast_cancer().DESCR``), as printed. Public knowledge, so declaring
# it (the federated statistics and the log scale need it) tells nothing about a site's rows.
BREAST_CANCER_PUBLISHED_RANGES: dict[str, tuple[str, str]] = {
    "mean radius": ("6.981", "28.11"),
    "mean texture": ("9.71", "39.28"),
    "mean perimeter": ("43.79", "188.5"),
    "mean area": ("143.5", "2501.0"),
    "mean smoothness": ("0.053", "0.163"),
    "mean compactness": ("0.019", "0.345"),
    "mean concavity": ("0.0", "0.427"),
    "mean concave points": ("0.0", "0.201"),
    "mean symmetry": ("0.106", "0.304"),
    "mean fractal dimension": ("0.05", "0.097"),
    "worst radius": ("7.93", "36.04"),
    "worst texture": ("12.02", "49.54"),
    "worst perimeter": ("50.41", "251.2"),
    "worst area": ("185.2", "4254.0"),
    "worst smoothness": ("0.071", "0.223"),
    "worst compactness": ("0.027", "1.058"),
    "worst concavity": ("0.0", "1.252"),
    "worst concave points": ("0.0", "0.291"),
    "worst symmetry": ("0.156", "0.664"),
    "worst fractal dimension": ("0.055", "0.208"),
}


def published_range(low: str, high: str) -> tuple[float, float]:
    """A printed ``[min, max]`` widened by half a unit of each one's last printed digit.

    The table rounds (``0.053`` for the data's 0.05263): the true value lies within half
    a unit of the last digit printed. A measurement's minimum stays at 0 or above.

    Parameters
    ----------
    low, high : str
        The published minimum and maximum, as printed.
    """

    def half_unit(text: str) -> Decimal:
        return Decimal(1).scaleb(int(Decimal(text).as_tuple().exponent)) / 2

    return (
        float(max(Decimal(low) - half_unit(low), Decimal(0))),
        float(Decimal(high) + half_unit(high)),
    )


def breast_cancer(
    ranges: Mapping[str, tuple[str, str]] = BREAST_CANCER_PUBLISHED_RANGES,
) -> BuiltinDataset:
    """569 tumours, 20 numeric features, label 1 = benign (scikit-learn's coding).

    The 10 "mean" and 10 "worst" measurements, without the 10 standard errors
    (:data:`BREAST_CANCER_PUBLISHED_RANGES`). Each feature declares its published range
    and the log scale, which centres these skewed positive measurements better at no ε
    (``benchmarks/results/utility_methods.md``).

    Parameters
    ----------
    ranges : mapping of str to (str, str)
        The features to declare, in order, by scikit-learn's name, each with its published
        minimum and maximum as printed (the benchmarks pass all 30 to rebuild the schema
        of before).
    """
    bunch = skdatasets.load_breast_cancer(as_frame=True)
    features = []
    for column, printed in ranges.items():
        low, high = published_range(*printed)
        features.append(
            FeatureSpec(_column_name(column), "numeric", min=low, max=high, transform=LOG)
        )
    schema = SiteSchema(
        name="breast_cancer",
        task="binary",
        label="target",
        features=tuple(features),
        classes=("0", "1"),
        missing="reject",
    )
    frame = bunch.frame.rename(columns=_column_name)[[f.name for f in features] + ["target"]]
    frame["target"] = frame["target"].astype(int)
    return BuiltinDataset(schema, frame, _csv_writer)


def diabetes() -> BuiltinDataset:
    """442 patients, 10 numeric features, disease progression after one year."""
    bunch = skdatasets.load_diabetes(as_frame=True, scaled=False)
    frame = bunch.frame.rename(columns=_column_name)
    features = []
    for column in bunch.feature_names:
        name = _column_name(column)
        if name == "sex":
            frame[name] = (frame[name] == frame[name].max()).astype(int)
            features.append(FeatureSpec(name=name, type="binary"))
        else:
            # the published data set's range (public; the statistics need one)
            low, high = float(frame[name].min()), float(frame[name].max())
            features.append(FeatureSpec(name=name, type="numeric", min=low, max=high))
    schema = SiteSchema(
        name="diabetes",
        task="regression",
        label="target",
        features=tuple(features),
        extra={
            "label_min": float(frame["target"].min()),
            "label_max": float(frame["target"].max()),
        },
    )
    return BuiltinDataset(schema, frame, _csv_writer)


def digits() -> BuiltinDataset:
    """1,797 8×8 grey images of digits 0–9, written per site as MedMNIST-style ``.npz``."""
    bunch = skdatasets.load_digits()
    # 0–16 grey levels to the 0–255 of an 8-bit image file
    images = np.clip(bunch.images * 16, 0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    schema = SiteSchema(
        name="digits",
        task="multiclass",
        label="label",
        features=(),
        classes=tuple(str(d) for d in range(10)),
        extra={"kind": "image", "channels": 1, "image_size": 8},
    )

    def write(subset: pd.DataFrame, stem: Path) -> Path:
        path = stem.with_suffix(".npz")
        index = subset["image"].to_numpy()
        np.savez(path, train_images=images[index], train_labels=labels[index][:, None])
        return path

    return BuiltinDataset(
        schema, pd.DataFrame({"image": np.arange(len(labels)), "label": labels}), write
    )


VITALS = ("heart_rate", "resp_rate", "spo2", "temperature")
# Physiologically possible ranges (public knowledge), which the federated statistics need.
VITAL_RANGES = {
    "heart_rate": (0.0, 300.0),
    "resp_rate": (0.0, 80.0),
    "spo2": (0.0, 100.0),
    "temperature": (25.0, 45.0),
}


def vitals(patients: int = 600, seed: int = 7) -> BuiltinDataset:
    """Synthetic hourly vital signs of ward patients (12–36 hours each).

    About 30 % of them deteriorate, which shows as a drift of heart and breathing rate
    (and temperature) up and oxygen saturation down over their last hours, under noise as
    large as the drift.

    Parameters
    ----------
    patients : int
        Number of patients.
    seed : int
        Seed of the generator.
    """
    rng = np.random.default_rng(seed)
    rows = []
    outcomes = []
    for p in range(patients):
        hours = int(rng.integers(12, 37))
        deteriorates = rng.random() < 0.3
        onset = int(rng.integers(hours // 3, hours - 3)) if deteriorates else hours
        base = rng.normal([80, 16, 97, 36.8], [10, 2, 1.2, 0.3])
        for t in range(hours):
            drift = max(0, t - onset) / 6 if deteriorates else 0.0
            value = base + drift * np.array([6, 2, -1.2, 0.25]) + rng.normal(0, [6, 2, 1, 0.3])
            rows.append(
                {
                    "patient_id": f"P{p:04d}",
                    "hour": t,
                    **{name: round(float(v), 2) for name, v in zip(VITALS, value, strict=True)},
                    "deterioration": int(deteriorates),
                }
            )
        outcomes.append(int(deteriorates))
    long = pd.DataFrame(rows)
    long["spo2"] = long["spo2"].clip(upper=100)
    schema = SiteSchema(
        name="vitals",
        task="binary",
        label="deterioration",
        features=tuple(
            FeatureSpec(name=n, type="numeric", min=low, max=high)
            for n, (low, high) in VITAL_RANGES.items()
        ),
        classes=("0", "1"),
        extra={"kind": "sequence", "patient": "patient_id", "time": "hour", "max_steps": 24},
    )
    examples = pd.DataFrame({"patient_id": [f"P{p:04d}" for p in range(patients)]})
    examples["deterioration"] = outcomes

    def write(subset: pd.DataFrame, stem: Path) -> Path:
        return _csv_writer(long[long["patient_id"].isin(set(subset["patient_id"]))], stem)

    return BuiltinDataset(schema, examples, write)


_NOTE_OPENINGS = (
    "Patient admitted from the emergency department.",
    "Seen on the ward round this morning.",
    "Referred by the general practitioner.",
    "Transferred from the surgical unit.",
)
_NOTE_COMMON = (
    "history of hypertension",
    "type 2 diabetes on metformin",
    "reports fatigue",
    "mild headache",
    "no known drug allergies",
    "lives alone",
    "smoker for twenty years",
    "blood pressure stable",
    "appetite reduced",
    "slept poorly",
)
_NOTE_PNEUMONIA = (
    "productive cough with green sputum",
    "fever of 38.9",
    "crackles in the right lower lobe",
    "chest x-ray shows consolidation",
    "pleuritic chest pain",
    "started on amoxicillin",
    "raised CRP",
)
_NOTE_OTHER = (
    "chest clear on auscultation",
    "chest x-ray unremarkable",
    "afebrile",
    "urinary symptoms",
    "abdominal pain after meals",
    "fall at home without head injury",
    "dizziness on standing",
)


def notes(count: int = 800, seed: int = 11) -> BuiltinDataset:
    """Synthetic admission notes, label = pneumonia (about 25 % of notes).

    A note holds two to four common findings, one to three findings typical of its class
    and, one time in five, a finding typical of the other class.

    Parameters
    ----------
    count : int
        Number of notes.
    seed : int
        Seed of the generator.
    """
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(count):
        positive = rng.random() < 0.25
        own, other = (_NOTE_PNEUMONIA, _NOTE_OTHER) if positive else (_NOTE_OTHER, _NOTE_PNEUMONIA)
        parts = list(rng.choice(_NOTE_COMMON, size=int(rng.integers(2, 5)), replace=False))
        parts += list(rng.choice(own, size=int(rng.integers(1, 4)), replace=False))
        if rng.random() < 0.2:
            parts.append(str(rng.choice(other)))
        rng.shuffle(parts)
        texts.append(f"{rng.choice(_NOTE_OPENINGS)} {', '.join(parts).capitalize()}.")
        labels.append("pneumonia" if positive else "other")
    frame = pd.DataFrame({"note": texts, "diagnosis": labels})
    schema = SiteSchema(
        name="notes",
        task="binary",
        label="diagnosis",
        features=(),
        classes=("other", "pneumonia"),
        extra={"kind": "text", "text": "note", "n_features": 1024, "ngram_max": 2},
    )
    return BuiltinDataset(schema, frame, _csv_writer)


DATASETS: dict[str, Callable[[], BuiltinDataset]] = {
    "breast_cancer": breast_cancer,
    "diabetes": diabetes,
    "digits": digits,
    "vitals": vitals,
    "notes": notes,
}


def load_dataset(name: str) -> BuiltinDataset:
    """The built-in data set called ``name``.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`' names.

    Raises
    ------
    ValueError
        The name is not a built-in data set; the message lists them.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; built in: {sorted(DATASETS)}")
    return DATASETS[name]()


AGE = "age_at_index"  # Fed-TCGA-BRCA's one numeric feature; the others are 0/1 indicators


def write_fed_tcga_brca(source: str | Path, out: str | Path) -> Path:
    """Turn FLamby's Fed-TCGA-BRCA files into a ``--data-dir`` folder for a survival federation.

    The folder holds ``schema.toml``, ``region-<k>.csv`` (the benchmark's training rows of
    each of its 6 centers), ``test.csv`` (every center's test rows: the global test set)
    and ``.center-tests/test-<k>.csv`` (each center's test rows, for the benchmark's
    metric, the mean of the per-center C-indices; hidden, so a federation over the folder
    takes it for no site).

    Parameters
    ----------
    source : path
        The folder with ``brca.csv`` and ``train_test_split.csv`` (see its SOURCES.md).
    out : path
        Where to write; created if needed.

    Returns
    -------
    Path
        ``out``.
    """
    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = pd.read_csv(source / "brca.csv")
    split = pd.read_csv(source / "train_test_split.csv").set_index("pid")
    features = [c for c in data.columns if c not in ("pid", "E", "T")]
    # Ranges known without looking at any patient (the statistics are clipped to them):
    # an age in years, and FLamby's one-hot indicators of the clinical categories.
    schema = SiteSchema(
        name="fed_tcga_brca",
        task="survival",
        label="T",
        features=tuple(
            FeatureSpec(name=c, type="numeric", min=0.0, max=120.0 if c == AGE else 1.0)
            for c in features
        ),
        extra={"kind": "table", "event": "E"},
    )
    schema.save(out / "schema.toml")
    # the benchmark's split leaves out the 8 patients of brca.csv whose site has no region
    data = data[data["pid"].isin(split.index)]
    fold = split.loc[data["pid"], "fold2"].to_numpy()
    table = data[[*features, "E", "T"]].astype({"E": int})
    (out / CENTER_TESTS).mkdir(exist_ok=True)
    for part in sorted(set(fold)):
        role, center = part.split("_")
        path = (
            out / f"region-{center}.csv"
            if role == "train"
            else out / CENTER_TESTS / f"test-{center}.csv"
        )
        table[fold == part].to_csv(path, index=False)
    table[np.char.startswith(fold.astype(str), "test")].to_csv(out / "test.csv", index=False)
    return out
