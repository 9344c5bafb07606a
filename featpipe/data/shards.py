"""``wds:SHARDS``: WebDataset tar shards, each sample read by its row index.

A WebDataset keeps an image set in plain tar files (shards) in which the files of one sample lie
next to each other and share a key: ``n01440764_10026.jpg``, ``n01440764_10026.cls``,
``n01440764_10026.json``. The ``webdataset`` library streams them in order; extraction reads
rows by index (any chunk, on any rank, resumed anywhere). So each shard is indexed once, when the
source is opened: one pass over its tar headers records where each sample's image lies (its bytes
are skipped; only the small label members are read), and a row is then one read at that offset.
webdataset supplies the conventions, so that shards read here as they do there: shard lists with
braces and ``::``, how a member's name splits into key and extension, which members are metadata.
(``wids``, webdataset's indexed reader, is now a separate package; it copies even local shards
into a cache folder and needs each shard's sample count in advance. An index of offsets is all
that reading by row needs.)

Shards must be uncompressed ``.tar`` files: a gzipped tar cannot be read at an offset.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import re
import struct
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from featpipe.data.arrays import check_label_max, encode_labels
from featpipe.data.files import files_under, unlisted
from featpipe.data.folder import IMAGE_EXTENSIONS
from featpipe.data.images import decode_rgb, read_error
from featpipe.data.source import SPLIT_ALIASES, SPLIT_CODES, ImageSource, is_missing_label
from featpipe.data.splits import assign_splits, require_train
from featpipe.data.tables import _split_of, warn_unread_split_words
from featpipe.device import available_cores
from featpipe.distributed.progress import progress_bar
from featpipe.errors import ConfigError, ImageReadError, SourceError, did_you_mean
from featpipe.extras import import_extra
from featpipe.words import agrees, counted, listed

# Image members tried in this order when ``image`` is not given (webdataset's "jpg;png" rule).
IMAGE_MEMBERS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
# Metadata members that webdataset's tar reader skips (``__index__``, ``__meta__/...``).
_META = re.compile(r"__[^/]*__($|/)")
_GLOB = re.compile(r"[*?\[]")
_PROGRESS_MIN_SHARDS = 64  # indexing fewer shards is quick enough to do silently
_POOL_MIN_SHARDS = 8  # fewer are indexed in this process
_MAX_LISTED = 5


@dataclass(frozen=True)
class Field:
    """Where a sample keeps a label or split: a member's text (``cls``) or a json key."""

    member: str  # the member's extension: "cls", "txt", "json", ...
    key: str | None = None  # the key inside the json member

    @classmethod
    def parse(cls, text: str, role: str) -> Field:
        """``cls``, ``txt``, ... (a member holding the value as text) or ``json:KEY``."""
        member, colon, key = str(text).strip().lower().lstrip(".").partition(":")
        if member == "json" and not (colon and key):
            raise ConfigError(
                f"{role}={text!r} names the json member but no key in it: write {role}=json:KEY, "
                f"e.g. {role}=json:{role}."
            )
        if colon and member != "json":
            raise ConfigError(
                f"Cannot read {role}={text!r}: write a member extension ({role}=cls) or a key of "
                f"the json member ({role}=json:{role})."
            )
        if not member or member in IMAGE_MEMBERS:
            raise ConfigError(
                f"{role}={text!r} cannot hold a {role}: name a text member (cls, txt) or a key of "
                f"the json member, e.g. {role}=json:{role}."
            )
        return cls("json", text.strip().partition(":")[2]) if key else cls(member)

    def __str__(self) -> str:
        return f"json:{self.key}" if self.key else self.member


# What is looked for when ``label`` / ``split`` are not given: the first one any sample has.
DEFAULT_LABELS = (Field("cls"), Field("json", "label"))
DEFAULT_SPLITS = (Field("json", "split"),)


@dataclass
class _ShardIndex:
    """One shard's samples in tar order: keys, where each image lies, the fields' values."""

    keys: list[str]
    offsets: np.ndarray  # int64 byte offset of each sample's image in the tar
    lengths: np.ndarray  # int64 byte length of each sample's image
    values: dict[Field, list]  # field: each sample's value, None where it has none


