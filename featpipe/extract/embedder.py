"""``Embedder``: a scikit-learn transformer from images to frozen-backbone features, with an
optional per-image cache so that cross-validation never recomputes a feature."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin

from featpipe.atomic import replace_with
from featpipe.backbones import Backbone, LayerSpec, get_backbone
from featpipe.backbones.base import input_dtype
from featpipe.data.images import check_decode, load_rgb, to_rgb
from featpipe.device import on_device, resolve_device
from featpipe.errors import ConfigError, NonFiniteFeaturesError
from featpipe.extract.datapath import CPUDataPath
from featpipe.extract.inference import PRECISIONS, Inference
from featpipe.extract.lanes import lane_count, lanes_running
from featpipe.extract.loop import compute_identity, default_workers
from featpipe.store.reader import named_rows
from featpipe.store.schema import DTYPES
from featpipe.words import agrees, counted, listed

ImageLike = str | os.PathLike | Image.Image | np.ndarray

# A cache entry is a .npy of its row followed by a digest of those bytes: an entry is not
# synced, and a power cut can leave its bytes zeros under a valid header.
_DIGEST_SIZE = 16


# The digest is keyed by the model's architecture (``_architecture``): the cache key names the
# backbone's weights, not its modules without any, so a model changed under its name and
# weights (a pooling's output size) shares the folder, and its entries must not check. An
# entry written before the key does not check either: computed again once, as no probe of its
# width or values could tell whether it is this model's.


def _digest(data: bytes, architecture: str | None = None) -> bytes:
    key = b"" if architecture is None else bytes.fromhex(architecture)
    return hashlib.blake2b(data, digest_size=_DIGEST_SIZE, key=key).digest()


def _entry_bytes(feature: np.ndarray, architecture: str | None = None) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, feature)
    return buffer.getvalue() + _digest(buffer.getvalue(), architecture)


def _entry_row(data: bytes, architecture: str) -> np.ndarray | None:
    """The array an entry's bytes hold where their digest, keyed by ``architecture``, checks,
    else None (an entry of another architecture, or written before digests or their key: a
    cache is a cache, it is computed again)."""
    body, digest = data[:-_DIGEST_SIZE], data[-_DIGEST_SIZE:]
    if len(data) <= _DIGEST_SIZE or _digest(body, architecture) != digest:
        return None
    try:
        return np.lib.format.read_array(io.BytesIO(body), allow_pickle=False)
    except (ValueError, EOFError):  # not a .npy: a digest of bytes this cache never wrote
        return None


def _image_key(item: ImageLike) -> str:
    """Identity of one image: path + size + mtime for files, a hash of the pixels otherwise."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item).resolve()
        try:
            st = path.stat()
        except OSError as exc:
            raise ConfigError(f"Cannot read image {path}: {exc}") from exc
        text = f"file|{path}|{st.st_size}|{st.st_mtime_ns}"
    elif isinstance(item, Image.Image):
        pixels = hashlib.sha256(item.tobytes())
        # A palette image's bytes are indices: its palette and transparency key give the
        # colours (added only where there are any, so other images keep their keys).
        if item.palette is not None:
            pixels.update(item.palette.mode.encode() + bytes(item.palette.tobytes()))
        if "transparency" in item.info:
            pixels.update(repr(item.info["transparency"]).encode())
        text = f"pil|{item.mode}|{item.size}|{pixels.hexdigest()}"
    elif isinstance(item, np.ndarray):
        arr = np.ascontiguousarray(item)
        # RGBA arrays once lost their alpha instead of being composited on white: their
        # features cached then are not theirs, so they get keys of their own
        kind = "array-on-white" if arr.ndim == 3 and arr.shape[-1] == 4 else "array"
        text = f"{kind}|{arr.dtype}|{arr.shape}|{hashlib.sha256(arr.tobytes()).hexdigest()}"
    else:
        raise ConfigError(
            f"Embedder takes image paths, PIL images or uint8 arrays; got {type(item).__name__}."
        )
    return hashlib.sha256(text.encode()).hexdigest()


def _to_pil(item: ImageLike) -> Image.Image:
    if isinstance(item, (str, os.PathLike)):
        return load_rgb(item)
    if isinstance(item, Image.Image):
        return to_rgb(item)
    # The shapes ArraySource takes, read as it reads them (RGBA composited on white), so
    # that an array's features are a store's features of the same array.
    if item.ndim == 3 and item.shape[-1] == 1:
        item = item[..., 0]
    shape_ok = item.ndim == 2 or (item.ndim == 3 and item.shape[-1] in (3, 4))
    if item.dtype != np.uint8 or not shape_ok or 0 in item.shape:
        raise ConfigError(
            f"Image arrays must be uint8 (H, W) or (H, W, 1|3|4), channels last, at least "
            f"1x1; got {item.dtype} {item.shape}."
        )
    return to_rgb(Image.fromarray(item))


