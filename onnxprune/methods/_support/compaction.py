"""Physical compaction during training: rebuild the trained model without its dead structures.

A structured method that removes units and residual layers for good (Bernoulli) keeps training
them at gate 0 unless the model itself shrinks. :class:`Compaction` shrinks it with the same
passes as the final export:

    onnx   = write_back(imported)            raw (ungated) weights, gates bypassed
    onnx'  = apply_plan(onnx, plan)          kept units per group, dropped branches; no
                                             dead-structure pass, no bias folds (see below)
    model' = import_model(onnx')             re-import; group ids and branch ids are ONNX names
                                             (a group is named by its first producer's weight),
                                             so they survive the passes unchanged

Removing a unit slices every tensor axis of its group (producers and consumers); the kept
elements of each initializer axis are kept in order, so indices renumber by
``new = rank of old among the kept``. The class composes these maps across compactions:

    units[g][i]        original unit of current unit i of group g
    elements[w][a][k]  original element of current element k of initializer w along ONNX axis a

which is all a method needs to keep its parameters in the original numbering (a gate of the
compacted model reads ``gate_original[units[g]]``) and the loop needs to carry the optimizer's
moments over (``state_map``: new parameter -> (old parameter, ``x[..., kept, ...]`` per axis)).

:meth:`Compaction.restore` writes the trained weights of the compacted model back into the
ORIGINAL torch module at ``elements`` (``W_orig[ix(elements)] = W_current``) and puts the
original graph, module and analysis back in place: the method's final plan then refers to the
original graph's names and indices (``apply --plan`` on the original model reproduces the
export), and the removed structures (gate 0 in the original module) are cut by that plan.

Exactness: only groups whose removed channels read as exact zeros at every consumer (fold sites
in state ZERO) are shrunk, so no constant is folded into a bias and every surviving weight is a
plain slice of its predecessor (which is what makes ``restore`` exact). The caller checks that
the gated outputs before and after agree with the same gate sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from onnxprune.errors import OnnxPruneError
from onnxprune.methods._support import channel_gates as gates
from onnxprune.passes import PruningPlan, analyze, apply_plan
from onnxprune.passes.structures import State


class CompactionError(OnnxPruneError):
    """A compaction whose result does not line up with the model it replaces (a bug, not user error)."""


@dataclasses.dataclass
class Candidate:
    """A compacted model not yet in use: the caller installs its gates, checks it, then commits."""

    imported: object  # onnxprune.importing.importer.ImportedModel of the smaller graph
    analysis: object  # its GroupAnalysis
    kept_units: dict[str, np.ndarray]  # group -> kept current units
    kept_elements: dict[str, list[np.ndarray | None]]  # initializer -> per ONNX axis kept elements
    macs: int


def shrinkable(analysis, group_id: str) -> bool:
    """A group whose removed channels are exact zeros wherever they are read (nothing to fold)."""
    group = analysis.group(group_id)
    return group.prunable and all(site.gate == State.ZERO for site in group.folds)


class Compaction:
    """The model being trained, its maps back to the original graph, and what it has shed."""

    def __init__(self, ctx, groups: Mapping[str, int]) -> None:
        imported = ctx.imported
        self.shapes = dict(imported.input_shapes)
        self._original = (dataclasses.replace(imported), ctx.analysis, ctx.weights)
        self.units = {g: np.arange(n) for g, n in groups.items()}
        self.elements: dict[str, list[np.ndarray | None]] = {}
        self.dropped: set[str] = set()  # residual branches physically gone
        self.macs = ctx.analysis.total_macs  # MACs of the model being trained
        self.count = 0

    @property
    def active(self) -> bool:
        return self.count > 0

    def shrink(self, ctx, keep: Mapping[str, np.ndarray], dropped: Sequence[str],
               raw: Callable[[], contextlib.AbstractContextManager]) -> Candidate:
        """Build the compacted model: ``keep[g]`` current units kept per group, ``dropped`` branches
        removed; ``raw()`` is a context in which the model's parameters read ungated."""
        from onnxprune.importing.importer import import_model
        from onnxprune.importing.writeback import write_back

        imported, analysis = ctx.imported, ctx.analysis
        plan = PruningPlan(kept={g: tuple(int(i) for i in k) for g, k in keep.items()
                                 if len(k) < analysis.group(g).size},
                           dropped_branches=tuple(dropped))
        with raw():
            model = write_back(imported)
        pruned = apply_plan(model, plan, self.shapes, dead_structure=False, analysis=analysis)
        new = import_model(pruned, self.shapes)
        new_analysis = analyze(new.onnx_model, self.shapes, analysis.options)  # the same choices (hidden size)
        elements = _kept_elements(analysis, plan, imported.onnx_model)
        shapes = {i.name: tuple(i.dims) for i in new.onnx_model.graph.initializer}
        for name in new.params:
            if name not in imported.params:
                raise CompactionError(f"compaction created a new weight {name!r}")
            dims = _dims(imported, name)
            if name in elements:
                dims = tuple(n if k is None else len(k) for k, n in zip(elements[name], dims))
            if shapes[name] != dims:
                raise CompactionError(f"compaction: {name!r} has shape {shapes[name]}, the plan gives {dims}")
        kept_units = {g: np.asarray(k, dtype=np.int64) for g, k in keep.items()}
        for g in self.units:  # a gated group survives with the kept units, or vanishes with its branch
            size = next((group.size for group in new_analysis.groups if group.id == g), None)
            if size != (len(kept_units[g]) if g in kept_units else None):
                raise CompactionError(f"compaction: group {g!r} has {size} units, the plan keeps "
                                      f"{len(kept_units[g]) if g in kept_units else None}")
        return Candidate(new, new_analysis, kept_units, elements, new_analysis.total_macs)

    def commit(self, ctx, candidate: Candidate, dropped: Sequence[str]) -> dict:
        """Make ``candidate`` the model being trained; returns the loop's ``state_map``."""
        from onnxprune.training.loop import prunable_weights

        old, new = ctx.imported, candidate.imported
        state_map = {}
        for name, ref in new.params.items():
            old_ref = old.params[name]
            old_param = gates.original(old.module, old_ref.module_path, old_ref.attr)
            new_param = gates.original(new.module, ref.module_path, ref.attr)
            if not isinstance(old_param, torch.nn.Parameter):
                continue  # a buffer (BN statistics): no optimizer state
            kept = candidate.kept_elements.get(name)
            state_map[new_param] = (old_param, _selector(kept, ref.transpose, old_param.device))
        for name, kept in candidate.kept_elements.items():
            if name not in new.params:
                continue
            before = self.elements.get(name) or [None] * len(kept)
            self.elements[name] = [b if k is None else k if b is None else b[k] for b, k in zip(before, kept)]
        self.units = self.units_after(candidate)
        self.dropped.update(dropped)
        self.macs, self.count = candidate.macs, self.count + 1
        for field in ("onnx_model", "module", "params", "check", "frozen"):  # in place: callers hold it
            setattr(ctx.imported, field, getattr(new, field))
        ctx.analysis, ctx.model = candidate.analysis, new.module
        ctx.weights = prunable_weights(ctx.imported)
        return state_map

    def keep(self, analysis, alive: Mapping[str, np.ndarray], dropped: Sequence[str], sizes: Mapping[str, int],
             multiple: int = 1) -> dict[str, np.ndarray]:
        """Current units to keep per surviving group: the ``alive`` ones (original numbering) and,
        with ``multiple`` > 1 (rounding still to come), the first dead ones up to the count that
        rounding to the multiple could reach: ``round_counts`` never goes past
        ``min(size, max(m, ceil(alive/m) * m))``, so the final selection is the one the full
        model would get. Groups whose branch goes are left out; groups that are not
        :func:`shrinkable` keep every unit."""
        gone, keep = {*self.dropped, *dropped}, {}
        for g, units in self.units.items():
            if analysis.group(g).branch in gone:
                continue  # leaves with its branch
            here = alive[g][units]
            count, size = int(here.sum()), sizes[g]
            if not shrinkable(analysis, g):
                count = len(units)
            elif multiple > 1 and size > multiple:
                count = min(size, max(multiple, -(-count // multiple) * multiple))
            dead = np.flatnonzero(~here)[:max(0, count - int(here.sum()))]
            keep[g] = np.sort(np.concatenate([np.flatnonzero(here), dead]))
        return keep

    def available(self, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """Per group (original numbering) the units still in the trained model; a group that left
        with its branch counts as whole (its branch is dropped either way)."""
        out = {}
        for g, n in sizes.items():
            mask = torch.ones(n, dtype=torch.bool)
            if g in self.units:
                mask[:] = False
                mask[torch.from_numpy(self.units[g])] = True
            out[g] = mask
        return out

    def units_after(self, candidate: Candidate) -> dict[str, np.ndarray]:
        """Original unit of each unit of the candidate, per surviving group."""
        return {g: self.units[g][k] for g, k in candidate.kept_units.items()}

    def install_gates(self, candidate: Candidate, branches: Sequence[str],
                      gate: Callable[[str], torch.Tensor], device) -> gates.GateBank:
        """Gate the candidate's groups and ``branches`` by ``gate(key)``, a gate in the original
        numbering: group g reads ``gate(g)[units[g]]``."""
        new, analysis, bank = candidate.imported, candidate.analysis, gates.GateBank()
        keys = [(g, analysis.group(g).gate_tensors) for g in candidate.kept_units]
        keys += [(b, analysis.branch(b).gate_tensors) for b in branches]
        new.module.to(device)
        for key, tensors in keys:
            gates.install(new.module, bank, gates.sites_from_onnx(new, key, [t for t in tensors if t.name in new.params]))
        for g, units in self.units_after(candidate).items():
            index = torch.from_numpy(units).to(device)
            bank.set(g, lambda g=g, index=index: gate(g).index_select(0, index))
        for b in branches:
            bank.set(b, lambda b=b: gate(b))
        return bank

    def restore(self, ctx) -> None:
        """Trained weights into the original module at their original elements; the original
        graph, module and analysis back in ``ctx`` (see the module docstring)."""
        if not self.active:
            return
        original, analysis, weights = self._original
        current = ctx.imported
        with torch.no_grad():
            for name, ref in original.params.items():
                cur_ref = current.params.get(name)
                if cur_ref is None:
                    continue  # removed with its structure; gated to 0 in the original
                value = gates.original(current.module, cur_ref.module_path, cur_ref.attr)
                target = gates.original(original.module, ref.module_path, ref.attr)
                if ref.transpose:
                    value, target = value.t(), target.t()
                kept = self.elements.get(name)
                if kept is None:
                    target.copy_(value)
                else:
                    index = np.ix_(*[np.arange(n) if k is None else k for k, n in zip(kept, target.shape)])
                    target[tuple(torch.from_numpy(i).to(target.device) for i in index)] = value
        for field in ("onnx_model", "module", "params", "check", "frozen"):
            setattr(ctx.imported, field, getattr(original, field))
        ctx.analysis, ctx.model, ctx.weights = analysis, original.module, weights


def _dims(imported, name: str) -> tuple[int, ...]:
    return next(tuple(i.dims) for i in imported.onnx_model.graph.initializer if i.name == name)


def _kept_elements(analysis, plan: PruningPlan, model) -> dict[str, list[np.ndarray | None]]:
    """Per sliced initializer and ONNX axis, the kept elements (None: axis untouched), as the
    channel pass cuts them: every producer and consumer axis of a group loses its removed channels."""
    dims = {i.name: tuple(i.dims) for i in model.graph.initializer}
    cuts: dict[str, dict[int, set[int]]] = {}
    for group_id, kept in plan.kept.items():
        group = analysis.group(group_id)
        removed = sorted(set(range(group.size)) - set(kept))
        for axis in (*group.producers, *group.consumers):
            cuts.setdefault(axis.name, {}).setdefault(axis.axis, set()).update(axis.element_indices(removed).tolist())
    out = {}
    for name, axes in cuts.items():
        out[name] = [None if a not in axes else np.setdiff1d(np.arange(n), sorted(axes[a]))
                     for a, n in enumerate(dims[name])]
    return out


def _selector(kept: list[np.ndarray | None] | None, transpose: bool, device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> x`` restricted to the kept elements, in torch layout (a transposed weight swaps axes)."""
    if kept is None:
        return lambda x: x
    axes = list(reversed(kept)) if transpose else list(kept)
    index = [(a, torch.from_numpy(k).to(device)) for a, k in enumerate(axes) if k is not None]

    def select(x: torch.Tensor) -> torch.Tensor:
        for axis, k in index:
            x = x.index_select(axis, k.to(x.device))
        return x
    return select


def same_outputs(old: torch.nn.Module, new: torch.nn.Module, feeds: Mapping[str, np.ndarray], device) -> str | None:
    """None if both modules (eval mode, no grad) give the same outputs on ``feeds`` (atol 1e-5,
    rtol 1e-4), else why not."""
    from onnxprune.errors import VerificationError
    from onnxprune.graph.verify import assert_close

    outputs = []
    for module in (old, new):
        modes = {m: m.training for m in module.modules()}
        module.eval()
        try:
            with torch.no_grad():
                out = module(*(torch.from_numpy(np.ascontiguousarray(x)).to(device) for x in feeds.values()))
        finally:
            for m, mode in modes.items():
                m.train(mode)
        outputs.append([o.detach().cpu().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))])
    try:
        assert_close(outputs[0], outputs[1], what="compacted vs gated model")
    except VerificationError as exc:
        return str(exc)
    return None