class WebDatasetSource(ImageSource):
    """Samples of WebDataset tar shards, in shard order and then tar order.

    ``shards``: a pattern with braces (``/data/shards-{000000..000099}.tar``), a glob
    (``/data/*.tar``), a folder (every ``.tar`` under it, sorted), a list of them, or several
    joined with ``::``. ``image``: the image member's extensions in order of preference (default
    jpg, jpeg, png, bmp, gif, tif, tiff, webp: the first a sample has). ``label``: ``cls`` (a
    text member holding an integer or a class name) or ``json:KEY``; by default ``cls``, else
    ``json:label``. Integer labels give classes "0".."max", text labels their sorted values.
    ``split``: the field holding train/val/test (``json:split`` by default, when samples have
    it); otherwise shards named after a split (``train-000000.tar``, ``val/000.tar``) give it,
    and a source without splits is split by the fractions, seeded and stratified.

    Ids are the sample keys, which WebDataset writers make unique; when two shards repeat a key,
    every id is ``<shard path under the shards' folder, without .tar>/<key>``.
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        *,
        image: str | Sequence[str] | None = None,
        label: str | None = None,
        split: str | None = None,
        val_fraction: float = 0.0,
        test_fraction: float = 0.0,
        seed: int = 0,
    ):
        self.spec = shards if isinstance(shards, str | Path) else "::".join(map(str, shards))
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.image_members = _image_members(image)
        label_given = None if label is None else Field.parse(label, "label")
        split_given = None if split is None else Field.parse(split, "split")
        self.shards = shard_paths(self.spec)
        if len({p.is_absolute() for p in self.shards}) > 1:  # commonpath cannot mix them
            self.shards = [p.absolute() for p in self.shards]
        self.root = Path(os.path.commonpath([str(p.parent) for p in self.shards]))

        fields = (
            *((label_given,) if label_given else DEFAULT_LABELS),
            *((split_given,) if split_given else DEFAULT_SPLITS),
        )
        found = self._index(fields)
        self._sizes = [len(shard.keys) for shard in found]
        if not sum(self._sizes):
            raise SourceError(f"The shards {self._where()} hold no samples.")
        self._shard_of = np.repeat(np.arange(len(self.shards), dtype=np.int32), self._sizes)
        self._offsets = np.concatenate([shard.offsets for shard in found])
        self._lengths = np.concatenate([shard.lengths for shard in found])
        self.ids = self._ids([key for shard in found for key in shard.keys])
        values = {f: [v for shard in found for v in shard.values[f]] for f in fields}

        self.label_field = label_given or _first_present(DEFAULT_LABELS, values)
        if self.label_field is None:
            raise SourceError(
                f"No sample of the shards {self._where()} has a label: no .cls member and no "
                "'label' key in a .json member. Name the field with ?label=EXT (a text member) "
                "or ?label=json:KEY."
            )
        labels = self._complete(self.label_field, values[self.label_field])
        self._check_labelled(labels)
        self.classes, self.labels = _encode(labels, self.label_field, self._where())
        self.split_field = split_given or _first_present(DEFAULT_SPLITS, values)
        given = self._given_splits(values.get(self.split_field))
        self.splits = assign_splits(
            self.labels,
            given,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            origin=f"the shards {self._where()}",
            classes=self.classes,
            ids=self.ids,
        )

    def _index(self, fields: tuple[Field, ...]) -> list[_ShardIndex]:
        """Each shard's index, in shard order; many shards are indexed by a pool of processes
        (parsing tar headers is Python work: one core reads about 6,000 samples/s)."""
        cores = min(available_cores(), len(self.shards))
        scan = functools.partial(_scan, image_members=self.image_members, fields=fields)
        with (
            progress_bar(
                len(self.shards),
                desc="indexing shards",
                unit="shard",
                enabled=len(self.shards) >= _PROGRESS_MIN_SHARDS,
            ) as bar,
            contextlib.ExitStack() as stack,
        ):
            mapper = map
            if len(self.shards) >= _POOL_MIN_SHARDS and cores > 1:
                mapper = stack.enter_context(ProcessPoolExecutor(cores)).map
            found = []
            for index in mapper(scan, self.shards):
                found.append(index)
                bar.update()
        return found

    def _ids(self, keys: list[str]) -> list[str]:
        if len(set(keys)) == len(keys):
            return keys
        # Keys repeat across shards (each shard counted from 0): qualify them by shard.
        names = [p.relative_to(self.root).as_posix()[: -len(".tar")] for p in self.shards]
        return [f"{names[s]}/{key}" for s, key in zip(self._shard_of, keys, strict=True)]

    def _complete(self, f: Field, values: list) -> list[int | str]:
        """``values``, checked: every sample has an integer or a text value."""
        for row, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, int | str):
                found = "has none" if value is None else f"is {value!r}"
                raise SourceError(
                    f"Sample {self.ids[row]!r} of shard {str(self.shards[self._shard_of[row]])!r}:"
                    f" its {f} {found}; featpipe needs an integer or a text value in every sample."
                )
        return values

    def _check_labelled(self, labels: list[int | str]) -> None:
        """A negative integer label marks a sample without one, as in unlabelled test sets."""
        row = next((r for r, v in enumerate(labels) if isinstance(v, int) and v < 0), None)
        if row is not None:
            raise SourceError(
                f"Sample {self.ids[row]!r} of shard {str(self.shards[self._shard_of[row]])!r}: "
                f"its {self.label_field} is {labels[row]}, which marks a sample without a label "
                "(as unlabelled test sets do). Label such samples, or leave them out."
            )

    def _given_splits(self, values: list | None) -> np.ndarray | None:
        """Split codes from the split field, else from the shards' names, else None."""
        if values is not None:
            names = [str(v).lower() for v in self._complete(self.split_field, values)]
            unknown = sorted(set(names) - set(SPLIT_ALIASES))
            if unknown:
                raise SourceError(
                    f"The {self.split_field} of the shards {self._where()} holds unknown "
                    f"{agrees(len(unknown), 'split', 'splits')} "
                    f"{', '.join(map(repr, unknown[:_MAX_LISTED]))}."
                    f"{did_you_mean(unknown[0], SPLIT_ALIASES)} "
                    f"Valid: {', '.join(sorted(SPLIT_ALIASES))}."
                )
            given = np.array([SPLIT_CODES[SPLIT_ALIASES[n]] for n in names], dtype=np.uint8)
        else:
            named = [_split_of(p, self.root) for p in self.shards]
            if not any(named):
                warn_unread_split_words(self.shards, self.root, f"The shards {self._where()}")
                return None
            if not all(named):
                unnamed = [str(p) for p, n in zip(self.shards, named, strict=True) if not n]
                raise SourceError(
                    f"The shards {', '.join(unnamed[:3])} name no split while others do; name "
                    "each shard or its folder after its split "
                    f"({', '.join(sorted(SPLIT_ALIASES))}), or give each sample one with "
                    "?split=json:KEY."
                )
            codes = [SPLIT_CODES[SPLIT_ALIASES[n]] for n in named]
            given = np.repeat(np.array(codes, dtype=np.uint8), self._sizes)
        require_train(
            given,
            f"the shards {self._where()}",
            f"Give some samples the train split (in their {self.split_field or 'shard names'}).",
        )
        return given

    def _where(self) -> str:
        return repr(str(self.spec))

    # -- the ImageSource contract --------------------------------------------------------------
    def shard_starts(self) -> list[int]:
        """The first row of each shard, in row order (shards without samples add none)."""
        starts = np.cumsum([0, *self._sizes[:-1]])
        return sorted({int(s) for s, n in zip(starts, self._sizes, strict=True) if n})

    def _name(self, index: int) -> str:
        return f"{self.shards[self._shard_of[index]]} [{self.ids[index]}]"

    def read_bytes(self, index: int) -> bytes:
        shard = self.shards[self._shard_of[index]]
        offset, length = int(self._offsets[index]), int(self._lengths[index])
        try:
            with open(shard, "rb") as f:
                data = os.pread(f.fileno(), length, offset)
        except OSError as err:
            raise read_error(self._name(index), err) from err
        if len(data) != length:
            raise ImageReadError(
                f"Cannot read image {self._name(index)!r}: the shard is shorter than when it was "
                "indexed (truncated or rewritten). Open the source again.",
                path=self._name(index),
                reason="truncated shard",
            )
        return data

    def load(self, index: int) -> Image.Image:
        return decode_rgb(self.read_bytes(index), self._name(index))

    def _fingerprint_parts(self, content: bool) -> Iterator[bytes]:
        first = 0
        for shard, size in zip(self.shards, self._sizes, strict=True):
            rows = range(first, first + size)
            first += size
            if content:
                yield from _digests(shard, self._offsets[rows], self._lengths[rows])
                continue
            stat = _stat(shard, self.root)
            for row in rows:
                yield stat + struct.pack("<qq", self._offsets[row], self._lengths[row])

    def describe(self) -> dict:
        return {
            "kind": type(self).__name__,
            "root": str(self.root.resolve()),
            "shards": len(self.shards),
            "spec": str(self.spec),
            "image": list(self.image_members),
            "label": str(self.label_field),
            "split": None if self.split_field is None else str(self.split_field),
            "images": len(self),
            "classes": len(self.classes),
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
        }


