"""Calibration data: loading, validation against the model's inputs, and the holdout split.

A calibration set is N samples for every graph input (arrays ``[N, ...]`` keyed by input name)
and optional integer labels ``[N]``. Sources:

* ``data.npz`` keyed by input names (several inputs), with an optional ``labels`` array;
* ``data.npy`` for single-input models;
* a directory of ``.npz`` / ``.npy`` files, concatenated along axis 0 in file-name order
  (an array one rank short of the input is one sample);
* a directory of images (png/jpg, optionally in class sub-folders whose names become labels),
  decoded and fitted to a single image input by :mod:`onnxprune.calibration.images`;
* token inputs (:mod:`onnxprune.calibration.text`): an ``.npz`` with ``input_ids``,
  ``attention_mask``, ``token_type_ids`` mapped to the model's inputs by name, or a text file
  (``sentences.txt``, one text per line) tokenized with ``--tokenizer`` to ``--seq-len`` tokens;
* ``synthetic``: standard-normal inputs of the resolved input shapes, for smoke tests only.

Every check names the input and what was expected, as one :class:`CalibrationError` line, before
anything is trained or written. Floating data of another width (float64 from numpy defaults) is
cast to the model's float type with a log line; any other dtype mismatch is an error.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxprune.calibration import text
from onnxprune.calibration.images import is_image_folder, load_image_folder
from onnxprune.errors import CalibrationError, ShapeError
from onnxprune.graph.shapes import graph_inputs, resolve_input_shapes

log = logging.getLogger(__name__)

LABELS_KEY = "labels"
SYNTHETIC = "synthetic"
SYNTHETIC_SAMPLES = 64


@dataclasses.dataclass(frozen=True)
class CalibrationSet:
    """N samples: ``inputs`` in graph-input order (name -> [N, ...]), ``labels`` [N] or None."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    synthetic: bool = False

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def subset(self, index: np.ndarray) -> CalibrationSet:
        labels = None if self.labels is None else self.labels[index]
        inputs = {name: array[index] for name, array in self.inputs.items()}
        return CalibrationSet(inputs, labels, self.synthetic)


@dataclasses.dataclass(frozen=True)
class _Spec:
    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...]  # int = fixed, str/None = dynamic

    def describe(self) -> str:
        dims = ["N" if i == 0 and not isinstance(d, int) else str(d if isinstance(d, int) else d or "?")
                for i, d in enumerate(self.dims)]
        return f"{self.dtype} [{','.join(dims)}]"


def load_calibration(
    source: str | Path | None,
    model: onnx.ModelProto,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    labels: str | Path | None = None,
    seed: int = 0,
    image_options: dict | None = None,
    tokenizer: str | Path | None = None,
    seq_len: int | None = None,
) -> CalibrationSet:
    """Load and validate calibration data for ``model`` (see the module docstring).

    ``tokenizer`` and ``seq_len`` serve text calibration; ``seq_len`` with an ``.npz`` of token
    arrays must equal their length."""
    if source is None:
        raise CalibrationError(
            "no calibration data: pass --calib data.npz (arrays keyed by input name, optional "
            "'labels'), a .npy, or a directory of them; --calib synthetic only for smoke tests"
        )
    specs = _input_specs(model, input_shapes or {})
    if str(source) == SYNTHETIC:
        data = _synthetic(model, input_shapes or {}, specs, seed)
        return data
    if tokenizer is not None and not text.is_text_source(source):
        raise CalibrationError(f"--tokenizer serves text calibration (--calib sentences.txt); --calib {source} "
                               f"is not a .txt file")
    if text.is_text_source(source):
        arrays = text.load_text(Path(source), tokenizer, seq_len)
    elif is_image_folder(source):
        arrays = _read_images(Path(source), model, input_shapes or {}, specs, image_options or {})
    else:
        arrays = _read_source(Path(source), specs)
    if text.has_token_keys(arrays):
        arrays = _token_inputs(arrays, specs, str(source), seq_len)
    file_labels = arrays.pop(LABELS_KEY, None)
    if labels is not None:
        file_labels = _read_array(Path(labels), "--labels")
    data = validate(arrays, file_labels, specs, str(source))
    check_index_inputs(data, model)
    return data


