"""2D images (grey or RGB) for diagnosis, in MedMNIST's ``.npz`` layout or as PNG files.

Schema keys (``[dataset]``): ``kind = "image"``, ``channels`` (1 or 3), ``image_size``
(side in pixels; images are square), ``task`` (binary or multiclass), ``classes``.
No ``[features]``.

A site's data is either

- a ``.npz`` file with arrays ``<split>_images`` and ``<split>_labels`` (MedMNIST's
  ``train_``/``val_``/``test_``; every pair found is used): images ``(n, size, size)``
  or ``(n, size, size, channels)`` with pixel values 0–255, labels ``(n,)`` or
  ``(n, 1)`` class indices into ``classes``; problems name the array and the image's
  index (``row``);
- or a folder of PNG files with ``labels.csv`` (columns ``file``, a path relative to the
  folder, and ``label``, a class name), or without it one sub-folder per class named as
  the class. Problems name the PNG file (and the ``labels.csv`` row).

Pixels become float32 in [0, 1], shape ``(channels, size, size)``. Nothing is pooled
across sites but the class counts. A request instance is ``{"image": [[...], ...]}``
(pixel values 0–255, ``size × size`` or ``size × size × channels``) or
``{"png": "<base64 PNG>"}``.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.data.features import FeatureStatistics, Standardization
from models.data.kinds.base import (
    EncodedExamples,
    ModelInput,
    RowError,
    integer_option,
)
from models.data.schema import SchemaError, SiteSchema
from models.data.tables import DataProblem, SiteDataError, read_table

LABELS_FILE = "labels.csv"
_MODES = {1: ("L",), 3: ("RGB",)}


@dataclass(frozen=True)
class ImageShape:
    """The images a schema declares: ``channels`` (1 or 3) and ``size`` (pixels per side)."""

    channels: int
    size: int

    @classmethod
    def of(cls, schema: SiteSchema) -> ImageShape:
        """The shape a schema declares (``channels`` default 1, ``image_size`` default 28).

        Parameters
        ----------
        schema : SiteSchema
            An image schema.

        Raises
        ------
        SchemaError
            ``channels`` is not 1 or 3, or ``image_size`` is not an integer >= 4.
        """
        channels = integer_option(schema, "channels", 1, 1)
        if channels not in (1, 3):
            raise SchemaError(f"{schema.source}: [dataset].channels is {channels}, expected 1 or 3")
        return cls(channels, integer_option(schema, "image_size", 28, 4))

    def describe(self) -> str:
        """The shape in words, for error messages."""
        return f"{self.size}×{self.size}, {self.channels} channel(s)"


@dataclass
class ImageExamples:
    """A site's checked images.

    Parameters
    ----------
    schema : SiteSchema
        The federation's schema (its classes).
    images : ndarray
        float32 ``(n, channels, size, size)``, values in [0, 1].
    labels : ndarray
        int64 class indices into ``schema.classes``.
    """

    schema: SiteSchema
    images: np.ndarray
    labels: np.ndarray

    @property
    def num_examples(self) -> int:
        """Number of images."""
        return len(self.labels)

    @property
    def dropped_rows(self) -> list[int]:
        """None: an image is never dropped (a bad one is an error)."""
        return []

    def strata(self) -> np.ndarray | None:
        """The class indices: splits are stratified by class."""
        return self.labels

    def statistics(self, index: np.ndarray) -> FeatureStatistics:
        """The class counts of the images at ``index`` (no pixel statistics)."""
        classes = self.schema.classes
        return FeatureStatistics.of_values(
            {}, labels=[classes[i] for i in self.labels[index]], rows=len(index)
        )

    def encode(self, index: np.ndarray, standardization: Standardization) -> EncodedExamples:
        """The images at ``index`` and their class indices (``standardization`` is unused)."""
        return EncodedExamples(self.images[index], self.labels[index])


def to_model_pixels(pixels: np.ndarray, shape: ImageShape) -> tuple[np.ndarray | None, str]:
    """One image's 0–255 pixels as the model takes them, or what is wrong with them.

    Parameters
    ----------
    pixels : ndarray
        ``(size, size)`` (one channel only) or ``(size, size, channels)``, values 0–255.
    shape : ImageShape
        The images the schema declares.

    Returns
    -------
    tuple
        float32 ``(channels, size, size)`` in [0, 1] and ``""``; or ``None`` and the
        problem (shape, channels, non-finite or out-of-range values).
    """
    if pixels.ndim == 2 and shape.channels == 1:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3:
        return None, f"expected {shape.describe()}, found an array of shape {pixels.shape}"
    if pixels.shape[:2] != (shape.size, shape.size):
        return None, (
            f"is {pixels.shape[1]}×{pixels.shape[0]} (width×height) pixels; "
            f"expected {shape.size}×{shape.size}"
        )
    if pixels.shape[2] != shape.channels:
        return None, f"has {pixels.shape[2]} channel(s); expected {shape.channels}"
    if not np.issubdtype(pixels.dtype, np.number) or not np.isfinite(pixels).all():
        return None, "pixel values must be finite numbers"
    if pixels.min() < 0 or pixels.max() > 255:
        return None, "pixel values must lie in 0–255"
    return (pixels.astype(np.float32) / 255.0).transpose(2, 0, 1), ""


def _pil_pixels(image: Image.Image, shape: ImageShape) -> tuple[np.ndarray | None, str]:
    if image.mode == "P":  # palette images carry their colours in a table
        image = image.convert("RGB" if shape.channels == 3 else "L")
    if image.mode not in _MODES[shape.channels]:
        found = len(image.getbands())
        return None, f"has {found} channel(s) (mode {image.mode}); expected {shape.channels}"
    return to_model_pixels(np.asarray(image), shape)


def _load_npz(path: Path, schema: SiteSchema, shape: ImageShape) -> ImageExamples:
    file = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        problem = DataProblem(file, None, None, f"not a readable .npz file ({err})")
        raise SiteDataError([problem]) from err
    with archive:
        keys = sorted(k for k in archive.files if k.endswith("_images"))
        if not keys:
            raise SiteDataError(
                [DataProblem(file, None, None, "no '<split>_images' array (e.g. train_images)")]
            )
        problems: list[DataProblem] = []
        images: list[np.ndarray] = []
        labels: list[int] = []
        for key in keys:
            label_key = key.removesuffix("_images") + "_labels"
            if label_key not in archive.files:
                problems.append(DataProblem(file, None, label_key, f"missing beside '{key}'"))
                continue
            pixels, raw_labels = archive[key], archive[label_key]
            if raw_labels.ndim == 2 and raw_labels.shape[1] == 1:
                raw_labels = raw_labels[:, 0]
            if raw_labels.ndim != 1 or len(raw_labels) != len(pixels):
                problems.append(
                    DataProblem(
                        file,
                        None,
                        label_key,
                        f"expected one label per image ({len(pixels)}), "
                        f"found shape {raw_labels.shape}",
                    )
                )
                continue
            for i, (image, label) in enumerate(zip(pixels, raw_labels, strict=True)):
                converted, why = to_model_pixels(np.asarray(image), shape)
                if converted is None:
                    problems.append(DataProblem(file, i, key, f"image {i} {why}"))
                if not _is_class_index(label, len(schema.classes)):
                    problems.append(
                        DataProblem(
                            file,
                            i,
                            label_key,
                            f"unknown label {np.asarray(label).item()!r}; expected a class index "
                            f"0–{len(schema.classes) - 1} ({list(schema.classes)})",
                        )
                    )
                elif converted is not None:
                    images.append(converted)
                    labels.append(int(label))
    if problems:
        raise SiteDataError(problems)
    return _examples(file, schema, images, labels)


def _is_class_index(value: Any, num_classes: int) -> bool:
    number = float(value) if np.issubdtype(np.asarray(value).dtype, np.number) else -1.0
    return number.is_integer() and 0 <= number < num_classes


def _listing(folder: Path, schema: SiteSchema) -> tuple[list[tuple[Path, str, int | None]], str]:
    """(file, label text, labels.csv row) of every image, and the file naming the labels."""
    labels_path = folder / LABELS_FILE
    if labels_path.is_file():
        table = read_table(labels_path)
        missing = [c for c in ("file", "label") if c not in table.columns]
        if missing:
            raise SiteDataError(
                [DataProblem(str(labels_path), 1, c, "missing column") for c in missing]
            )
        return [
            (folder / str(f).strip(), str(lab).strip(), i + 2)
            for i, (f, lab) in enumerate(zip(table["file"], table["label"], strict=True))
        ], str(labels_path)
    entries: list[tuple[Path, str, int | None]] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        entries += [(png, sub.name, None) for png in sorted(sub.glob("*.png"))]
    return entries, str(folder)


def _load_folder(folder: Path, schema: SiteSchema, shape: ImageShape) -> ImageExamples:
    entries, source = _listing(folder, schema)
    if not entries:
        raise SiteDataError(
            [
                DataProblem(
                    str(folder),
                    None,
                    None,
                    f"no images: expected {LABELS_FILE} (file,label) or one sub-folder of "
                    "PNG files per class",
                )
            ]
        )
    problems: list[DataProblem] = []
    images: list[np.ndarray] = []
    labels: list[int] = []
    for png, label, row in entries:
        file = source if row is not None else str(png)
        if label not in schema.classes:
            problems.append(
                DataProblem(
                    file,
                    row,
                    "label",
                    f"{png.name}: unknown label {label!r}; expected one of {list(schema.classes)}",
                )
            )
            continue
        try:
            with Image.open(png) as image:
                image.load()
                converted, why = _pil_pixels(image, shape)
        except FileNotFoundError:
            converted, why = None, "file not found"
        except (UnidentifiedImageError, OSError, SyntaxError):
            converted, why = None, "not a readable image"
        if converted is None:
            problems.append(DataProblem(str(png), row, "file", why))
            continue
        images.append(converted)
        labels.append(schema.classes.index(label))
    if problems:
        raise SiteDataError(problems)
    return _examples(str(folder), schema, images, labels)


def _examples(
    file: str, schema: SiteSchema, images: list[np.ndarray], labels: list[int]
) -> ImageExamples:
    present = sorted(set(labels))
    if len(present) < 2:
        found = [schema.classes[i] for i in present]
        raise SiteDataError(
            [
                DataProblem(
                    file,
                    None,
                    "label",
                    f"images of {found or 'no'} class only; a site needs at least two of "
                    f"{list(schema.classes)}",
                )
            ]
        )
    return ImageExamples(schema, np.stack(images), np.asarray(labels, dtype=np.int64))


class ImageKind:
    """2D images; see the module docstring."""

    name = "image"
    tasks: tuple[str, ...] = ("binary", "multiclass")
    keys: tuple[str, ...] = ("channels", "image_size")
    sources = "a .npz file or a folder of PNG files"

    def check_schema(self, schema: SiteSchema) -> None:
        """Check ``channels`` and ``image_size``, and that there are no ``[features]``."""
        ImageShape.of(schema)
        if schema.features:
            raise SchemaError(f"{schema.source}: image data takes no [features] tables")

    def is_site_source(self, path: Path) -> bool:
        """Whether ``path`` is a folder (of PNG files) or a ``.npz`` file."""
        return path.is_dir() or path.suffix.lower() == ".npz"

    def load(self, path: Path, schema: SiteSchema) -> ImageExamples:
        """Read a ``.npz`` file or a folder of PNG files; raises ``SiteDataError``."""
        path = Path(path)
        shape = ImageShape.of(schema)
        if path.is_dir():
            return _load_folder(path, schema, shape)
        if not path.is_file():
            raise SiteDataError([DataProblem(str(path), None, None, "file not found")])
        return _load_npz(path, schema, shape)

    def families(self, schema: SiteSchema) -> tuple[str, ...]:
        """The small CNN only."""
        return ("cnn",)

    def model_input(self, schema: SiteSchema) -> ModelInput:
        """Input width ``channels × size × size``; ``channels`` and ``image_size`` options."""
        shape = ImageShape.of(schema)
        return ModelInput(
            shape.channels * shape.size * shape.size,
            {"channels": shape.channels, "image_size": shape.size},
        )

    def encode_request(
        self,
        schema: SiteSchema,
        standardization: Standardization,
        instances: Sequence[Mapping[str, Any]],
    ) -> np.ndarray:
        """Instances ``{"image": pixels}`` or ``{"png": base64}`` as ``(n, c, size, size)``.

        Raises :class:`RowError` naming the instance and field that do not fit.
        """
        shape = ImageShape.of(schema)
        images = []
        for i, instance in enumerate(instances):
            if not isinstance(instance, Mapping) or len(instance) != 1:
                raise RowError(i, None, 'expected {"image": [[...]]} or {"png": "<base64>"}')
            ((key, value),) = instance.items()
            if key == "png":
                converted, why = _decode_png(value, shape)
            elif key == "image":
                try:
                    pixels = np.asarray(value, dtype=np.float64)
                except (TypeError, ValueError):
                    raise RowError(i, key, "expected nested lists of pixel values") from None
                converted, why = to_model_pixels(pixels, shape)
            else:
                raise RowError(i, key, 'unknown field; expected "image" or "png"')
            if converted is None:
                raise RowError(i, key, why)
            images.append(converted)
        return np.stack(images) if images else np.zeros((0, shape.channels, shape.size, shape.size))

    def present_attributions(
        self, schema: SiteSchema, attributions: np.ndarray, instance: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``{"pixels": size × size map}``: each pixel's attribution summed over channels."""
        return {"pixels": attributions.sum(axis=0).astype(float).tolist()}


def _decode_png(value: Any, shape: ImageShape) -> tuple[np.ndarray | None, str]:
    if not isinstance(value, str):
        return None, "expected a base64-encoded PNG"
    try:
        data = base64.b64decode(value, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return _pil_pixels(image, shape)
    except (binascii.Error, UnidentifiedImageError, OSError, SyntaxError):
        return None, "not a base64-encoded PNG image"
