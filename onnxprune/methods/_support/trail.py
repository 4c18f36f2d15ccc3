"""``--trail DIR``: pruned models at the MAC levels a taper passes, with a table.

When the budget crosses a level (every 10% of the original MACs between the start and the
target), the current gates select channels to that level (:func:`resource.select_to_budget`),
the kept gates are folded into the weights, the weights are written back into the ONNX graph
and the plan is applied: ``DIR/macs_<pct>.onnx``. These snapshots are not fine-tuned with their
selection fixed (the final model is); ``DIR/trail.md`` lists MACs, params and holdout fidelity.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from onnxprune.methods._support.resource import select_to_budget

log = logging.getLogger(__name__)


def input_shapes_of(ctx) -> dict[str, tuple[int, ...]]:
    for holder in (ctx.analysis, ctx.imported):
        shapes = getattr(holder, "input_shapes", None)
        if shapes:
            return dict(shapes)
    from onnxprune.graph.shapes import resolve_input_shapes

    return resolve_input_shapes(ctx.imported.onnx_model, {})


class Trail:
    def __init__(self, folder: str, method, ctx, start: float, end: float, step: float = 0.1) -> None:
        self.folder, self.method, self.ctx = Path(folder), method, ctx
        self.levels = [round(1.0 - step * k, 6) for k in range(1, 10) if end < 1.0 - step * k < start]
        self.levels.append(end)
        self.rows: list[dict] = []
        if ctx.is_main_process:
            self.folder.mkdir(parents=True, exist_ok=True)

    def passed(self, budget_frac: float) -> None:
        """Snapshot every level the budget has reached (called after each taper step)."""
        while self.levels and budget_frac <= self.levels[0] + 1e-9:
            self.snapshot(self.levels.pop(0))

    def snapshot(self, level: float) -> None:
        if not self.ctx.is_main_process:
            return
        from onnxprune.graph.macs import count_macs
        from onnxprune.graph.modelio import save_model_atomic
        from onnxprune.importing.writeback import write_back
        from onnxprune.passes import apply_plan

        m, structure = self.method, self.method.structure
        with torch.no_grad():
            gates = {gid: g.detach().clone() for gid, g in m.gates().items()}
            masks = select_to_budget(gates, structure.resource, level * m.b0, multiple=m.multiple)
        m.selection = {gid: gates[gid] * masks[gid].to(gates[gid].device) for gid in gates}
        try:
            metrics = self.ctx.evaluate() if self.ctx.evaluate is not None else {}
            shapes = input_shapes_of(self.ctx)
            pruned = apply_plan(write_back(self.ctx.imported), structure.plan(masks), shapes)
        finally:
            m.selection = None
        cost = count_macs(pruned, shapes)
        path = self.folder / f"macs_{round(100 * level):03d}.onnx"
        save_model_atomic(pruned, path)
        row = {"level": level, "file": path.name, "macs": cost.total_macs, "params": cost.total_params,
               "step": self.ctx.step, **{k: float(v) for k, v in metrics.items()}}
        self.rows.append(row)
        log.info("trail: %s at %.0f%% of the MACs: %s", path.name, 100 * level, row)

    def write_table(self) -> None:
        if not self.ctx.is_main_process or not self.rows:
            return
        keys = list(dict.fromkeys(k for row in self.rows for k in row))
        lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
        for row in self.rows:
            lines.append("| " + " | ".join(f"{row.get(k, ''):.4g}" if isinstance(row.get(k), float) else str(row.get(k, ""))
                                           for k in keys) + " |")
        (self.folder / "trail.md").write_text("\n".join(lines) + "\n")