def _token_inputs(arrays: dict[str, np.ndarray], specs: list[_Spec], origin: str,
                  seq_len: int | None) -> dict[str, np.ndarray]:
    """Token arrays checked, keyed by the model's inputs and cast to their integer type."""
    arrays = text.map_to_inputs(arrays, [s.name for s in specs], origin)
    for spec in specs:
        array = arrays.get(spec.name)
        if array is None or array.ndim != 2 or text.token_role(spec.name) is None:
            continue
        if seq_len is not None and array.shape[1] != seq_len:
            raise CalibrationError(f"--seq-len {seq_len}, but calibration data {origin} holds {spec.name!r} "
                                   f"with {array.shape[1]} tokens per sample")
        if array.dtype != spec.dtype and array.dtype.kind in "iu" and spec.dtype.kind in "iu":
            log.info("casting calibration input %r from %s to %s (the model's input type)", spec.name,
                     array.dtype, spec.dtype)
            arrays[spec.name] = array.astype(spec.dtype)  # ids and masks fit any integer width in use
    return arrays


def data_input_shapes(source: str | Path | None, model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]],
                      seq_len: int | None = None) -> dict[str, tuple[int, ...]]:
    """``overrides`` plus a shape for every input whose non-batch dims are dynamic and not given,
    read from the calibration data: ``(1, seq_len)`` for the token inputs of text calibration,
    ``(1, *sample shape)`` from an ``.npz``/``.npy``. The MAC count, the group analysis and the
    latency feeds then see the calibration's sequence length. Inputs it cannot resolve are left
    for :func:`onnxprune.graph.shapes.resolve_input_shapes` to name."""
    shapes = dict(overrides)
    specs = _input_specs(model, {})
    needed = [s for s in specs if s.name not in shapes and any(not isinstance(d, int) for d in s.dims[1:])]
    if not needed or source is None or str(source) == SYNTHETIC:
        if needed and seq_len is not None:  # synthetic tokens at --seq-len
            shapes.update({s.name: (1, seq_len) for s in needed if len(s.dims) == 2})
        return shapes
    path = Path(str(source))
    if text.is_text_source(path):
        if seq_len is None:  # before the shape error that would otherwise name --input-shape
            raise CalibrationError(f"--calib {path}: text calibration needs --seq-len N (tokens per sample)")
        shapes.update({s.name: (1, seq_len) for s in needed if len(s.dims) == 2})
        return shapes
    if path.suffix not in (".npz", ".npy") or not path.is_file():
        return shapes
    try:
        arrays = _read_file(path, specs)
    except CalibrationError:
        return shapes  # load_calibration reports it
    if text.has_token_keys(arrays):
        try:
            arrays = text.map_to_inputs(arrays, [s.name for s in specs], str(path))
        except CalibrationError:
            return shapes
    for spec in needed:
        array = arrays.get(spec.name)
        if array is not None and array.ndim == len(spec.dims):
            shapes[spec.name] = (1, *(int(d) for d in array.shape[1:]))
    return shapes


def _input_specs(model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]]) -> list[_Spec]:
    specs = []
    for value in graph_inputs(model):
        tensor = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        dims: tuple = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
            for d in tensor.shape.dim
        )
        if value.name in overrides:  # --input-shape fixes every axis but the batch
            given = overrides[value.name]
            dims = (dims[0] if dims else None, *given[1:])
        specs.append(_Spec(value.name, dtype, dims))
    return specs


def _read_images(path: Path, model, overrides, specs: list[_Spec], options: dict) -> dict[str, np.ndarray]:
    if len(specs) != 1:
        raise CalibrationError(f"--calib {path}: an image folder serves single-input models; this one "
                               f"has inputs {[s.name for s in specs]}")
    shape = resolve_input_shapes(model, overrides)[specs[0].name]
    images, labels, _skipped = load_image_folder(path, shape, **options)  # skips are logged there
    arrays = {specs[0].name: images}
    if labels is not None:
        arrays[LABELS_KEY] = labels
    return arrays


def _read_source(path: Path, specs: list[_Spec]) -> dict[str, np.ndarray]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
        if not files:
            raise CalibrationError(f"--calib {path}: directory holds no .npy or .npz files")
        parts = [_read_file(p, specs) for p in files]
        keys = set(parts[0])
        for part, file in zip(parts, files):
            if set(part) != keys:
                raise CalibrationError(f"--calib {file}: keys {sorted(part)} differ from {sorted(keys)}")
            for key in part:  # one sample shape and dtype per key across the folder
                first, this = np.asarray(parts[0][key]), np.asarray(part[key])
                if this.shape[1:] != first.shape[1:] or this.ndim != first.ndim or this.dtype != first.dtype:
                    raise CalibrationError(
                        f"--calib {path}: {file.name} holds {key!r} as {this.dtype} {list(this.shape)}, but "
                        f"{files[0].name} as {first.dtype} {list(first.shape)}; every file in the folder must "
                        f"hold samples of one shape and dtype")
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return _read_file(path, specs)


