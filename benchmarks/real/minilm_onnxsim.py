"""The peer on all-MiniLM-L6-v2: onnxsim 0.8.1's structured and attention-head pruning, on the
same model, sentences and MAC budget as ``benchmarks/real/minilm.py``.

    python benchmarks/real/minilm_onnxsim.py [--target-macs 0.5] [--seq-len 128] [--train 512] [--test 256]

onnxsim prunes ONNX directly, so it gets our export (TorchScript, dynamic batch and sequence).
Its pruning matches fused patterns only, so the model goes through the fusions a user of it
would run first:

1. ``onnxsim.simplify`` alone leaves the FFN as MatMul -> Div/Erf/Add/Mul/Mul -> MatMul, which
   its producer/consumer walk does not cross: ``apply_structured_pruning`` then removes nothing.
2. onnxruntime's transformer optimizer (``model_type="bert"``, ``opt_level=0``) fuses each FFN's
   bias and erf-GELU into ``com.microsoft.BiasGelu``, which onnxsim's walk does cross. It fuses
   no ``Attention`` on this export (the attention mask is added to the scores), and onnxsim's
   own ``fuse_attention`` pass declines masked attention by design, so
   ``apply_attention_head_pruning`` finds no attention op: heads stay.
3. ``apply_structured_pruning`` (L2 norm, per-layer ``sparsity``), with ``sparsity`` bisected on
   ``onnxprune.graph.macs.count_macs`` at [1, seq] until the MACs are within 2% of the target
   (the FFN is 63% of the MACs, so 50% needs most of its width).
4. Recovery: ``onnxsim.apply_pruning_finetune`` (a closed-form ridge refit of each surviving
   MatMul/Gemm onto the original's activations) on the calibration sentences, the same ones our
   run trains on.

The metrics are ``minilm.py``'s: mean held-out cosine of the sentence embeddings and
nearest-neighbour agreement, by onnxruntime, and the ORT CPU p50 latency ratio at batch 1 and
the sequence length, all models timed side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.real import assets  # noqa: E402
from benchmarks.real.minilm import embed, nn_agreement, tokens  # noqa: E402


def fuse_for_onnxsim(path: Path) -> onnx.ModelProto:
    """Step 2: onnxruntime's BERT fusions (BiasGelu), the form onnxsim's FFN walk understands."""
    from onnxruntime.transformers import optimizer

    return optimizer.optimize_model(str(path), model_type="bert", num_heads=12, hidden_size=384,
                                    opt_level=0, use_gpu=False).model


def count_nodes(model: onnx.ModelProto, op_type: str) -> int:
    return sum(node.op_type == op_type for node in model.graph.node)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())


def bisect_sparsity(model: onnx.ModelProto, target: float, macs_of, steps: int = 12) -> tuple[float, onnx.ModelProto]:
    """The per-layer sparsity whose pruned model's MAC fraction is closest to ``target``."""
    from onnxsim import pruning

    low, high, best = 0.0, 0.99, None
    for _ in range(steps):
        middle = (low + high) / 2
        pruned = pruning.apply_structured_pruning(model, sparsity=middle)
        fraction = macs_of(pruned)
        print(f"  sparsity {middle:.4f}: MACs {fraction:.1%}", flush=True)
        if best is None or abs(fraction - target) < abs(best[1] - target):
            best = (middle, fraction, pruned)
        if abs(fraction - target) <= 0.02 * target:
            break
        low, high = (middle, high) if fraction > target else (low, middle)
    return best[0], best[2]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--train", type=int, default=512, help="calibration sentences (as minilm.py's)")
    parser.add_argument("--refit", type=int, default=128,
                        help="of which the ridge refit uses the first N: onnxsim holds every layer's activations "
                             "for all of them at once (10+ GB at 512 x 128 tokens)")
    parser.add_argument("--test", type=int, default=256, help="held-out sentences")
    parser.add_argument("--refit-seq-len", type=int, default=64,
                        help="the refit's sentences are tokenized to this length (our runs train at 64): onnxsim "
                             "knows no attention mask, so padding positions count as data in its least squares")
    parser.add_argument("--sparsity", type=float, default=None, help="skip the bisection, use this sparsity")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-seconds", type=float, default=6.0)
    args = parser.parse_args(argv)

    import onnxsim
    from onnxsim import pruning
    from onnxsim.finetune import apply_pruning_finetune

    from onnxprune.graph.macs import count_macs
    from onnxprune.measure.latency import measure_latency

    path = assets.minilm_onnx("torchscript")
    original = onnx.load(str(path))
    shapes = {name: (1, args.seq_len) for name in assets.MINILM_INPUTS}
    macs0 = count_macs(original, shapes).total_macs

    def macs_of(model: onnx.ModelProto) -> float:
        return count_macs(model, shapes).total_macs / macs0

    train, test = assets.split_fortunes(assets.fortune_texts(), args.train, args.test)
    held = tokens([text for text, _, _ in test], args.seq_len)
    calib = tokens([text for text, _, _ in train[:args.refit]], args.refit_seq_len)
    e0 = embed(str(path), held, args.threads)

    started = time.perf_counter()
    simplified, _ = onnxsim.simplify(original)
    untouched = pruning.apply_structured_pruning(simplified, sparsity=0.5)
    fused = fuse_for_onnxsim(path)
    heads = pruning.apply_attention_head_pruning(fused, sparsity=0.5)
    print("bisecting onnxsim's sparsity on the MACs", flush=True)
    if args.sparsity is None:
        sparsity, pruned = bisect_sparsity(fused, args.target_macs, macs_of)
    else:
        sparsity, pruned = args.sparsity, pruning.apply_structured_pruning(fused, sparsity=args.sparsity)
    print("ridge refit", flush=True)
    batches = [{k: v[i:i + 32] for k, v in calib.items()} for i in range(0, len(calib["input_ids"]), 32)]
    recovered = apply_pruning_finetune(fused, pruned, calibration_data=batches)
    seconds = time.perf_counter() - started

    rows = {"no recovery": pruned, "ridge refit (apply_pruning_finetune)": recovered}
    figures = {}
    for name, model in rows.items():
        e1 = embed(model, held, args.threads)
        figures[name] = {"macs_ratio": macs_of(model), "params": count_macs(model, shapes).total_params,
                         "mean_cosine": mean_cosine(e0, e1), "nn_agreement": nn_agreement(e0, e1)}
    feeds = {k: v[:1] for k, v in held.items()}
    stats = measure_latency([original, *rows.values()], feeds, provider="cpu", threads=args.threads, batch=1,
                            seconds=args.latency_seconds, names=["original", *rows])
    for stat in stats[1:]:
        figures[stat.name]["latency_ratio"] = stats[0].p50_ms / stat.p50_ms
    result = {
        "peer": f"onnxsim {onnxsim.__version__}", "target_macs": args.target_macs, "seq_len": args.seq_len,
        "train_sentences": len(train), "refit_sentences": len(calib["input_ids"]),
        "refit_seq_len": args.refit_seq_len, "test_sentences": len(test), "sparsity": sparsity,
        "seconds": round(seconds, 1),
        "simplify_only_macs_ratio": macs_of(untouched),
        "attention_ops_after_fusion": count_nodes(fused, "Attention") + count_nodes(fused, "MultiHeadAttention"),
        "head_pruning_macs_ratio": macs_of(heads), "rows": figures,
    }
    out = assets.cache_dir() / "minilm-runs" / f"onnxsim_{args.target_macs}_s{args.seq_len}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures.json").write_text(json.dumps(result, indent=2))
    onnx.save(recovered, str(out / "pruned.onnx"))
    print(f"onnxsim.simplify + apply_structured_pruning(0.5): MACs {result['simplify_only_macs_ratio']:.1%} "
          "(nothing crosses the erf-GELU)")
    print(f"after onnxruntime's BERT fusions: {result['attention_ops_after_fusion']} attention ops; "
          f"apply_attention_head_pruning(0.5): MACs {result['head_pruning_macs_ratio']:.1%}")
    for name, row in figures.items():
        print(f"sparsity {sparsity:.3f}, {name}: MACs {row['macs_ratio']:.1%}, mean cosine {row['mean_cosine']:.4f}, "
              f"NN agreement {row['nn_agreement']:.1%}, ORT CPU {row['latency_ratio']:.2f}x "
              f"(batch 1, seq {args.seq_len}, {args.threads} threads)")
    print(f"onnxsim steps {seconds:.0f} s; figures in {out / 'figures.json'}")
    return result


if __name__ == "__main__":
    main()