class _Items:
    """A list of images as the source a data path loads rows from: files keep their path,
    so that ``decode="fast"`` can decode a JPEG file at reduced scale as extraction does."""

    def __init__(self, items: Sequence[ImageLike]):
        self.items = items

    def load(self, index: int) -> Image.Image:
        return _to_pil(self.items[index])

    def path(self, index: int) -> str | None:
        item = self.items[index]
        return str(item) if isinstance(item, (str, os.PathLike)) else None


def _label(items: Sequence[ImageLike], i: int) -> ImageLike:
    """How messages name image ``i``: by its path, else by its row."""
    return items[i] if isinstance(items[i], (str, os.PathLike)) else f"row {i}"


def _one_image(X: str | os.PathLike | Image.Image) -> str:
    """How a message names one image given where a batch belongs."""
    if isinstance(X, Image.Image):
        return f"a PIL image of {X.width}x{X.height}"
    return f"the {type(X).__name__} {os.fspath(X)!r}"


def _as_items(X: Iterable[ImageLike] | np.ndarray) -> list[ImageLike]:
    """A batch of images as a list: a 4-D uint8 array (n, H, W, C) is split by rows."""
    if isinstance(X, (str, os.PathLike, Image.Image)):
        raise ConfigError(
            f"Embedder takes a sequence of images; got one image, {_one_image(X)}: wrap it in "
            f"a list, [{'image' if isinstance(X, Image.Image) else repr(X)}]."
        )
    # One image's array would be split by rows into H images of one row each (read as H gray
    # images of W x 3, or failing on each row): the first axis of an array is the images.
    one = isinstance(X, np.ndarray) and X.dtype.kind in "biuf"
    if one and (X.ndim == 2 or (X.ndim == 3 and X.shape[-1] in (3, 4))):
        raise ConfigError(
            f"Embedder got one array of shape {X.shape}, which reads as one image, but a batch's "
            "first axis is its images: pass [image] or image[None] for one image; for gray "
            "images of width 3 or 4, pass them as (N, H, W, 1)."
        )
    # One channels-first image (torch's layout) would be read as 1, 3 or 4 gray images.
    if one and X.ndim == 3 and X.shape[0] in (1, 3, 4) and X.shape[-1] not in (1, 3, 4):
        raise ConfigError(
            f"Embedder got one array of shape {X.shape}, which reads as one channels-first "
            "image, but a batch's first axis is its images and images are channels last: pass "
            "image.transpose(1, 2, 0)[None] for one image; for 1, 3 or 4 gray images, pass "
            "them as (N, H, W, 1)."
        )
    return list(X)


def _recorded_width(meta: Path) -> int | None:
    """The width a cache folder's meta.json records, or None where it records none (missing,
    damaged, not this cache's format): a miss, probed and written again like an entry."""
    try:
        dim = json.loads(meta.read_bytes()).get("dim")
    except (OSError, ValueError, AttributeError):  # missing, not JSON or UTF-8, not an object
        return None
    return dim if type(dim) is int and dim >= 1 else None


def _warn_unwritable(folder: Path, exc: OSError) -> None:
    warnings.warn(
        f"Embedder cache {folder} could not be written ({exc.strerror or exc}): the features "
        "are returned, but are not cached from here on in this call. Free space there, or "
        "pass cache_dir=None to compute without a cache.",
        stacklevel=4,
    )


def _architecture(model) -> str:
    """A hash of the model's modules as ``repr`` prints them (classes and settings, such as a
    pooling's output size), which the backbone's identity leaves out: it names the weights,
    not modules without any. Object addresses a module may print are left out, so that the
    hash is one in every process."""
    text = re.sub(r"0x[0-9a-fA-F]+", "0x", repr(model))
    return hashlib.sha256(text.encode()).hexdigest()  # 32 bytes: a blake2b key


class _OtherWidth(ConfigError):
    """A computed batch's width is not ``n_features_out_``: corrected once by ``transform``."""

    def __init__(self, width: int, message: str):
        super().__init__(message)
        self.width = width


