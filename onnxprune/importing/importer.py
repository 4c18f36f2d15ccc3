"""Import an ONNX model into PyTorch for training, with one name map back to the ONNX graph.

    normalized = normalize(model)                   # weights as initializers, one per op
    module     = fx graph of onnx2torch converters  # one torch module per ONNX node
    params     = {initializer name: ParamRef(module_path, attr, transpose)}

For every float initializer that becomes a torch parameter or buffer,
``tensor(name) == initializer`` in ONNX layout (``transpose`` marks Gemm weights, which
nn.Linear stores as W^T when transB=0). Write-back (onnxprune.importing.writeback) inverts this map.
Torch attribute and module names are never ONNX names: ``names`` (onnxprune.graph.names.TorchNames)
maps every ONNX name to a safe, unique torch name and back, so any valid ONNX name imports.

The fx graph is built (onnxprune.importing.fxbuild) rather than taken from ``onnx2torch.convert`` so that (a) every op that
cannot be converted is collected into one error, (b) float initializers feeding weight-bearing
ops (MatMul, Gemm, per-channel Add/Mul, PRelu, ...) become trainable ``nn.Parameter``s instead of
buffers, and (c) graph outputs that are not node outputs (inputs, initializers) work.
Converters come from onnx2torch's registry, extended by ``onnxprune.importing.converters``.

``check=True`` runs the torch module and onnxruntime on one seeded random input at the resolved
static input shapes (dynamic batch -> 1). An output passes when, element-wise,

    |torch - ort| <= atol + rtol * |ort|                         (atol 1e-5, rtol 1e-4)

or, failing that, when its max error is within float32 rounding noise of the network itself:

    max |torch - ort| <= 4 * max |torch_float32 - torch_float64|

(the import re-run in float64 on the same input). Two correct float32 implementations of a deep
net differ by more than 1e-5: resnet50 at 224x224 has torch-vs-ort 4e-5 on logits of magnitude 2,
where torch and onnxruntime are each 3e-5 away from the float64 result. A wrong conversion
differs in float64 too, so it still fails. Otherwise UnsupportedModelError names the worst
output and its error.
"""

from __future__ import annotations

import copy
import gc
import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import shape_inference
from torch import nn

from onnxprune.errors import OnnxPruneError, UnsupportedModelError, VerificationError
from onnxprune.graph.modelio import is_large_model
from onnxprune.graph.names import TorchNames
from onnxprune.graph.shapes import infer_static_shapes, resolve_input_shapes, with_static_inputs
from onnxprune.graph.shapes import random_feeds as sample_feeds  # the feeds of the import check
from onnxprune.graph.verify import max_errors, run_onnxruntime
from onnxprune.importing.fxbuild import ParamRef, build_module, conversion_view, first_line
from onnxprune.importing.normalize import normalize

_LOG = logging.getLogger(__name__)

__all__ = ["ImportCheck", "ImportedModel", "ParamRef", "check_import", "import_model", "release_weights", "run_torch",
           "sample_feeds"]

NOISE_FACTOR = 4.0  # torch and onnxruntime each carry ~1x the float32 noise; 4x leaves margin


@dataclass(frozen=True)
class ImportCheck:
    """Torch vs onnxruntime on one seeded random input; ``float32_noise`` is measured (max over
    outputs of |torch_float32 - torch_float64|) only when the plain tolerance was not met."""

    max_abs: float
    max_rel: float
    worst_output: str
    float32_noise: float | None = None