def shard_paths(spec: str | Path) -> list[Path]:
    """The shard files of ``spec``: braces and ``::`` expanded as webdataset does, then each
    part a folder (its ``.tar`` files, sorted), a glob, or a file. Each must be a ``.tar``."""
    import_extra("webdataset", "wds", "Reading WebDataset shards")
    from webdataset.shardlists import expand_urls

    paths: list[Path] = []
    missing: list[str] = []
    for part in expand_urls(str(spec)):
        if "://" in part or part.startswith("pipe:"):
            raise ConfigError(
                f"Shard {part!r} is not a local file: featpipe reads shards by index, at offsets. "
                "Copy them to a local or mounted disk and give that path."
            )
        path = Path(part).expanduser()
        if path.is_dir():
            found = files_under(path, ".tar")
            if not found:
                raise SourceError(f"The folder {part!r} holds no .tar shards.")
            paths += found
        elif _GLOB.search(part) and not path.exists():
            found = _glob(str(path))  # ~ expanded: no shell expands it after wds:
            if not found:
                raise SourceError(f"No shards match {part!r}.")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            missing.append(part)
    if missing:
        names = listed(map(repr, missing), _MAX_LISTED, total=len(missing))
        raise SourceError(
            f"{len(missing)} of the {len(missing) + len(paths)} shards of {str(spec)!r} do not "
            f"exist: {names}. Check the pattern: ten shards are "
            "wds:/data/shards-{000000..000009}.tar, for example."
        )
    for path in paths:
        _check_extension(path)
    seen: set[Path] = set()
    for path in paths:
        if path.resolve() in seen:
            raise SourceError(f"Shard {str(path)!r} is listed twice in {str(spec)!r}.")
        seen.add(path.resolve())
    return paths


