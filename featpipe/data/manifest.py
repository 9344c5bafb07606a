"""``CSVSource``: images listed in a CSV manifest with columns ``path,label[,split]``."""

from __future__ import annotations

import csv
import os
import unicodedata
from pathlib import Path

import numpy as np

from featpipe.data.files import FileSource, is_case_only, repeated_file
from featpipe.data.source import (
    SPLIT_ALIASES,
    SPLIT_CODES,
    SPLIT_NAMES,
    check_class_names,
    split_alias,
)
from featpipe.data.splits import assign_splits, require_train, warn_unread_split_column
from featpipe.errors import SourceError, did_you_mean
from featpipe.words import counted, listed

_REQUIRED = ("path", "label")
_OTHER_DELIMITERS = (";", "\t", "|")  # what a header read as one field may be split by
_MAX_LISTED = 5  # how many offending lines an error message quotes


class CSVSource(FileSource):
    """Rows of a CSV manifest with a header naming ``path``, ``label`` and optionally ``split``.

    Paths are relative to the CSV's folder (absolute paths also work) and are the sample ids
    as written; labels are class names (classes are their sorted unique values); ``split``
    values are train/val/test. Without a split column the rows are split by the fractions;
    with one, val/test are carved out of train by their fractions only when no row names them.
    Other columns are ignored.
    """

    def __init__(
        self,
        csv_path: str | Path,
        *,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        seed: int = 0,
    ):
        self.csv_path = Path(csv_path)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        rows, has_split = self._read()
        base = self.csv_path.parent
        self.ids = [row["path"] for row in rows]
        self.files = [base / row["path"] for row in rows]  # an absolute path replaces base
        self._check_files(rows)
        self._check_once(rows)
        self.classes = sorted({row["label"] for row in rows})
        check_class_names(self.classes, f"The label column of {str(self.csv_path)!r}")
        if len(self.classes) < 2:
            raise SourceError(
                f"A classifier needs at least two classes; found only {self.classes[0]!r} in "
                f"the label column of {str(self.csv_path)!r}."
            )
        class_index = {name: i for i, name in enumerate(self.classes)}
        self.labels = np.array([class_index[row["label"]] for row in rows], dtype=np.int64)
        given = None
        if not has_split:
            for column in (c for c in rows[0] if c not in (*_REQUIRED, "line")):
                warn_unread_split_column(
                    column,
                    {"train": (row[column] for row in rows)},
                    f"CSV manifest {str(self.csv_path)!r}",
                    "If it holds the rows' splits, rename it to split.",
                )
        else:
            given = np.array([SPLIT_CODES[row["split"]] for row in rows], dtype=np.uint8)
            require_train(
                given,
                f"the split column of {str(self.csv_path)!r}",
                "Mark some rows train, or drop the split column to split the rows by "
                "--val-fraction / --test-fraction.",
            )
        self.splits = assign_splits(
            self.labels,
            given,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            origin=f"the split column of {str(self.csv_path)!r}",
            classes=self.classes,
            ids=self.ids,
        )

    def describe(self) -> dict:
        return {
            "kind": type(self).__name__,
            "csv": str(self.csv_path.resolve()),
            "images": len(self),
            "classes": len(self.classes),
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
        }

    def _read(self) -> tuple[list[dict], bool]:
        """Validated rows (line numbers under ``line``) and whether a split column exists."""
        where = str(self.csv_path)
        try:
            with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                header = [h.strip().lower() for h in next(reader, [])]
                self._check_header(header)
                rows = [
                    self._parse_row(values, header, reader.line_num)
                    for values in reader
                    if any(v.strip() for v in values)  # blank lines
                ]
        except OSError as err:
            raise SourceError(f"Cannot read CSV manifest {where!r}: {err}.") from err
        except (UnicodeDecodeError, csv.Error) as err:
            raise SourceError(
                f"CSV manifest {where!r} is not a valid UTF-8 CSV file: {err}."
            ) from err
        if not rows:
            raise SourceError(f"CSV manifest {where!r} lists no images.")
        return rows, "split" in header

    def _check_header(self, header: list[str]) -> None:
        where = str(self.csv_path)
        missing = [c for c in _REQUIRED if c not in header]
        if missing:
            hint = "".join(dict.fromkeys(did_you_mean(c, header) for c in missing))
            other = next((d for d in _OTHER_DELIMITERS if len(header) == 1 and d in header[0]), "")
            if other:
                hint = (
                    f" Its header is separated by {other!r}: featpipe reads comma-separated "
                    "manifests. Save it again with commas (e.g. pandas' to_csv)."
                )
            raise SourceError(
                f"CSV manifest {where!r} needs a header with columns path,label[,split]; "
                f"missing {', '.join(missing)} in header {header}.{hint}"
            )
        twice = sorted({c for c in (*_REQUIRED, "split") if header.count(c) > 1})
        if twice:
            raise SourceError(
                f"CSV manifest {where!r} has {counted(len(twice), 'column')} named twice in its "
                f"header "
                f"{header}: {', '.join(twice)}. featpipe cannot tell which one to read; rename "
                "or remove the other."
            )

    def _parse_row(self, values: list[str], header: list[str], line: int) -> dict:
        where = f"{self.csv_path}, line {line}"
        if len(values) != len(header):
            raise SourceError(
                f"{where}: expected {len(header)} fields ({','.join(header)}), got "
                f"{len(values)}: {values}. Quote fields that contain commas."
            )
        row = {name: value.strip() for name, value in zip(header, values, strict=True)}
        row["line"] = line
        for column in _REQUIRED:
            if not row[column]:
                raise SourceError(f"{where}: empty {column!r} field.")
        if "split" in row:
            split = split_alias(row["split"])  # the aliases split folders and shards take
            if split is None:
                others = ", ".join(sorted(set(SPLIT_ALIASES) - set(SPLIT_NAMES)))
                raise SourceError(
                    f"{where}: unknown split {row['split']!r}. Valid splits: "
                    f"{', '.join(SPLIT_NAMES)} (or {others}), in any case."
                )
            row["split"] = split
        row["path"] = Path(row["path"]).as_posix()
        return row

    def _check_once(self, rows: list[dict]) -> None:
        """Each image on one row, however its path is spelt (files.repeated_file)."""
        repeat = repeated_file(self.files)
        if repeat is None:
            return
        first, row = rows[repeat[0]], rows[repeat[1]]
        where = f"{self.csv_path}, line {row['line']}: path {row['path']!r}"
        if first["path"] == row["path"]:
            raise SourceError(
                f"{where} is already listed on line {first['line']}; each image may appear "
                "once. Remove one of the rows."
            )
        both = f"both are {repeat[2]!r}" if repeat[2] == repeat[3] else "hard links to one file"
        if is_case_only(repeat[2], repeat[3]):
            both = "their paths differ only in case, which this file system does not tell apart"
        raise SourceError(
            f"{where} is the same image as line {first['line']} ({first['path']!r}): {both}. "
            "Each image may appear once (twice, it can land in train and in "
            "test); remove one of the rows."
        )

    def _check_files(self, rows: list[dict]) -> None:
        missing = [
            (row, file) for row, file in zip(rows, self.files, strict=True) if not file.is_file()
        ]
        if missing:
            lines = (f"line {row['line']}: {str(file)!r}" for row, file in missing)
            names = listed(lines, _MAX_LISTED, sep="; ", total=len(missing))
            hint = ""
            if os.sep == "/" and any("\\" in row["path"] for row, _ in missing):
                hint = " Separate folders with '/': here '\\' is part of a file name."
            other = next((form for _, file in missing for form in _other_forms(file)), None)
            if other is not None:
                hint += (
                    f" {other[1]!r} exists, spelt in another Unicode form (macOS writes file "
                    "names decomposed): write the paths as the files are named, e.g. with "
                    f"unicodedata.normalize({other[0]!r}, path)."
                )
            case = next(
                filter(None, (_other_case(file) for _, file in missing[:_MAX_LISTED])), None
            )
            if case is not None:
                hint += (
                    f" {case!r} exists, its name spelt in another case: this file system tells "
                    "case apart (macOS's and Windows' do not); write the paths as the files are "
                    "named."
                )
            raise SourceError(
                f"CSV manifest {str(self.csv_path)!r} lists "
                f"{counted(len(missing), 'missing file')}: "
                f"{names}. Paths are relative to the CSV's folder; fix or remove those "
                f"rows.{hint}"
            )


def _other_forms(file: Path) -> list[tuple[str, str]]:
    """(Unicode form, path) of ``file`` spelt in the other forms that exist on disk: an é
    is one code point (NFC) or two (NFD), and file systems keep whichever they were given."""
    text = str(file)
    forms = [(form, unicodedata.normalize(form, text)) for form in ("NFC", "NFD")]
    return [(form, other) for form, other in forms if other != text and os.path.isfile(other)]


def _other_case(file: Path) -> str | None:
    """The file beside ``file`` whose name differs from its name only in case, if any: a
    manifest written where the file system does not tell case apart (macOS, Windows)."""
    try:
        names = os.listdir(file.parent)
    except OSError:
        return None
    name = file.name.casefold()
    return next(
        (str(file.parent / n) for n in sorted(names) if n != file.name and n.casefold() == name),
        None,
    )