def _read_file(path: Path, specs: list[_Spec]) -> dict[str, np.ndarray]:
    if not path.exists():
        raise CalibrationError(f"--calib {path}: no such file or directory")
    if path.suffix == ".npy":
        if len(specs) != 1:
            names = [s.name for s in specs]
            raise CalibrationError(f"--calib {path}: a .npy serves single-input models; this one has "
                                   f"inputs {names}, use an .npz keyed by them")
        array = _read_array(path, "--calib")
        if array.ndim == len(specs[0].dims) - 1:  # one sample
            array = array[None]
        return {specs[0].name: array}
    if path.suffix != ".npz":
        raise CalibrationError(f"--calib {path}: expected .npz, .npy, a directory, or 'synthetic'")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"--calib {path}: cannot read as .npz ({exc})") from None
    ranks = {s.name: len(s.dims) for s in specs}
    for key, array in arrays.items():
        if key in ranks and array.ndim == ranks[key] - 1:
            arrays[key] = array[None]
    return arrays


def _read_array(path: Path, option: str) -> np.ndarray:
    if not path.exists():
        raise CalibrationError(f"{option} {path}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{option} {path}: cannot read as .npy ({exc})") from None


def validate(
    arrays: dict[str, np.ndarray], labels: np.ndarray | None, specs: list[_Spec], origin: str
) -> CalibrationSet:
    """Check names, dtypes, shapes, sample counts and finiteness; return inputs in graph order."""
    names = [s.name for s in specs]
    for key in arrays:
        if key not in names:
            raise CalibrationError(f"calibration data {origin} has input {key!r}, but the model's "
                                   f"inputs are {names}")
    counts = {}
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in arrays:
            raise CalibrationError(f"calibration data {origin} lacks model input {spec.name!r} "
                                   f"(expected {spec.describe()})")
        array = _check_array(np.asarray(arrays[spec.name]), spec)
        counts[spec.name] = len(array)
        out[spec.name] = array
    if len(set(counts.values())) > 1:
        raise CalibrationError(f"calibration inputs have different sample counts: {counts}")
    n = next(iter(counts.values()))
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != n:
            raise CalibrationError(f"labels: expected integer class ids of shape [{n}], got "
                                   f"{labels.dtype} {list(labels.shape)}")
        labels = labels.astype(np.int64)
    out, labels = _fit_fixed_batch(out, labels, specs, origin)
    return CalibrationSet(out, labels)