@dataclass
class ImportedModel:
    """An ONNX model in torch; see the module docstring for the name map's contract."""

    onnx_model: onnx.ModelProto
    module: nn.Module
    params: dict[str, ParamRef]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_shapes: dict[str, tuple[int, ...]]
    check: ImportCheck | None = None
    frozen: tuple[str, ...] = field(default=())  # float initializers baked into modules as constants
    names: TorchNames | None = None  # ONNX name <-> torch attribute name (onnxprune.graph.names)
    # initializers whose data only torch holds (:func:`release_weights`): in ``onnx_model`` they
    # have their name, type and dims but no data; write-back fills them from torch
    torch_only: frozenset[str] = field(default=frozenset())

    def tensor(self, name: str) -> torch.Tensor:
        """The live parameter/buffer for initializer ``name``, as a view in ONNX layout."""
        try:
            ref = self.params[name]
        except KeyError:
            raise OnnxPruneError(f"initializer {name!r} is not mapped to a torch parameter") from None
        value = getattr(self.module.get_submodule(ref.module_path), ref.attr)
        return value.t() if ref.transpose else value

    def sample_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded random feeds at ``input_shapes`` (floats ~ N(0,1), integers 0, bools False)."""
        return sample_feeds(self.onnx_model, self.input_shapes, seed)


def import_model(
    model: onnx.ModelProto,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    check: bool = True,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> ImportedModel:
    """Normalize, convert and (optionally) verify ``model``; see the module docstring."""
    normalized = normalize(model)
    shapes = resolve_input_shapes(normalized, input_shapes)
    large = is_large_model(normalized)
    built = _build_in_place(normalized, shapes) if large else None
    if built is None:
        static = conversion_view(_static_shapes(normalized, shapes))
        built = build_module(static)
        # the static copy (another copy of every weight) is only reachable through reference
        # cycles of the converters' graph objects: collected now, not when the allocation count says
        del static
    module, params, frozen, names = built
    if large:
        gc.collect()
    inits = {init.name for init in normalized.graph.initializer}
    imported = ImportedModel(
        onnx_model=normalized,
        module=module,
        params=params,
        input_names=tuple(v.name for v in normalized.graph.input if v.name not in inits),
        output_names=tuple(v.name for v in normalized.graph.output),
        input_shapes=shapes,
        frozen=frozen,
        names=names,
    )
    if check:
        imported.check = check_import(imported, atol=atol, rtol=rtol)
        if large:
            gc.collect()  # the check's onnxruntime session and its serialized model, likewise
    return imported


def _build_in_place(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]):
    """:func:`build_module` on ``model`` itself, its static shapes (inputs, outputs, value_info,
    from ONNX inference on its weightless header) and the conversion view's attribute edits
    swapped in for the build and restored after it, instead of on a static-shape copy: for a
    large model that copy is one more copy of every weight at the import's peak. None (the caller
    builds on a copy) when inference alone does not fix every shape (onnxruntime must measure
    some: that needs the weights)."""
    try:
        shaped = infer_static_shapes(model, shapes, weights=False)
    except Exception:  # noqa: BLE001 -- the copy's path has its own fallback
        return None
    if is_large_model(shaped):  # a full copy came back: onnxruntime measured shapes
        return None
    graph, fields = model.graph, ("input", "output", "value_info")
    saved = {name: [_copied(value) for value in getattr(graph, name)] for name in fields}
    attributes = {index: [_copied(a) for a in node.attribute] for index, node in enumerate(graph.node)
                  if node.op_type == "Reshape"}
    try:
        for name in fields:
            _replace(getattr(graph, name), getattr(shaped.graph, name))
        return build_module(conversion_view(model))
    finally:
        for name, values in saved.items():
            _replace(getattr(graph, name), values)
        for index, values in attributes.items():
            _replace(graph.node[index].attribute, values)


def _copied(message):
    copy_ = type(message)()
    copy_.CopyFrom(message)
    return copy_


def _replace(field, values) -> None:
    del field[:]
    field.extend(values)


def check_import(imported: ImportedModel, atol: float = 1e-5, rtol: float = 1e-4, seed: int = 0) -> ImportCheck:
    """Compare torch with onnxruntime on one seeded input; raise UnsupportedModelError on mismatch."""
    feeds = imported.sample_inputs(seed)
    try:
        expected = run_onnxruntime(imported.onnx_model, feeds)
    except Exception as exc:  # noqa: BLE001 -- onnxruntime's errors carry no common type
        raise UnsupportedModelError(f"onnxruntime cannot run the model: {first_line(exc)}") from None
    try:
        actual = run_torch(imported, feeds)
    except Exception as exc:  # noqa: BLE001 -- a converted module failing at run time
        raise UnsupportedModelError(f"the torch import fails on a sample input: {first_line(exc)}") from None
    if len(actual) != len(expected):
        raise UnsupportedModelError(f"torch import returns {len(actual)} outputs, the graph has {len(expected)}")
    results = []  # (output name, max abs, max rel, close)
    for name, e, a in zip(imported.output_names, expected, actual):
        try:
            m_abs, m_rel = max_errors(e, a)
        except VerificationError as exc:
            raise UnsupportedModelError(f"import check: output {name!r}: {exc}") from None
        close = np.allclose(a.astype(np.float64), e.astype(np.float64), atol=atol, rtol=rtol)
        results.append((name, m_abs, m_rel, close))
    noise = None
    if not all(r[3] for r in results):
        noise = float32_noise(imported, feeds)
        if noise is not None:
            results = [(n, m_abs, m_rel, close or m_abs <= NOISE_FACTOR * noise[i])
                       for i, (n, m_abs, m_rel, close) in enumerate(results)]
    failed = [r for r in results if not r[3]]
    worst, worst_abs, worst_rel, _ = max(failed or results, key=lambda r: float(np.nan_to_num(r[2], nan=np.inf)))
    if failed:
        floor = "not measurable" if noise is None else f"{max(noise):.3g}"
        raise UnsupportedModelError(
            f"torch import differs from onnxruntime at output {worst!r}: max abs error {worst_abs:.3g}, "
            f"max rel error {worst_rel:.3g} (atol {atol:g}, rtol {rtol:g}; float32 noise {floor})"
        )
    return ImportCheck(max_abs=worst_abs, max_rel=worst_rel, worst_output=worst,
                       float32_noise=None if noise is None else max(noise))


def float32_noise(imported: ImportedModel, feeds: dict[str, np.ndarray]) -> list[float] | None:
    """Per output, max |torch_float32 - torch_float64| on ``feeds``; None if float64 cannot run
    (e.g. a graph that casts to float32 explicitly)."""
    float32 = run_torch(imported, feeds)
    wide = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
    was_training = imported.module.training
    imported.module.eval()
    try:
        with torch.no_grad():
            out = float64_forward(imported.module)(*(torch.from_numpy(np.asarray(wide[n]))
                                                     for n in imported.input_names))
    except Exception:  # noqa: BLE001 -- any failure means: no noise estimate, plain rule only
        return None
    finally:
        imported.module.train(was_training)
    float64 = [o.detach().cpu().numpy() if isinstance(o, torch.Tensor) else np.asarray(o)
               for o in (out if isinstance(out, (tuple, list)) else (out,))]
    return [float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
            for a, b in zip(float32, float64)]


def release_weights(imported: ImportedModel) -> int:
    """Drop from ``imported.onnx_model`` the data of every large initializer torch holds (its
    parameters and buffers are the weights now; :func:`onnxprune.importing.writeback.write_back`
    fills them back from torch), so the normalized model is no longer a second copy of every
    weight while training. ``onnx_model`` becomes a new header (protobuf frees a message's
    memory only with the message). Returns the bytes released. For callers that read no
    initializer values of ``onnx_model`` after this (the weight-level pipeline)."""
    from onnxprune.graph.modelio import weightless_header
    from onnxprune.graph.sessions import tensor_nbytes

    def held_by_torch(tensor: onnx.TensorProto) -> bool:
        return tensor.name in imported.params and tensor.HasField("raw_data") and tensor_nbytes(tensor) >= 1024

    source = imported.onnx_model
    stripped = {tensor.name: tensor_nbytes(tensor) for tensor in source.graph.initializer if held_by_torch(tensor)}
    if stripped:
        imported.onnx_model = weightless_header(source, held_by_torch)
        imported.torch_only = imported.torch_only | frozenset(stripped)
    return sum(stripped.values())


class _Float64Interpreter(torch.fx.Interpreter):
    """Runs a GraphModule as ``copy.deepcopy(module).double()`` would, holding the float64 copy of
    one submodule at a time: each called submodule runs on float64 casts of its own parameters
    and buffers (``torch.func.functional_call``), and every attribute read of a floating tensor
    is cast on read. The same ops on the same float64 values, so the same outputs; the memory is
    the module plus its largest layer in float64, not the whole model twice more."""

    def call_module(self, target, args, kwargs):
        sub = self.fetch_attr(target)
        wide = {name: value.double() if value.is_floating_point() else value
                for name, value in (*sub.named_parameters(), *sub.named_buffers())}
        return torch.func.functional_call(sub, wide, tuple(args), dict(kwargs))

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        return value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def float64_forward(module: nn.Module):
    """A callable computing ``copy.deepcopy(module).double()(*inputs)`` (inputs already float64).
    For an fx GraphModule, layer by layer (:class:`_Float64Interpreter`); should that fail, and
    for any other module, on the whole float64 copy: the estimate is never lost to the saving."""

    def whole(*inputs):
        return copy.deepcopy(module).double()(*inputs)

    if not isinstance(module, torch.fx.GraphModule):
        return whole

    def layered(*inputs):
        try:
            return _Float64Interpreter(module).run(*inputs)
        except Exception:  # noqa: BLE001 -- the whole copy decides, as it did before
            return whole(*inputs)

    return layered


def run_torch(imported: ImportedModel, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run the torch module in eval mode without gradients; outputs in graph order as numpy."""
    was_training = imported.module.training
    imported.module.eval()
    try:
        with torch.no_grad():
            out = imported.module(*(torch.from_numpy(np.asarray(feeds[n])) for n in imported.input_names))
    finally:
        imported.module.train(was_training)
    outputs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().cpu().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in outputs]


def _static_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Static value shapes for the converters (LayerNorm, BatchNorm, pools read them)."""
    try:
        return infer_static_shapes(model, shapes)
    except Exception:  # noqa: BLE001 -- onnxruntime cannot run an op we do not know either;
        # ONNX inference alone lets conversion go on and report every unsupported op at once.
        fixed = with_static_inputs(model, shapes)
        return shape_inference.infer_shapes(fixed, check_type=False, strict_mode=False, data_prop=True)
