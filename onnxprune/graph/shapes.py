"""Input shapes: the ``--input-shape name=1x3x224x224`` option and static shape inference.

Every command that needs shapes (MAC counting, group analysis, synthetic calibration, latency)
resolves them the same way: a fixed dimension is used as is, a dynamic first (batch) dimension
becomes 1, and any other dynamic dimension must come from ``--input-shape`` or the command
names the input and axis that needs it. A dimension is dynamic when it is a symbolic name, unset,
or stored as a number below 1 (Paddle and some TF converters write -1 or 0); ``--input-shape``
sets every dynamic dimension and must repeat the fixed ones.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import helper, shape_inference

from onnxprune.errors import ShapeError
from onnxprune.graph.sessions import make_session

_SHAPE_RE = re.compile(r"^(?P<name>[^=]+)=(?P<dims>-?\d+(?:[x,]-?\d+)*)$")


def parse_input_shapes(specs: list[str] | tuple[str, ...] | None) -> dict[str, tuple[int, ...]]:
    """Parse repeated ``name=1x3x224x224`` options into a dict."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs or ():
        match = _SHAPE_RE.match(spec.strip())
        if not match:
            raise ShapeError(f"--input-shape {spec!r}: expected NAME=DxDxD, e.g. image=1x3x224x224")
        dims = tuple(int(d) for d in re.split(r"[x,]", match["dims"]))
        if any(d <= 0 for d in dims):
            raise ShapeError(f"--input-shape {spec!r}: dimensions must be positive (give a dynamic "
                             f"dimension, -1 or a name in the model, the size to use, e.g. 1)")
        shapes[match["name"]] = dims
    return shapes


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not initializers (old exporters list both)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def is_fixed(dim: onnx.TensorShapeProto.Dimension) -> bool:
    """A dimension stored as a number >= 1; a name, nothing, -1 or 0 is dynamic."""
    return dim.HasField("dim_value") and dim.dim_value > 0