def _glob(pattern: str) -> list[Path]:
    """``glob.glob(pattern, recursive=True)``, sorted, refusing a folder the pattern lists but
    cannot: glob skips it without a word, leaving its shards out."""
    _check_listable(pattern)
    return sorted(Path(p) for p in glob.glob(pattern, recursive=True))


def _check_listable(pattern: str) -> None:
    """Refuse (``unlisted``) a folder that glob would list to match ``pattern``: the folders
    matching its head when its last part is a pattern, and those ``**`` reaches."""
    head, tail = os.path.split(pattern)
    if head != pattern and _GLOB.search(head):
        _check_listable(head)
    if not _GLOB.search(tail):
        return  # a plain name is looked up, not listed
    folders = glob.glob(head, recursive=True) if head else ["."]
    if tail == "**":
        folders += glob.glob(pattern, recursive=True)
    for folder in folders:
        if os.path.isdir(folder):
            try:
                os.scandir(folder).close()
            except OSError as err:
                unlisted(err)


def _check_extension(path: Path) -> None:
    name = path.name.lower()
    if name.endswith(".tar"):
        return
    if name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")):
        raise SourceError(
            f"Shard {str(path)!r} is compressed: featpipe reads samples at their offsets in the "
            "tar, which a compressed stream does not allow. Decompress it (e.g. gunzip) first."
        )
    raise SourceError(
        f"Shard {str(path)!r} has an unknown extension {path.suffix!r}: WebDataset shards are "
        "uncompressed .tar files."
    )