class Embedder(TransformerMixin, BaseEstimator):
    """Images in, (n, D) float32 features of one backbone layer out, computed in batches with
    the backbone's own preprocessing by extraction's forward pass (eval mode, channels-last,
    bf16 or fp16 autocast on CUDA, fp32 on the CPU), so that they match a store's features.

    ``dtype`` is the dtype of the store they should match: ``"float16"`` rounds them as a
    float16 store holds them (still returned as float32, as the store's reads are), which a
    head trained on such a store needs to make the store's predictions.

    ``decode`` is extraction's ``--decode``: ``"fast"`` decodes JPEG files at reduced DCT
    scale, as a store extracted with ``--decode fast`` did (featpipe predict passes the
    decode of the head's store).

    With ``cache_dir`` each image's feature is stored under a key of (backbone identity,
    layer, image identity), its digest keyed by the model's architecture, so
    ``GridSearchCV`` over a pipeline starting with this transformer computes every image
    once. ``fit`` learns nothing; it records the output width, and ``transform`` fits again
    where ``set_params`` changed a parameter since.

    On a CPU device ``transform`` runs in ``n_jobs`` lanes, as extraction does
    (featpipe.extract.lanes): each decodes a batch and runs it on its share of the cores.
    None: one per core, at most 4; 1: one batch at a time on every core (fewer can be faster
    on a machine shared with other jobs). On CUDA batches run one at a time.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layer: str = "pooled",
        image_size: int | None = None,
        batch_size: int = 32,
        device: str = "auto",
        cache_dir: str | os.PathLike | None = None,
        n_jobs: int | None = None,
        decode: str = "exact",
        dtype: str = "float32",
    ):
        self.backbone = backbone
        self.layer = layer
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.cache_dir = cache_dir
        self.n_jobs = n_jobs
        self.decode = decode
        self.dtype = dtype

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Inputs are images (paths, PIL, uint8 arrays), not a 2-D numeric matrix.
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.requires_fit = False
        tags.target_tags.required = False
        return tags

    def _model(self) -> tuple[Backbone, Inference]:
        """(backbone, its forward pass), built once per instance (clones rebuild their own)."""
        built = getattr(self, "_built", None)
        params = (self.backbone, self.layer, self.image_size, self.device)
        if built is None or built[0] != params:
            bb = get_backbone(self.backbone, self.image_size)
            inference = Inference.of_layers(bb, [self.layer], resolve_device(self.device))
            built = (params, bb, inference, _architecture(bb.model))
            self._built = built
        return built[1], built[2]

    def _architecture(self) -> str:
        """The built model's architecture hash (see ``_architecture``)."""
        self._model()
        return self._built[3]

    def _compute(self) -> dict[str, str]:
        """How features are computed, as a store records it (its ``compute``): Pillow's
        decode, and the device's precision for the model's dtype."""
        bb, inference = self._model()
        return compute_identity(inference.device, "cpu", self.decode, input_dtype(bb.model)[1])

    def _cache_folder(self) -> Path | None:
        if self.cache_dir is None:
            return None
        key = {**self._model()[0].identity(), "layer": self.layer}
        # Features of another precision (autocast, a float64 or bfloat16 model) differ: never
        # in one cache. fp32 is left out of the key, so that caches made before it was
        # recorded stay valid.
        if (computed := self._compute()["precision"]) != "fp32":
            key["precision"] = computed
        if self.decode != "exact":  # other pixels; left out at exact, as for precision
            key["decode"] = self.decode
        ident = json.dumps(key, sort_keys=True)
        folder = Path(self.cache_dir) / hashlib.sha256(ident.encode()).hexdigest()[:24]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # computed without a cache, as when its entries cannot be written
            _warn_unwritable(folder, exc)
            return None
        return folder

    def fit(self, X=None, y=None) -> Embedder:
        """Nothing to learn: records the backbone identity, how it computes features (a
        store's ``compute``: Pillow's decode, the device's precision for the model's dtype)
        and the feature width (with a cache, its meta.json's: the first batch ``transform``
        computes corrects a stale one)."""
        self._check_params()
        self.backbone_identity_ = self._model()[0].identity()
        self.compute_ = self._compute()
        self.n_features_out_ = self._width()
        self._fitted_for = self._fit_inputs()
        return self

    def _check_params(self) -> None:
        if int(self.batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1; got {self.batch_size}.")
        if self.n_jobs is not None and int(self.n_jobs) < 1:
            raise ConfigError(
                f"n_jobs must be >= 1, or None for one lane per core; got {self.n_jobs}."
            )
        check_decode(self.decode)
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise ConfigError(
                f"dtype must be one of {', '.join(map(repr, DTYPES))}, the dtypes a store holds "
                f"its features in; got {self.dtype!r}. Give the dtype of the store to match."
            )

    def _output_params(self) -> tuple:
        """The parameters what ``fit`` records (identity, compute, width) depends on: the
        device and decode give ``compute_`` (precision, pixels)."""
        return (self.backbone, self.layer, self.image_size, self.device, self.decode)

    def _fit_inputs(self) -> tuple:
        """What ``fit`` records is of: the parameters, and the architecture of the model they
        build (a model's code can change under its name and weights, as when unpickled)."""
        return (*self._output_params(), self._architecture())

    def _fitted(self) -> None:
        """Fit again where ``set_params`` changed what fit records, or it never ran: it is
        of the parameters, not of any data (a width kept from before gave numpy's shape
        error)."""
        if getattr(self, "_fitted_for", None) != self._fit_inputs():
            self.fit()
        else:
            self._check_params()

    def _width(self) -> int:
        """Feature width, remembered in the cache folder so cached runs skip the probe pass."""
        folder = self._cache_folder()
        if folder and (dim := _recorded_width(folder / "meta.json")) is not None:
            return dim
        bb, _ = self._model()
        blank = Image.new("RGB", (bb.preprocessing.crop, bb.preprocessing.crop))
        return self._remember_width(int(self._forward([blank]).shape[1]))

    def _remember_width(self, dim: int) -> int:
        """``dim``, written to the cache folder's meta.json (where there is a cache)."""
        if folder := self._cache_folder():
            try:
                text = json.dumps({"dim": dim})
                replace_with(folder / "meta.json", lambda tmp: tmp.write_text(text))
            except OSError as exc:  # read back as a miss: the width is computed again
                _warn_unwritable(folder, exc)
        return dim

    def _forward(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Features of a batch of images: extraction's cpu data path (decode, resize, crop,
        normalise) and forward pass (same precision)."""
        bb, inference = self._model()
        path = CPUDataPath(bb.preprocessing, self.decode, uint8=True)
        source = _Items(images)
        batch = path.collate([path.load(source, row) for row in range(len(images))])
        with on_device(inference.device):
            batch = path.to_batch(batch, inference.device)
            return inference.arrays(batch)[LayerSpec.parse(self.layer).name]

    def transform(self, X: Iterable[ImageLike]) -> np.ndarray:
        self._fitted()
        items = _as_items(X)
        try:
            out = self._features(items)
        except _OtherWidth as other:
            # meta.json, read at fit, recorded another width than the layer computes (a stale
            # or foreign file): the computed width is the truth. Cached rows were checked
            # against the recorded one, so all are read again against it.
            self.n_features_out_ = self._remember_width(other.width)
            out = self._features(items)
        return self._as_stored(out, items)

    def _features(self, items: list[ImageLike]) -> np.ndarray:
        """(n, n_features_out_) float32 features of ``items``: cached rows read, the others
        computed and cached. Raises _OtherWidth where a computed batch has another width."""
        out = np.empty((len(items), self.n_features_out_), dtype=np.float32)
        folder = self._cache_folder()
        todo = []  # rows whose features are not cached
        keys = [_image_key(item) for item in items] if folder else [None] * len(items)
        for i, key in enumerate(keys):
            cached = self._cached(folder / f"{key}.npy") if folder else None
            if cached is not None:
                out[i] = cached
            else:
                todo.append(i)
        step = int(self.batch_size)
        batches = [todo[start : start + step] for start in range(0, len(todo), step)]
        with self._computed(items, batches) as computed:
            for rows, feats in zip(batches, computed, strict=True):
                if not np.isfinite(feats).all():  # checked before anything is cached
                    raise self._not_finite(items, rows, feats)
                if folder:  # before the width check: a pass again reads them, not computes
                    entries = {keys[i]: f for i, f in zip(rows, feats, strict=True)}
                    folder = folder if self._cache_rows(folder, entries) else None
                if feats.shape[1] != out.shape[1]:
                    raise self._other_width(feats.shape[1])
                out[rows] = feats
        return out

    def _cached(self, file: Path) -> np.ndarray | None:
        """The feature cached in ``file``, or None where there is none to trust: no file, or
        one whose bytes fail their digest or are not a finite float32 row of this width (an
        entry is not synced, so a power cut can leave it empty, cut short or zeros). Such an
        entry is a miss: it is computed and written again."""
        try:
            feature = _entry_row(file.read_bytes(), self._architecture())
        except OSError:  # missing, unreadable
            return None
        ok = (
            feature is not None
            and feature.shape == (self.n_features_out_,)
            and feature.dtype == np.float32
        )
        return feature if ok and np.isfinite(feature).all() else None

    def _cache_rows(self, folder: Path, rows: dict[str, np.ndarray]) -> bool:
        """Cache each row under its key (not synced, milliseconds an entry: _cached checks its
        digest). A cache that cannot be written (a full disk, no permission) costs only its
        speed: one warning, the features are still returned; False then, so that the caller
        stops writing to it."""
        try:
            for key, row in rows.items():
                data = _entry_bytes(row, self._architecture())
                replace_with(
                    folder / f"{key}.npy", lambda tmp, d=data: tmp.write_bytes(d), durable=False
                )
        except OSError as exc:
            _warn_unwritable(folder, exc)
            return False
        return True

    def _as_stored(self, out: np.ndarray, items: list[ImageLike]) -> np.ndarray:
        """``out`` rounded as a store of ``dtype`` holds it (the cache keeps float32, so one
        cache serves both dtypes). A float16 overflow is refused, as the store refuses it."""
        if self.dtype == "float32":
            return out
        with np.errstate(over="ignore"):  # an overflow is refused below, in its words
            out = out.astype(np.float16).astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if bad.size:
            labels = [str(_label(items, i)) for i in bad]
            names = listed(labels)
            raise NonFiniteFeaturesError(
                f"{counted(len(bad), 'image')} {agrees(len(bad), 'gives', 'give')} "
                f"{self.layer!r} features beyond 65504, the largest "
                f"float16, the dtype they are rounded to ({names}): to predict them, train a "
                'head on a store extracted with dtype="float32" (CLI: featpipe extract --dtype '
                'float32) and embed them with dtype="float32", as featpipe predict does for '
                "such a head."
            )
        return out

    def _other_width(self, width: int) -> _OtherWidth:
        # transform corrects the width once; this message shows where a pass again differs
        return _OtherWidth(
            width,
            f"Layer {self.layer!r} of {self.backbone} gave {width} features, but "
            f"{self.n_features_out_} in a pass before: its width changes from one forward pass "
            "to the next, which no feature matrix can hold; check the backbone's forward.",
        )

    def _not_finite(
        self, items: list[ImageLike], rows: list[int], feats: np.ndarray
    ) -> NonFiniteFeaturesError:
        bad = [row for row, ok in zip(rows, np.isfinite(feats).all(axis=1), strict=True) if not ok]
        labels = [_label(items, i) for i in bad]
        names = named_rows(labels, len(bad))
        kind = "NaN" if np.isnan(feats).any() else "infinite"
        bb, _ = self._model()
        # autocast only where the model computes in another precision than its weights' own
        # (a float64 model computes in fp64 on CUDA too: autocast is not to blame there)
        computed = self._compute()["precision"]
        fix = "check the backbone's weights and these images"
        if computed != PRECISIONS[input_dtype(bb.model)[1]]:
            fix += f", or compute in fp32 on the CPU (device='cpu'; {computed} autocast overflows)"
        return NonFiniteFeaturesError(
            f"Layer {self.layer!r} of {self.backbone} gave {kind} features for {len(bad)} "
            f"images ({names}); nothing of their batch was returned or cached: {fix}."
        )

    @contextlib.contextmanager
    def _computed(
        self, items: list[ImageLike], batches: list[list[int]]
    ) -> Iterator[Iterator[np.ndarray]]:
        """The features of each batch of rows of ``items``, in order: on a CPU device in
        lanes, as extraction computes (each lane decodes a batch and runs it on its share of
        the cores: featpipe.extract.lanes), else one batch after another."""
        _, inference = self._model()

        def work(i: int) -> np.ndarray:
            return self._forward([items[row] for row in batches[i]])

        jobs = default_workers(inference.device, "cpu") if self.n_jobs is None else self.n_jobs
        lanes = min(len(batches), lane_count(inference.device, int(jobs), compiled=False))
        if lanes < 2:
            yield map(work, range(len(batches)))
            return
        with lanes_running(work, len(batches), lanes) as computed:
            yield computed

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        self._fitted()
        return np.array([f"{self.layer}_{i}" for i in range(self.n_features_out_)], dtype=object)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_built", None)  # the model is rebuilt from its spec after unpickling
        return state