def _fit_fixed_batch(inputs: dict[str, np.ndarray], labels: np.ndarray | None, specs: list[_Spec],
                     origin: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """For a model with a fixed batch B > 1 (every call takes exactly B samples), a sample count
    that is not a multiple of B: the last N % B samples are dropped, or, with fewer than B
    samples, the set is padded to B by repeating samples; either with a warning."""
    firsts = {s.dims[0] if s.dims and isinstance(s.dims[0], int) else None for s in specs if s.dims}
    batch = firsts.pop() if len(firsts) == 1 else None
    n = len(next(iter(inputs.values())))
    if batch is None or batch <= 1 or n % batch == 0:
        return inputs, labels
    if n > batch:
        keep = n - n % batch
        log.warning("calibration data %s: %d samples are not a multiple of the model's fixed batch %d; "
                    "the last %d are dropped", origin, n, batch, n - keep)
        index = np.arange(keep)
    else:
        log.warning("calibration data %s: %d samples, fewer than the model's fixed batch %d; padded to %d "
                    "by repeating samples", origin, n, batch, batch)
        index = np.arange(batch) % n
    return {k: v[index] for k, v in inputs.items()}, None if labels is None else labels[index]


def _check_array(array: np.ndarray, spec: _Spec) -> np.ndarray:
    where = f"calibration input {spec.name!r}"
    if array.size == 0 or array.ndim == 0:
        raise CalibrationError(f"{where} is empty (shape {list(array.shape)}), expected {spec.describe()}")
    if array.dtype != spec.dtype:
        if array.dtype.kind == "f" and spec.dtype.kind == "f":
            # float64 (numpy's default) to float32 is routine; any other width (float16 data,
            # a float16 model) is cast too, with a warning. Values the cast overflows become
            # inf and are refused below.
            routine = array.dtype == np.float64 and spec.dtype == np.float32
            (log.info if routine else log.warning)("casting %s from %s to %s (the model's input type)",
                                                   where, array.dtype, spec.dtype)
            array = array.astype(spec.dtype)
        else:
            raise CalibrationError(f"{where} has dtype {array.dtype}, expected {spec.describe()}")
    if array.ndim != len(spec.dims) or any(
        isinstance(want, int) and got != want for want, got in list(zip(spec.dims, array.shape))[1:]
    ):
        raise CalibrationError(f"{where} has shape {list(array.shape)}, expected {spec.describe()}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise CalibrationError(f"{where} holds {bad} NaN/Inf values; calibration data must be finite")
    return np.ascontiguousarray(array)


def _synthetic(model: onnx.ModelProto, overrides: dict, specs: list[_Spec], seed: int) -> CalibrationSet:
    log.warning("--calib synthetic: random inputs only serve smoke tests; pruning quality on real "
                "data is unknown")
    try:
        shapes = resolve_input_shapes(model, overrides)
    except ShapeError as exc:
        raise CalibrationError(f"--calib synthetic: {exc}") from None
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in specs:
        shape = shapes[spec.name]
        batch = max(SYNTHETIC_SAMPLES // shape[0], 1) * shape[0]
        if spec.dtype.kind == "f":
            inputs[spec.name] = rng.standard_normal((batch, *shape[1:])).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            inputs[spec.name] = rng.integers(0, 2, (batch, *shape[1:])).astype(spec.dtype)
        else:
            inputs[spec.name] = np.zeros((batch, *shape[1:]), spec.dtype)
    return CalibrationSet(inputs, None, synthetic=True)


def split_holdout(
    data: CalibrationSet, fraction: float = 0.1, seed: int = 0, multiple: int = 1
) -> tuple[CalibrationSet, CalibrationSet | None]:
    """Seeded random split into (train, holdout); training never sees the holdout.

    ``multiple``: the model's fixed batch; the holdout's size is rounded to a multiple of it (at
    least one batch), so both parts stay whole batches when the data is."""
    if not 0.0 <= fraction < 1.0:
        raise CalibrationError(f"--holdout {fraction}: expected a fraction in [0, 1)")
    n = len(data)
    multiple = max(int(multiple), 1)
    n_hold = int(round(fraction * n / multiple)) * multiple
    if fraction > 0 and n_hold == 0:
        n_hold = multiple  # a requested holdout is never silently empty
    if n - n_hold < 1:
        raise CalibrationError(f"calibration data has {n} samples; too few to hold out {fraction:.0%}")
    if n_hold == 0:
        return data, None
    order = np.random.default_rng(seed).permutation(n)
    return data.subset(np.sort(order[n_hold:])), data.subset(np.sort(order[:n_hold]))


# ops that pass integer values through unchanged (an index input may reach its Gather through them)
_PASS_THROUGH = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten"}


def check_index_inputs(data: CalibrationSet, model: onnx.ModelProto) -> None:
    """Integer inputs that index a table (token ids into an embedding: ``Gather(table, ids)``,
    directly or through Cast/Reshape/...) must lie within it, ``[-rows, rows)`` on the gathered
    axis, as onnxruntime requires; one CalibrationError line names the input, the largest id and
    the table."""
    tables = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tables[node.output[0]] = list(node.attribute[0].t.dims)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for name, array in data.inputs.items():
        if array.dtype.kind not in "iu" or array.size == 0:
            continue
        low, high = int(array.min()), int(array.max())
        frontier, seen = [name], set()
        while frontier:
            value = frontier.pop()
            if value in seen:
                continue
            seen.add(value)
            for node in consumers.get(value, []):
                if node.op_type in _PASS_THROUGH and node.input[0] == value:
                    frontier.extend(node.output)
                elif node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == value:
                    dims = tables.get(node.input[0])
                    if not dims:
                        continue
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    rows = dims[axis % len(dims)]
                    if low < -rows or high >= rows:
                        bad = high if high >= rows else low
                        raise CalibrationError(
                            f"calibration input {name!r} holds index {bad} (range {low}..{high}), but Gather "
                            f"{node.name or node.output[0]!r} indexes {node.input[0]!r} with {rows} rows on axis "
                            f"{axis}: ids must lie in [-{rows}, {rows - 1}]")


def check_labels(labels: np.ndarray | None, targets, kinds) -> None:
    """Labels are class ids: non-negative and below the class count of the first [N, C] logits
    output (the one cross-entropy and accuracy use); one CalibrationError line otherwise."""
    if labels is None or len(labels) == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise CalibrationError(f"labels: class ids must be >= 0; found {low} ({int((labels < 0).sum())} negative)")
    logits = next((t for t, kind in zip(targets, kinds) if kind == "logits"), None)
    if logits is not None and high >= logits.shape[1]:
        classes = logits.shape[1]
        raise CalibrationError(f"labels: class id {high} is out of range for the model's {classes} classes "
                               f"(ids 0..{classes - 1}); {int((labels >= classes).sum())} labels are too large")