def _scan(shard: Path, image_members: tuple[str, ...], fields: tuple[Field, ...]) -> _ShardIndex:
    """Index one shard. A sample is a run of consecutive members that share a key, as
    webdataset groups them; its image is the first of ``image_members`` it has, and the
    members that ``fields`` name are read for their values."""
    from webdataset.tariterators import base_plus_ext

    texts = {f.member for f in fields}
    keys: list[str] = []
    members: list[dict[str, tuple[int, int]]] = []  # per sample, ext: (offset, size)
    read: list[dict[str, bytes]] = []  # per sample, ext: bytes of the members in ``texts``
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if not member.isreg() or _META.match(member.name):
                    continue
                key, ext = base_plus_ext(member.name)
                if key is None:  # no extension: not part of a sample (webdataset skips it too)
                    continue
                ext = ext.lower()
                if not keys or keys[-1] != key:
                    keys.append(key)
                    members.append({})
                    read.append({})
                if ext in members[-1]:
                    raise SourceError(
                        f"Shard {str(shard)!r} has two members {member.name!r} in one sample."
                    )
                members[-1][ext] = (member.offset_data, member.size)
                if ext in texts:
                    read[-1][ext] = tar.extractfile(member).read()
            _check_end(tar, shard, len(keys))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise SourceError(
            f"Cannot read shard {str(shard)!r} as an uncompressed tar file: {err}. Check that "
            "it is complete (not truncated) and not compressed."
        ) from None
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise SourceError(
            f"Shard {str(shard)!r} has the key {twice!r} in two places: the files of a sample "
            "must be next to each other (write the tar in sorted order, e.g. with webdataset's "
            "TarWriter)."
        )
    where = [
        _image_of(shard, key, found, image_members)
        for key, found in zip(keys, members, strict=True)
    ]
    values = {
        f: [_field_value(f, r, shard, k) for k, r in zip(keys, read, strict=True)] for f in fields
    }
    return _ShardIndex(
        keys,
        np.array([w[0] for w in where], dtype=np.int64),
        np.array([w[1] for w in where], dtype=np.int64),
        values,
    )


def _check_end(tar: tarfile.TarFile, shard: Path, samples: int) -> None:
    """tarfile stops without a word where a cut-off shard ends; a whole one ends in two zero
    blocks after its last member."""
    tar.fileobj.seek(tar.offset)
    end = tar.fileobj.read(2 * tarfile.BLOCKSIZE)
    if len(end) < 2 * tarfile.BLOCKSIZE or end.strip(b"\0"):
        raise SourceError(
            f"Shard {str(shard)!r} is truncated: it stops after {counted(samples, 'sample')} "
            "without the "
            "end-of-archive blocks of a complete tar file. Copy or write it again."
        )


def _image_of(
    shard: Path, key: str, members: dict[str, tuple[int, int]], image_members: tuple[str, ...]
) -> tuple[int, int]:
    """(offset, size) of the sample's image member."""
    for ext in image_members:
        if ext in members:
            return members[ext]
    raise SourceError(
        f"Sample {key!r} of shard {str(shard)!r} has no image: its members are "
        f"{', '.join('.' + e for e in members)}, and featpipe looks for "
        f"{', '.join('.' + e for e in image_members)}. Name the image member with ?image=EXT "
        "(an extension Pillow decodes), or remove the sample."
    )


