"""Hugging Face ``datasets`` saved to disk, and parquet files: encoded images in an arrow column.

``HFDatasetSource`` opens a ``save_to_disk`` folder with ``datasets.load_from_disk``;
``ParquetSource`` a parquet file, or a folder of them (``train-00000-of-00002.parquet``,
``data/test/...``: the split is read from the file's name or folder). Both keep the images
encoded, in memory-mapped arrow tables, and decode one row at a time as files are decoded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from featpipe.data.arrays import check_label_max, encode_labels
from featpipe.data.files import file_stat, files_under
from featpipe.data.images import decode_rgb, load_rgb, read_error
from featpipe.data.source import (
    SPLIT_ALIASES,
    SPLIT_CODES,
    ImageSource,
    is_missing_label,
    row_ids,
    split_alias,
)
from featpipe.data.splits import assign_splits, require_train, warn_unread_split_column
from featpipe.errors import ImageReadError, SourceError, did_you_mean
from featpipe.extras import import_extra
from featpipe.words import agrees

# Column names tried, in order, when no column has the Image or ClassLabel type.
IMAGE_COLUMNS = ("image", "img", "images", "picture", "photo")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target", "category")


class TableSource(ImageSource):
    """Rows of arrow tables, one per split of the dataset, with an encoded-image column and a
    label column. Subclasses read the tables (:meth:`_read`).

    ``image``/``label`` name the columns; by default the one column of type ``Image`` (or named
    image/img/...) and the one of type ``ClassLabel`` (or named label/labels/...) are used.
    ClassLabel names are the classes; other integer labels give classes "0".."max", string
    labels their sorted unique values. The dataset's train/validation/test splits are used,
    and a missing val or test split is carved out of train by its fraction, as for folders.
    Ids are the dataset's split and row: ``train/00042``. A row that holds only its image's
    file path reads it relative to the dataset's folder (a lone parquet file's own folder).
    """

    kind = "dataset"

    def __init__(
        self,
        path: str | Path,
        *,
        image: str | None = None,
        label: str | None = None,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        seed: int = 0,
    ):
        self.root = Path(path)
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        tables, features, self._files = self._read()
        # where a row's relative image path starts: the dataset's folder (a lone parquet
        # file's own folder); found once, not for each row read
        self._image_dir = self.root if self.root.is_dir() else self.root.parent
        # {split name: its name as read}: a lone table that names no split is "train"
        self._read_names = self._known_splits(tables)
        tables = {name: tables[read] for name, read in self._read_names.items()}
        self._files = {name: self._files[read] for name, read in self._read_names.items()}
        first = next(iter(tables.values()))
        self.image_column = _pick_column(
            image, "image", first.column_names, features, _is_image, IMAGE_COLUMNS, self.root
        )
        self.label_column = _pick_column(
            label, "label", first.column_names, features, _is_class_label, LABEL_COLUMNS, self.root
        )
        for name, table in tables.items():
            lacking = [
                c for c in (self.image_column, self.label_column) if c not in table.column_names
            ]
            if lacking:  # e.g. a competition's test split, without labels
                raise SourceError(
                    f"{self.kind} {str(self.root)!r}: its {name} split has no column "
                    f"{' or '.join(map(repr, lacking))} (its columns: "
                    f"{', '.join(table.column_names)}), which featpipe reads from its "
                    f"{next(iter(tables))} split. Give every split the same columns, or leave "
                    "that split out (a split without labels cannot be scored)."
                )
        _check_same_class_names(self._part_features, self.label_column, self.root)
        self.split_names = list(tables)
        self._sizes = [len(t) for t in tables.values()]
        if not sum(self._sizes):
            raise SourceError(f"{self.kind} {str(self.root)!r} holds no rows: no image to read.")
        self._columns: list | None = None  # read again after pickling (see __getstate__)
        self._check_image_type(first)
        cells = [v for t in tables.values() for v in t.column(self.label_column).to_pylist()]
        self.classes, self.labels = self._encode(cells, features.get(self.label_column))
        self.ids = [
            sid for name, n in zip(tables, self._sizes, strict=True) for sid in row_ids(name, n)
        ]
        given = np.concatenate(
            [
                np.full(n, SPLIT_CODES[split_alias(name)], np.uint8)
                for name, n in zip(tables, self._sizes, strict=True)
            ]
        )
        require_train(
            given,
            f"{self.kind} {str(self.root)!r}",
            "Its train split holds no rows: save the dataset again with its train rows.",
        )
        self._warn_split_columns(tables)
        self.splits = assign_splits(
            self.labels,
            given,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            origin=f"{self.kind} {str(self.root)!r}",
            classes=self.classes,
            ids=self.ids,
        )
        self._table_of = np.repeat(np.arange(len(self._sizes)), self._sizes)
        self._row_in_table = np.concatenate([np.arange(n) for n in self._sizes])

    def _warn_split_columns(self, tables: dict) -> None:
        """Warn of a text column holding splits other than the tables' (see
        splits.warn_unread_split_column): featpipe takes splits from the tables alone."""
        import pyarrow as pa

        first = next(iter(tables.values()))
        for field in first.schema:
            if field.name in (self.image_column, self.label_column) or not (
                pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
            ):
                continue
            warn_unread_split_column(
                field.name,
                {
                    split_alias(n): t.column(field.name).unique().to_pylist()
                    for n, t in tables.items()
                    if field.name in t.column_names  # splits may differ in their columns
                },
                f"{self.kind} {str(self.root)!r}",
                "featpipe reads a table's split from its file or folder name (train.parquet, "
                "data/test/...) or a saved DatasetDict's splits: save each split there, e.g. "
                f"df[df[{field.name!r}] == 'test'].to_parquet('data/test.parquet').",
            )

    # -- reading -------------------------------------------------------------------------------
    def _read(self) -> tuple[dict[str, object], dict, dict[str, list[Path]]]:
        """({split name: pyarrow Table}, {column: datasets feature}, {split name: files})."""
        raise NotImplementedError

    def _known_splits(self, tables: dict) -> dict[str, str]:
        """{split name: the name of its table as read}, in train, val, test order."""
        unknown = [name for name in tables if split_alias(name) is None]
        if len(tables) == 1 and unknown:  # one unnamed table: all of it is train
            return {"train": unknown[0]}
        if unknown:
            warnings.warn(
                f"{self.kind} {str(self.root)!r}: {agrees(len(unknown), 'split', 'splits')} "
                f"{', '.join(map(repr, unknown))} {agrees(len(unknown), 'is', 'are')} left out; "
                f"featpipe reads {', '.join(sorted(SPLIT_ALIASES))}.",
                UserWarning,
                stacklevel=4,
            )
        # train, val, test order, whatever the order of the files or the saved dict
        known = sorted((k for k in tables if split_alias(k)), key=_split_order)
        if "train" not in {split_alias(name) for name in known}:
            raise SourceError(
                f"{self.kind} {str(self.root)!r} has no train split (it has "
                f"{', '.join(map(repr, known)) or 'none'}); featpipe needs train rows to fit on."
            )
        return {name: name for name in known}

    def _check_image_type(self, table) -> None:
        import pyarrow as pa

        kind = table.schema.field(self.image_column).type
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
            return
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return
        raise SourceError(
            f"Column {self.image_column!r} of {str(self.root)!r} holds {kind}, not encoded "
            "images: featpipe reads an Image column (bytes and path) or a binary column of "
            "encoded files (PNG, JPEG, ...). Name the image column with ?image=COLUMN."
        )

    def _encode(self, cells: list, feature: object) -> tuple[list[str], np.ndarray]:
        where = f"Column {self.label_column!r} of {str(self.root)!r}"
        others = [v for v in cells if not isinstance(v, (int, float, str, type(None)))]
        if others:
            raise SourceError(
                f"{where} holds {type(others[0]).__name__} values ({others[0]!r}), not one class "
                "label per row. Name the label column with ?label=COLUMN."
            )
        if any(_unlabelled(v) for v in cells):
            raise SourceError(
                f"{where} has rows without a label (None, NaN, -1 or empty), as unlabelled test "
                "splits do. Leave that split out or label it."
            )
        values = np.asarray(cells, dtype=object)
        kind = np.int64 if all(isinstance(v, int) for v in cells) else str
        names = feature.names if _is_class_label(feature) else None
        if kind is np.int64 and names is None:  # before int64 holds them
            check_label_max(max(cells), where)
        return encode_labels(values.astype(kind), names, len(values), where)

    def _image_columns(self) -> list:
        if self._columns is None:
            tables, _, _ = self._read()
            self._columns = [
                tables[self._read_names[name]].column(self.image_column)
                for name in self.split_names
            ]
        return self._columns

    def _cell(self, index: int) -> tuple[bytes | None, str | None]:
        """(encoded bytes, file path) of row ``index``'s image; either may be None."""
        column = self._image_columns()[self._table_of[index]]
        value = column[int(self._row_in_table[index])].as_py()
        if isinstance(value, dict):
            return value.get("bytes"), value.get("path")
        return value, None

    def _name(self, index: int) -> str:
        return f"{self.root} [{self.ids[index]}]"

    def load(self, index: int) -> Image.Image:
        data, path = self._cell(index)
        if data is not None:
            return decode_rgb(data, self._name(index))
        return load_rgb(self._external(path, index))

    def read_bytes(self, index: int) -> bytes:
        data, path = self._cell(index)
        if data is not None:
            return data
        file = self._external(path, index)
        try:
            return file.read_bytes()
        except OSError as err:
            raise read_error(file, err) from err

    def path(self, index: int) -> str | None:
        """The image file of a row that holds only its path; None for encoded bytes (or no
        image: ``load`` then says so)."""
        data, path = self._cell(index)
        return None if data is not None or not path else str(self._external(path, index))

    def _external(self, path: str | None, index: int) -> Path:
        if not path:  # an empty cell: an image missing from the dataset, skippable (on_error)
            raise ImageReadError(
                f"Cannot read image {self._name(index)!r}: its row holds no image (neither "
                "bytes nor a file path). Add the image to the dataset, or remove the row.",
                path=self._name(index),
                reason="no image in the row",
            )
        return self._image_dir / path  # an absolute path stays as it is

    def _fingerprint_parts(self, content: bool) -> Iterator[bytes]:
        if content:
            for i in range(len(self)):
                try:
                    yield hashlib.sha256(self.read_bytes(i)).digest()
                except ImageReadError as err:  # as for files: extraction fails or skips it
                    yield f"unreadable:{err.reason}".encode()
            return
        # Without content: the size and mtime of the files that hold each split's rows, and
        # of the image file of a row that holds only its path (rewriting it changes the row).
        stats = [_stat(self._files[name], self.root) for name in self.split_names]
        for index, (t, path) in enumerate(zip(self._table_of, self._paths_only(), strict=True)):
            yield stats[t] if path is None else stats[t] + file_stat(self._external(path, index))

    def _paths_only(self) -> Iterator[str | None]:
        """Each row's image path where the row holds no image bytes, else None (the paths
        are read without the bytes)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        for column in self._image_columns():
            if not pa.types.is_struct(column.type) or column.type.get_field_index("path") < 0:
                yield from [None] * len(column)
                continue
            paths = pc.struct_field(column, "path").to_pylist()
            bare = pc.is_null(pc.struct_field(column, "bytes")).to_pylist()
            yield from (p if b and p else None for p, b in zip(paths, bare, strict=True))

    def __getstate__(self) -> dict:
        # Arrow columns would be copied whole into each worker process: reopen them there.
        return {**self.__dict__, "_columns": None}

    def describe(self) -> dict:
        return {
            "kind": type(self).__name__,
            "root": str(self.root.resolve()),
            "image_column": self.image_column,
            "label_column": self.label_column,
            "splits": self.split_names,
            "images": len(self),
            "classes": len(self.classes),
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
        }


class HFDatasetSource(TableSource):
    """A Hugging Face ``Dataset`` or ``DatasetDict`` saved with ``save_to_disk`` (see
    :class:`TableSource`); a single ``Dataset`` is all train."""

    kind = "Hugging Face dataset"

    def _read(self):
        datasets = import_extra("datasets", "datasets", "Reading a Hugging Face dataset")
        try:
            loaded = datasets.load_from_disk(str(self.root))
        except (FileNotFoundError, ValueError) as err:
            raise SourceError(
                f"Cannot open {str(self.root)!r} as a Hugging Face dataset saved with "
                f"save_to_disk: {err}"
            ) from None
        except IndexError as err:  # datasets' own failure on a split saved with no rows
            empty = _empty_saved_splits(self.root)
            which, fix = "", "Save it again without empty splits (they cannot be loaded back)."
            if empty == ["."]:
                which, fix = ": it holds no rows", "Save it again with its rows."
            elif empty:
                which = (
                    f": its {agrees(len(empty), 'split', 'splits')} "
                    f"{', '.join(map(repr, empty))} {agrees(len(empty), 'holds', 'hold')} no rows"
                )
            raise SourceError(
                f"datasets cannot load the Hugging Face dataset {str(self.root)!r} (IndexError: "
                f"{err}){which}. {fix}"
            ) from None
        parts = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        tables, files = {}, {}
        for name, ds in parts.items():
            if ds._indices is not None:  # a selected or shuffled view: materialise its rows
                ds = ds.flatten_indices(keep_in_memory=True)
            tables[name] = ds.data.table
            files[name] = [Path(f["filename"]) for f in ds.cache_files]
        self._part_features = {name: ds.features for name, ds in parts.items()}
        features = dict(next(iter(parts.values())).features)
        return tables, features, files


class ParquetSource(TableSource):
    """A parquet file, or a folder of them, with an image column (see :class:`TableSource`).

    In a folder the split of each file comes from its name (``train-00000-of-00002.parquet``,
    ``test.parquet``) or a folder above it (``data/validation/part-0.parquet``); a lone file,
    or a folder whose files name no split, is all train. Column types (Image, ClassLabel
    names) come from the ``huggingface`` metadata that ``datasets`` writes, when present.
    """

    kind = "parquet dataset"

    def _known_splits(self, tables: dict) -> dict[str, str]:
        if list(tables) == [""]:
            warn_unread_split_words(self._files[""], self.root, f"{self.kind} {str(self.root)!r}")
        return super()._known_splits(tables)

    def _read(self):
        datasets = import_extra("datasets", "datasets", "Reading images from parquet")
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = _parquet_files(self.root)
        by_split: dict[str, list[Path]] = {}
        for file in files:
            by_split.setdefault(_split_of(file, self.root), []).append(file)
        if len(by_split) > 1 and "" in by_split:
            raise SourceError(
                f"The parquet files {', '.join(str(f) for f in by_split[''][:3])} in "
                f"{str(self.root)!r} name no split while others do; name each file or folder "
                f"after its split ({', '.join(sorted(SPLIT_ALIASES))})."
            )
        try:
            read = {f: pq.read_table(f, memory_map=True) for f in files}
            tables = {
                name: pa.concat_tables([read[f] for f in group]) for name, group in by_split.items()
            }
        except (pa.ArrowInvalid, OSError) as err:
            raise SourceError(f"Cannot read parquet {str(self.root)!r}: {err}") from None
        self._part_features = {
            _under(f, self.root): datasets.Features.from_arrow_schema(t.schema)
            for f, t in read.items()
        }
        first = next(iter(tables.values()))
        features = dict(datasets.Features.from_arrow_schema(first.schema))
        return tables, features, by_split


def _empty_saved_splits(root: Path) -> list[str]:
    """The splits (``"."``: a lone Dataset) that ``save_to_disk`` wrote with no data file, as
    it does for a split of no rows: ``load_from_disk`` then fails with an IndexError."""
    empty = []
    for state in sorted([root / "state.json", *root.glob("*/state.json")]):
        try:
            files = json.loads(state.read_text()).get("_data_files")
        except (OSError, ValueError, AttributeError):
            continue
        if files == []:
            empty.append(state.parent.name if state.parent != root else ".")
    return empty


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = files_under(path, ".parquet") if path.is_dir() else []
    if not files:
        what = "is not a folder" if not path.is_dir() else "has no .parquet files"
        raise SourceError(f"Parquet dataset {str(path)!r} {what}.")
    return files


# A split word in a name: an alias, alone or with a number (``val2017``).
_SPLIT_WORD = re.compile(rf"({'|'.join(sorted(SPLIT_ALIASES, key=len, reverse=True))})\d*")
# Words that look like a split but are none featpipe reads (only ever warned about).
_SPLIT_LIKE = {
    *("eval", "evaluation", "holdout", "heldout", "trn", "tst", "minival", "trainval"),
    *("testdev", "trainset", "valset", "testset", "devset"),
}


def _name_tokens(part: str) -> list[str]:
    return re.split(r"[-_.]", part.lower())


def _split_of(file: Path, root: Path) -> str:
    """The split a file's name names (``train-0000-of-0001``, ``imagenet-validation-000.tar``,
    ``test/part.parquet``), as written, or "": the split word among the name's tokens (split
    at - _ .), else among those of the nearest folder above it that has one."""
    parts = file.relative_to(root).parts if file != root else (file.name,)
    for part in reversed(parts):
        found: dict[str, str] = {}  # featpipe split: the word naming it
        for token in _name_tokens(part):
            word = _SPLIT_WORD.fullmatch(token)
            if word:
                found.setdefault(SPLIT_ALIASES[word.group(1)], word.group(1))
        if len(found) > 1:
            raise SourceError(
                f"{str(file)!r}: {part!r} names two splits ({', '.join(found.values())}), so "
                "featpipe cannot tell which one it holds. Rename it to name one "
                f"({', '.join(sorted(SPLIT_ALIASES))}), or, for WebDataset shards, give each "
                "sample its split with ?split=json:KEY."
            )
        if found:
            return next(iter(found.values()))
    return ""


def warn_unread_split_words(files: list[Path], root: Path, where: str) -> None:
    """Warn when files that name no split differ by split-like words (``eval``, ``trn``,
    ``trainval``): they may hold splits that are all read as train."""
    tokens = [
        {t.rstrip("0123456789") for part in f.relative_to(root).parts for t in _name_tokens(part)}
        if f != root
        else set()
        for f in files
    ]
    varying = set().union(*tokens) - set.intersection(*tokens) if tokens else set()
    words = sorted(varying & _SPLIT_LIKE)
    if words:
        warnings.warn(
            f"{where}: file names differ by {', '.join(map(repr, words))}, which look like "
            f"split names but are none featpipe reads ({', '.join(sorted(SPLIT_ALIASES))}), so "
            "every file is read as train. If they hold splits, rename the files or folders after "
            "their split (e.g. data-validation-000000.tar), or, for WebDataset shards, give each "
            "sample its split with ?split=json:KEY.",
            UserWarning,
            stacklevel=4,
        )


def _unlabelled(value: object) -> bool:
    """Whether a label cell stands for no label: a missing value, or a negative integer (-1
    in unlabelled test splits)."""
    return is_missing_label(value) or (isinstance(value, int) and value < 0)


def _split_order(name: str) -> int:
    return SPLIT_CODES[split_alias(name)]


def _is_image(feature: object) -> bool:
    return type(feature).__name__ == "Image"


def _is_class_label(feature: object) -> bool:
    return type(feature).__name__ == "ClassLabel"


def _check_same_class_names(features: dict[str, dict], column: str, root: Path) -> None:
    """Raise SourceError when two parts of a dataset (``features``: {file or split: its
    columns' features}) name the classes of the ClassLabel ``column`` differently: every
    part's labels are read with one part's names, so label 0 of another could be another
    class (two splits each encoded with class_encode_column on its own values)."""
    named = [
        (part, list(f[column].names))
        for part, f in features.items()
        if _is_class_label(f.get(column))
    ]
    for (first, names), (part, other) in itertools.pairwise(named):
        if names != other:
            pairs = enumerate(zip(names, other, strict=False))  # the first label they differ on
            at = next((i for i, (a, b) in pairs if a != b), min(len(names), len(other)))
            said = [n[at] if at < len(n) else "no class" for n in (names, other)]
            raise SourceError(
                f"{str(root)!r}: the ClassLabel column {column!r} names its classes one way in "
                f"{first} and another in {part} (label {at} is {said[0]!r} in one, {said[1]!r} "
                "in the other), so one integer would be two classes. Encode every split with "
                "the same class names (cast_column or class_encode_column on the whole "
                "DatasetDict) and save them again."
            )


def _pick_column(given, role, columns, features, typed, names, path) -> str:
    """The column named ``given``, else the one whose feature is of the role's type, else
    the first present of ``names``."""
    if given is not None:
        if given not in columns:
            raise SourceError(
                f"{str(path)!r} has no column {given!r}.{did_you_mean(given, columns)} "
                f"Columns: {', '.join(columns)}."
            )
        return given
    candidates = [c for c in columns if typed(features.get(c))]
    if len(candidates) > 1:
        raise SourceError(
            f"{str(path)!r} has several {role} columns ({', '.join(candidates)}); choose one "
            f"with ?{role}=COLUMN, e.g. ?{role}={candidates[0]}."
        )
    candidates = candidates or [c for c in names if c in columns][:1]
    if not candidates:
        raise SourceError(
            f"No {role} column found in {str(path)!r} (columns: {', '.join(columns)}); name it "
            f"with ?{role}=COLUMN."
        )
    return candidates[0]


def _stat(files: list[Path], root: Path) -> bytes:
    """The files' paths under ``root`` (so that spelling ``root`` relative or absolute, or
    moving it, keeps the key, as for file sources), sizes and mtimes, digested."""
    h = hashlib.sha256()
    for file in files:
        st = file.stat()
        name = _under(file, root).encode("utf-8", "surrogateescape")
        h.update(name + struct.pack("<qq", st.st_size, st.st_mtime_ns))
    return h.digest()


def _under(file: Path, root: Path) -> str:
    """``file``'s path under the folder ``root`` (or ``root`` itself, a file), else its real
    path: datasets may give its cache files as absolute or resolved paths."""
    top = root if root.is_dir() else root.parent
    for resolve in (os.path.abspath, os.path.realpath):
        try:
            return Path(resolve(file)).relative_to(resolve(top)).as_posix()
        except ValueError:
            continue
    return os.path.realpath(file)
