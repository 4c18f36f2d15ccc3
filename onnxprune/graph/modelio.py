"""Reading and writing ONNX files safely.

Reading validates before anything else runs: a missing path, a directory, a truncated or
non-ONNX file, or a graph that fails ``onnx.checker`` is one :class:`ModelLoadError` line.
Writing is atomic (a temporary file in the destination directory, then ``os.replace``), refuses
to overwrite the input, and writes the weights as external data (``OUT.onnx.data`` beside
``OUT.onnx``) for models over protobuf's 2 GB limit and for inputs that stored theirs that way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxprune.errors import ModelLoadError, OnnxPruneError
from onnxprune.graph.sessions import needs_external_data, tensor_nbytes


def load_model(path: str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX model with its external data, or raise ModelLoadError with one line."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: file is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelLoadError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({_first_line(exc)})") from None
    external = _check_external_data(model, path)  # before reading any of it
    _EXTERNAL[_file_key(path)] = external
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, RuntimeError, onnx.checker.ValidationError) as exc:
        raise ModelLoadError(f"{path}: cannot read its external data ({_first_line(exc)})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelLoadError(f"{path}: not a valid ONNX model (no graph nodes)")
    if check:
        try:
            if external or needs_external_data(model) or is_large_model(model):
                # from the file: the checker reads the .onnx itself (external data stays on disk),
                # no serialized copy of the weights in memory
                onnx.checker.check_model(str(path))
            else:
                onnx.checker.check_model(model)
        except (onnx.checker.ValidationError, ValueError) as exc:
            raise ModelLoadError(f"{path}: fails the ONNX checker ({_first_line(exc)})") from None
    return model


def _check_external_data(model: onnx.ModelProto, path: Path) -> bool:
    """Every tensor stored outside the .onnx file names a regular file inside the model's folder
    (no absolute path, no ``..`` out of it, no symlink leading out), present and long enough for
    the tensor's offset and length; one ModelLoadError line otherwise. Returns whether any
    tensor is stored outside."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    base = path.resolve().parent
    external = False
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        external = True
        info = ExternalDataInfo(tensor)
        where = f"{path}: tensor {tensor.name!r} stores its data in {info.location!r}"
        if not info.location:
            raise ModelLoadError(f"{where}: no location given")
        target = (base / info.location).resolve()
        if os.path.isabs(info.location) or not target.is_relative_to(base):
            raise ModelLoadError(f"{where}, outside the model's folder {base}; external data must lie in "
                                 f"that folder or below it (refused: it could name any file)")
        if not target.exists():
            raise ModelLoadError(f"{where}: external data file missing ({target.name} beside the model)")
        if not target.is_file():
            raise ModelLoadError(f"{where}: not a regular file")
        offset = int(info.offset or 0)
        size = target.stat().st_size
        if offset + int(info.length or 0) > size or offset > size:
            raise ModelLoadError(f"{where}: the file holds {size} bytes, the tensor needs bytes "
                                 f"{offset}..{offset + int(info.length or 0)} (truncated?)")
    return external


# whether a file load_model read stored external data, by (resolved path, mtime, size): the
# writer asks at the end of a run without reading a large input's header a second time
_EXTERNAL: dict[tuple[str, int, int], bool] = {}


def _file_key(path: Path) -> tuple[str, int, int]:
    info = path.stat()
    return str(path.resolve()), info.st_mtime_ns, info.st_size