def _field_value(f: Field, read: dict[str, bytes], shard: Path, key: str) -> object | None:
    """The value of field ``f`` in a sample's members, or None when it has none. A text
    member's value is an integer when it is one (``.cls`` holds "3"), else its text."""
    data = read.get(f.member)
    if data is None:
        return None
    where = f"member {key}.{f.member} of shard {str(shard)!r}"
    try:
        text = data.decode("utf-8-sig")  # a BOM (Windows Notepad) is no part of the label
        if f.key is None:
            text = text.strip()
            return int(text) if re.fullmatch(r"[+-]?\d+", text) else text or None
        loaded = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SourceError(f"Cannot read {where}: {err}.") from None
    if not isinstance(loaded, dict):
        raise SourceError(f"{where} holds {type(loaded).__name__}, not a json object.")
    value = loaded.get(f.key)
    return None if is_missing_label(value) else value  # "" or NaN is no label


def _first_present(fields: tuple[Field, ...], values: dict[Field, list]) -> Field | None:
    """The first of ``fields`` that any sample has (then every sample must have it: a field
    missing from the first sample only must not drop every sample's split)."""
    return next((f for f in fields if any(v is not None for v in values[f])), None)


def _image_members(image: str | Sequence[str] | None) -> tuple[str, ...]:
    if image is None:
        return IMAGE_MEMBERS
    names = image.split(",") if isinstance(image, str) else list(image)
    members = tuple(n.strip().lower().lstrip(".") for n in names if n.strip())
    decodable = {
        ext.lstrip(".") for ext, kind in Image.registered_extensions().items() if kind in Image.OPEN
    }
    unknown = [m for m in members if m not in decodable]
    if unknown or not members:
        raise ConfigError(
            f"Unknown image {agrees(len(unknown or [image]), 'extension', 'extensions')} "
            f"{', '.join(map(repr, unknown or [image]))} in "
            f"image={image!r}.{did_you_mean(unknown[0], decodable) if unknown else ''} Name the "
            f"image member by an extension Pillow decodes, e.g. image=jpg or image=png,webp "
            "(the first a sample has is used)."
        )
    return members


def _encode(values: list[int | str], f: Field, where: str) -> tuple[list[str], np.ndarray]:
    kinds = {type(v) for v in values}
    if len(kinds) > 1:
        number = next(v for v in values if isinstance(v, int))
        text = next(v for v in values if isinstance(v, str))
        raise SourceError(
            f"The {f} labels of the shards {where} mix integers and class names (e.g. {number!r} "
            f"and {text!r}); use one kind throughout."
        )
    kind = np.int64 if kinds == {int} else str
    origin = f"The {f} labels of the shards {where}"
    if kind is np.int64:  # before int64 holds them
        check_label_max(max(values), origin)
    classes, labels = encode_labels(np.asarray(values, dtype=kind), None, len(values), origin)
    present = [classes[c] for c in np.unique(labels)]  # integer labels make empty classes
    if len(present) < 2:
        raise SourceError(
            f"A classifier needs at least two classes; the {f} labels of the shards {where} "
            f"give only {present}."
        )
    return classes, labels


def _stat(shard: Path, root: Path) -> bytes:
    """The shard's path under ``root`` (``root`` spelt relative or absolute, or moved, gives
    the same key, as the relative ids of file sources do), size and mtime, digested."""
    name = shard.relative_to(root).as_posix().encode("utf-8", "surrogateescape")
    try:
        st = os.stat(shard)
    except OSError as err:
        return name + f":unreadable:{err.errno}".encode()
    return hashlib.sha256(name + struct.pack("<qq", st.st_size, st.st_mtime_ns)).digest()


def _digests(shard: Path, offsets: np.ndarray, lengths: np.ndarray) -> Iterator[bytes]:
    """sha256 of each image's bytes in one shard (a part per row, as for unreadable files)."""
    done = 0
    try:
        with open(shard, "rb") as f:
            for offset, length in zip(offsets, lengths, strict=True):
                yield hashlib.sha256(os.pread(f.fileno(), int(length), int(offset))).digest()
                done += 1
    except OSError as err:
        yield from [f"unreadable:{err.errno}".encode()] * (len(offsets) - done)