def resolve_input_shapes(
    model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Static shape for every graph input; see the module docstring for the rules."""
    overrides = dict(overrides or {})
    inputs = graph_inputs(model)
    names = [value.name for value in inputs]
    for name in overrides:
        if name not in names:
            raise ShapeError(f"--input-shape names {name!r}, but the model's inputs are {names}")
    shapes: dict[str, tuple[int, ...]] = {}
    for value in inputs:
        declared = value.type.tensor_type.shape.dim
        if value.name in overrides:
            shape = overrides[value.name]
            if value.type.tensor_type.HasField("shape") and len(shape) != len(declared):
                raise ShapeError(
                    f"--input-shape {value.name}: {len(shape)} dims given, the model declares "
                    f"{len(declared)}"
                )
            for axis, (dim, given) in enumerate(zip(declared, shape)):
                if is_fixed(dim) and dim.dim_value != given:
                    raise ShapeError(
                        f"--input-shape {value.name}: axis {axis} is fixed at {dim.dim_value} "
                        f"in the model, got {given}"
                    )
            shapes[value.name] = tuple(shape)
            continue
        shape = []
        for axis, dim in enumerate(declared):
            if is_fixed(dim):
                shape.append(dim.dim_value)
            elif axis == 0:
                shape.append(1)  # a dynamic batch dimension is measured at batch 1
            else:
                label = dim.dim_param or "?"
                raise ShapeError(
                    f"input {value.name!r} has dynamic dimension {label!r} at axis {axis}; "
                    f"pass --input-shape {value.name}=" + "x".join(["N"] * len(declared))
                )
        shapes[value.name] = tuple(shape)
    return shapes


def with_static_inputs(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs carry the given static shapes."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name in input_shapes:
            dims = value.type.tensor_type.shape
            dims.ClearField("dim")
            for size in input_shapes[value.name]:
                dims.dim.add().dim_value = size
    return fixed


def infer_static_shapes(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None, *, weights: bool = True
) -> onnx.ModelProto:
    """A copy of ``model`` with a static shape recorded for every value (a model of more than
    :data:`~onnxprune.graph.modelio.LARGE_MODEL_BYTES` of weights is inferred on its weightless
    header, so inference serializes no weights, and the shapes are copied into the copy).

    ONNX shape inference (with data propagation, for Reshape targets computed from Shape) is
    tried first; values it leaves unknown are measured by one onnxruntime run on zeros, which
    also covers ops whose output shape depends on data.

    ``weights=False``: a caller that reads only shapes (and initializer dims) may get the large
    model's weightless header back, when ONNX inference alone fixed every shape (no copy of the
    weights).
    """
    from onnxprune.graph.modelio import is_large_model, weightless_header

    input_shapes = input_shapes or resolve_input_shapes(model)
    if not is_large_model(model):
        fixed = with_static_inputs(model, input_shapes)
        fixed.graph.ClearField("value_info")
        try:
            inferred = shape_inference.infer_shapes(fixed, check_type=False, strict_mode=False, data_prop=True)
        except Exception:  # inference is best effort; onnxruntime below fills any gap
            inferred = fixed
    else:  # inferred on the header, the shapes copied into one plain copy of the model
        header = with_static_inputs(weightless_header(model), input_shapes)
        header.graph.ClearField("value_info")
        inferred = None
        try:
            shaped = shape_inference.infer_shapes(header, check_type=False, strict_mode=False, data_prop=True)
            if not weights:
                header.graph.value_info.extend(shaped.graph.value_info)
                for given, found in zip(header.graph.output, shaped.graph.output, strict=True):
                    given.CopyFrom(found)
                if not _unknown_values(header):
                    return header
            inferred = with_static_inputs(model, input_shapes)
            inferred.graph.ClearField("value_info")
            inferred.graph.value_info.extend(shaped.graph.value_info)
            for given, found in zip(inferred.graph.output, shaped.graph.output, strict=True):
                given.CopyFrom(found)
        except Exception:  # noqa: BLE001 -- best effort, as above
            pass
        if inferred is None:
            inferred = with_static_inputs(model, input_shapes)
            inferred.graph.ClearField("value_info")
    if _unknown_values(inferred):
        inferred = _shapes_from_onnxruntime(inferred, input_shapes)
    return inferred


def static_shape_map(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Name -> static shape for every value (inputs, outputs, value_info, initializers)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _unknown_values(model: onnx.ModelProto) -> list[str]:
    known = static_shape_map(model)
    return [out for node in model.graph.node for out in node.output if out and out not in known]


def _shapes_from_onnxruntime(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]
) -> onnx.ModelProto:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {value.name for value in probe.graph.output}
    # only main-graph values are exposed; subgraph internals keep whatever inference gave them
    wanted = [out for node in probe.graph.node for out in node.output if out and out not in existing]
    for name in wanted:
        probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = make_session(probe, optimize=False)
    feeds = {}
    for value in graph_inputs(model):
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = np.zeros(input_shapes[value.name], dtype=dtype)
    results = session.run(None, feeds)
    names = [value.name for value in probe.graph.output]
    by_name = dict(zip(names, results))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.ClearField("value_info")
    outputs = {value.name for value in out.graph.output}
    for name in wanted:
        array = np.asarray(by_name[name])
        info = helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape)
        )
        if name not in outputs:
            out.graph.value_info.append(info)
    for value in out.graph.output:
        if value.name in by_name:
            array = np.asarray(by_name[value.name])
            dims = value.type.tensor_type.shape
            dims.ClearField("dim")
            for size in array.shape:
                dims.dim.add().dim_value = size
    return out


def random_feeds(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]], seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded inputs of the given static shapes for every real graph input: standard normal for
    floats, zeros for integers and booleans (indices and masks must stay in range)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in graph_inputs(model):
        if value.name not in input_shapes:
            raise ShapeError(f"no shape for input {value.name!r}")
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = tuple(input_shapes[value.name])
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = np.zeros(shape, dtype=dtype)
    return feeds


__all__ = [
    "random_feeds",
    "parse_input_shapes",
    "resolve_input_shapes",
    "infer_static_shapes",
    "static_shape_map",
    "graph_inputs",
    "is_fixed",
    "with_static_inputs",
]