def save_model_atomic(
    model: onnx.ModelProto,
    out_path: str | os.PathLike,
    input_path: str | os.PathLike | None = None,
    *,
    external_data: bool | None = None,
) -> Path:
    """Write ``model`` to ``out_path`` atomically; never onto ``input_path``.

    The weights go to ``<out>.data`` beside the file, as ONNX external data, when
    ``external_data`` is True, or (None) when the model is over protobuf's limit; ``model`` is
    left as it was. (A caller whose input stored external data passes True: see
    :func:`stores_external_data`, asked before the model is loaded.) The files are first
    written into a temporary directory next to the destination, so a crash leaves no partial
    output and a reader never sees half a file.
    """
    out_path = Path(out_path)
    if input_path is not None and _same_file(out_path, Path(input_path)):
        raise OnnxPruneError(f"--out {out_path} is the input file; choose another output path")
    parent = out_path.parent if str(out_path.parent) else Path(".")
    if not parent.is_dir():
        raise OnnxPruneError(f"--out {out_path}: directory {parent} does not exist")
    external = needs_external_data(model) if external_data is None else external_data
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=parent))
    try:
        tmp_file = tmp_dir / out_path.name
        if external:
            data_name = out_path.name + ".data"
            save_with_external_data(model, tmp_file, data_name)
            os.replace(tmp_dir / data_name, parent / data_name)
        else:
            onnx.save_model(model, str(tmp_file))
        os.replace(tmp_file, out_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_path


# tensors smaller than this stay inside the .onnx file (onnx's own default threshold)
EXTERNAL_THRESHOLD = 1024


def save_with_external_data(model: onnx.ModelProto, path: Path, data_name: str) -> None:
    """Save ``model`` to ``path`` with every main-graph initializer of at least
    :data:`EXTERNAL_THRESHOLD` bytes in ``data_name`` beside it, without copying the model and
    without touching it: each tensor's bytes are appended to the data file (one tensor in memory
    at a time) and a header model whose tensors point into that file is saved. (``onnx.save_model``
    on a copy doubles the memory; moving the bytes out of the tensors and back grows protobuf's
    arena by the model's size, since a cleared field's memory is not returned.)"""
    offsets: dict[str, tuple[int, int]] = {}
    with open(path.parent / data_name, "wb") as data:
        for tensor in model.graph.initializer:
            if _is_large(tensor):
                offset = data.tell()
                data.write(tensor.raw_data)  # one tensor's bytes, freed after the write
                offsets[tensor.name] = (offset, data.tell() - offset)
    header = weightless_header(model, lambda tensor: offsets.get(tensor.name) is not None)
    for tensor in header.graph.initializer:
        if tensor.name in offsets:
            offset, length = offsets[tensor.name]
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", offset), ("length", length)):
                tensor.external_data.add(key=key, value=str(value))
    onnx.save_model(header, str(path))


# above this many bytes of weights, shape inference and checks work on a weightless header
# (inference serializes its input and parses its result: three more copies of the weights)
LARGE_MODEL_BYTES = 64 * 2**20


def is_large_model(model: onnx.ModelProto) -> bool:
    """Whether the main graph's initializers hold more than :data:`LARGE_MODEL_BYTES`."""
    total = 0
    for tensor in model.graph.initializer:
        total += tensor_nbytes(tensor)
        if total > LARGE_MODEL_BYTES:
            return True
    return False


def _is_large(tensor: onnx.TensorProto) -> bool:
    return tensor.HasField("raw_data") and tensor_nbytes(tensor) >= EXTERNAL_THRESHOLD


def _copy_fields(source, dest, skip: str) -> None:
    """Copy every set field of one protobuf message into another, but ``skip``."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(dest, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):  # a message
            getattr(dest, field.name).CopyFrom(value)
        else:
            setattr(dest, field.name, value)


def weightless_header(model: onnx.ModelProto, strip=None) -> onnx.ModelProto:
    """A new ModelProto equal to ``model`` except that the main-graph initializers ``strip``
    selects (default: every one of at least :data:`EXTERNAL_THRESHOLD` bytes of raw data) have
    their name, type and dims but no data. Built field by field, so the large tensors are never
    copied: for writing external data, and for shape inference of models over 2 GiB."""
    strip = strip or _is_large
    header = onnx.ModelProto()
    _copy_fields(model, header, skip="graph")
    graph = header.graph
    _copy_fields(model.graph, graph, skip="initializer")
    for tensor in model.graph.initializer:
        if not strip(tensor):
            graph.initializer.add().CopyFrom(tensor)
            continue
        empty = graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        if tensor.doc_string:
            empty.doc_string = tensor.doc_string
        empty.metadata_props.extend(tensor.metadata_props)
    return header


def serialized_size(model: onnx.ModelProto) -> int:
    """``model.ByteSize()`` computed without encoding the weights: upb encodes the whole message
    to count it (a transient copy of every weight) and refuses to at 2 GiB. The header without
    the large raw tensors is measured, and each tensor's raw bytes and the length prefixes they
    lengthen (its own entry's, the graph's) are added. Equal to ``ByteSize()`` below 2 GiB. A
    weight whose data torch holds (no data here) counts as the raw data written back for it."""
    large = [_is_large(tensor) or _is_stripped(tensor) for tensor in model.graph.initializer]
    if not any(large):
        return model.ByteSize()
    header = weightless_header(model, lambda tensor: _is_large(tensor) or _is_stripped(tensor))
    graph_header = header.graph.ByteSize()
    graph = graph_header
    for stripped, tensor, kept in zip(large, model.graph.initializer, header.graph.initializer, strict=True):
        if not stripped:
            continue
        rest = onnx.TensorProto()
        _copy_fields(tensor, rest, skip="raw_data")  # every field but the bytes (data_location, ...)
        length = _raw_nbytes(tensor)  # raw data of a numeric tensor: dims x item size
        full = rest.ByteSize() + 1 + _varint_size(length) + length  # raw_data: tag 74, length, bytes
        graph += full + _varint_size(full) - kept.ByteSize() - _varint_size(kept.ByteSize())
    return header.ByteSize() + graph + _varint_size(graph) - graph_header - _varint_size(graph_header)


_DATA_FIELDS = {"raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data",
                "external_data"}


def _is_stripped(tensor: onnx.TensorProto) -> bool:
    """A numeric tensor of nonzero size without any data: a weight torch holds
    (``importer.release_weights``), counted as the raw data it is written back as."""
    if any(field.name in _DATA_FIELDS for field, _ in tensor.ListFields()):
        return False
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count > 0 and tensor.data_type not in (0, onnx.TensorProto.STRING)


def _raw_nbytes(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def stores_external_data(path: str | os.PathLike | onnx.ModelProto) -> bool:
    """Whether the .onnx file at ``path`` keeps any tensor in external data (its external weights
    are not read; ask before loading the model, so a large inline file is not held twice);
    False for a ModelProto or a path that cannot be read as a model."""
    if isinstance(path, onnx.ModelProto):
        return False
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        known = _EXTERNAL.get(_file_key(Path(path)))
    except OSError:
        return False
    if known is not None:
        return known
    try:
        header = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:  # noqa: BLE001 -- a bad input is load_model's to report
        return False
    return any(uses_external_data(tensor) for tensor in _get_all_tensors(header))


def model_size_bytes(path: str | os.PathLike) -> int:
    """Size on disk of an .onnx file plus its external data files."""
    path = Path(path)
    total = path.stat().st_size
    data = path.with_name(path.name + ".data")
    if data.exists():
        total += data.stat().st_size
    return total


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
