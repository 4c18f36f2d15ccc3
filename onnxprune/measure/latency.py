"""Latency, throughput and memory of ONNX models on onnxruntime, measured side by side.

For a list of models and their input feeds, :func:`measure_latency` creates one
``InferenceSession`` per model (fixed ``intra_op_num_threads``, one inter-op thread, full graph
optimization), warms each up, then times them *interleaved*: every round runs each model for a
short block of calls, alternating the order of models between rounds (A B, B A, A B, ...). On a
noisy shared machine a slow period then hits every model alike, so their ratios stay meaningful
even when the absolute figures drift. Rounds continue until the time budget ``seconds`` is spent
and every model has at least ``min_runs`` timed calls.

Each call is timed alone with ``time.perf_counter_ns``; over the n timed calls t_1..t_n:

    p50, p90, p99 = the 50th, 90th and 99th percentiles of t (linear interpolation)
    mean = sum(t) / n,  std = the sample standard deviation (spread)
    throughput = batch / mean   (samples per second for one synchronous caller)

A model with a fixed batch B (inputs declared [B, ...], see ``onnxprune.graph.batching``) is timed at
batch B: ``batch=None`` means the models' fixed batch (1 for dynamic ones), and another batch is
an error (:func:`resolve_batch`), since onnxruntime runs such a model only at B.

Peak memory is measured before the timing, one model at a time:

- CPU: the growth of the process's peak resident set (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs``) while the session is created and ``memory_runs`` inferences run.
  It covers the session's weights, its arena and the outputs; ``memory_kind = "rss-peak-delta"``.
- CUDA/TensorRT: the drop of free device memory (``cudaMemGetInfo`` through torch) over the same
  span. onnxruntime's BFC arena keeps what it grew to, so this approximates the device peak;
  ``memory_kind = "device-used-delta"``.

On CUDA the inputs are copied to the device once and bound with I/O binding, outputs stay on the
device, so the figures are the model's compute, not host-device copies.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import io
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.sessions import make_session

log = logging.getLogger(__name__)

PROVIDERS = ("cpu", "cuda", "tensorrt")
_ORT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class ProviderUnavailableError(OnnxPruneError):
    """The requested execution provider cannot run here (no GPU, missing libraries)."""


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Timing of one model under one (provider, batch, threads) setting; times in milliseconds."""

    name: str
    provider: str
    batch: int
    threads: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # samples per second
    peak_memory_bytes: int | None
    memory_kind: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """(usable, reason): whether a CUDA device and onnxruntime's CUDA provider can be used.

    torch is imported first so onnxruntime finds torch's CUDA libraries; ``preload_dlls`` then
    loads any that torch did not (its chatter goes to the debug log, not the user's terminal).
    """
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider"
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (needed to find the CUDA libraries)"
    if not torch.cuda.is_available():
        return False, "no CUDA device found"
    if hasattr(ort, "preload_dlls"):
        chatter = io.StringIO()
        with contextlib.redirect_stdout(chatter):
            ort.preload_dlls()
        if chatter.getvalue().strip():
            log.debug("onnxruntime.preload_dlls: %s", chatter.getvalue().strip())
    return True, f"CUDA device {torch.cuda.get_device_name(0)}"


def provider_status(provider: str, threads: int | None = None) -> tuple[bool, str]:
    """(usable, reason) for ``provider``, found by running a one-node model on it: a provider
    can be compiled in and still fail to load its libraries (CUDA, cuDNN, TensorRT)."""
    try:
        _warm_runtime(provider, resolve_threads(threads))
    except ProviderUnavailableError as exc:
        return False, str(exc).split(": ", 1)[-1]
    return True, provider


def create_session(model: onnx.ModelProto | bytes, provider: str = "cpu", threads: int | None = None):
    """An ``InferenceSession`` on ``provider`` with a fixed thread count; raises if the provider
    silently fell back to the CPU (onnxruntime does that when a GPU provider fails to load)."""
    if provider not in _ORT_PROVIDERS:
        raise OnnxPruneError(f"unknown provider {provider!r} (choose from {', '.join(PROVIDERS)})")
    if provider != "cpu":
        usable, reason = cuda_status()
        if not usable:
            raise ProviderUnavailableError(f"provider {provider!r} unavailable: {reason}")
    # full graph optimizations (onnxruntime's default); provider fallbacks are checked below
    session = make_session(model, _ORT_PROVIDERS[provider], threads=resolve_threads(threads), sequential=True)
    wanted = _ORT_PROVIDERS[provider][0]
    if session.get_providers()[0] != wanted:
        raise ProviderUnavailableError(
            f"provider {provider!r} unavailable: onnxruntime fell back to {session.get_providers()}"
        )
    return session


def resolve_threads(threads: int | None) -> int:
    """The intra-op thread count: ``threads``, or every CPU this process may run on."""
    if threads is not None:
        if threads < 1:
            raise OnnxPruneError(f"--threads must be >= 1, got {threads}")
        return threads
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_batch(models: Sequence[onnx.ModelProto], batch: int | None = None, option: str = "--batch",
                  names: Sequence[str] | None = None) -> int:
    """The batch to time ``models`` at: ``batch`` when every model takes it, the fixed batch the
    fixed-batch models share when ``batch`` is None (1 when all are dynamic); otherwise one
    OnnxPruneError line that says why."""
    from onnxprune.graph.batching import fixed_batch, fixed_batch_note

    names = list(names) if names is not None else [_default_name(m, i) for i, m in enumerate(models)]
    fixed = [(name, model, fixed_batch(model)) for name, model in zip(names, models)]
    fixed = [(name, model, b) for name, model, b in fixed if b is not None]
    if batch is None:
        if len({b for _, _, b in fixed}) > 1:
            raise OnnxPruneError(f"the models have different fixed batches ({', '.join(f'{n}: {b}' for n, _, b in fixed)}); "
                                 "onnxruntime runs each only at its own, so they cannot be timed side by side")
        return fixed[0][2] if fixed else 1
    for name, model, b in fixed:
        if b != batch:
            raise OnnxPruneError(
                f"{option} {batch}: {fixed_batch_note(model, name)}, a fixed batch of {b}: onnxruntime runs it "
                f"only with {b} sample(s) per call, so it is measured at batch {b} (give {option} {b} or leave "
                f"it out, or export the model with a dynamic batch axis)")
    return batch


def batch_feeds(feeds: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Feeds with ``batch`` rows along axis 0, repeating the given rows cyclically if too few."""
    out = {}
    for name, array in feeds.items():
        array = np.asarray(array)
        if array.ndim == 0 or array.shape[0] == batch:
            out[name] = array if array.flags.c_contiguous else array.copy(order="C")
            continue
        if array.shape[0] == 0:
            raise OnnxPruneError(f"input {name!r} has no rows to make a batch of {batch}")
        rows = np.arange(batch) % array.shape[0]
        out[name] = np.ascontiguousarray(array[rows])
    return out


class _Runner:
    """One model's session and a zero-argument call that runs it once, synchronously."""

    def __init__(self, session, feeds: Mapping[str, np.ndarray], provider: str) -> None:
        self.session = session
        if provider == "cpu":
            feeds = dict(feeds)
            self.run = lambda: session.run(None, feeds)
            return
        import onnxruntime as ort

        binding = session.io_binding()
        # keep the device copies alive as long as the binding refers to them
        self._device_inputs = {
            name: ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0) for name, array in feeds.items()
        }
        for name, value in self._device_inputs.items():
            binding.bind_ortvalue_input(name, value)
        for output in session.get_outputs():
            binding.bind_output(output.name, "cuda", 0)
        self.run = lambda: session.run_with_iobinding(binding)


def _rss_peak_bytes() -> int | None:
    from onnxprune.graph.runtime_checks import proc_kib_field

    return proc_kib_field("/proc/self/status", "VmHWM")


def _reset_rss_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not possible.

    Free heap pages are first handed back to the OS (glibc ``malloc_trim``): otherwise a new
    session may reuse memory that earlier work freed but the process still holds, and its
    growth would not show in the RSS."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure may undercount a little
        pass
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _device_free_bytes() -> int:
    import torch

    torch.cuda.synchronize()
    return torch.cuda.mem_get_info(0)[0]


_WARMED: set[tuple[str, int]] = set()


_WARM_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
warm (float[1,1,4,4] x) => (float[1,1,4,4] y)
<float[1,1,1,1] w = {1.0}, float[4,4] m = {1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1}> {
  c = Conv(x, w)
  r = Relu(c)
  y = MatMul(r, m)
}
"""


def _warm_runtime(provider: str, threads: int) -> None:
    """Runs a tiny Conv-Relu-MatMul model once, so onnxruntime's one-time setup (environment,
    kernel registries, provider libraries, cuDNN and cuBLAS on a GPU) is not counted in the
    first measured model's memory."""
    if (provider, threads) in _WARMED:
        return
    tiny = onnx.parser.parse_model(_WARM_MODEL)
    _Runner(create_session(tiny, provider, threads), {"x": np.zeros((1, 1, 4, 4), np.float32)}, provider).run()
    _WARMED.add((provider, threads))


def _create_measured(data: bytes, feeds, provider: str, threads: int, memory_runs: int):
    """Creates a session and runs it ``memory_runs`` times; returns (runner, peak bytes, kind)."""
    _warm_runtime(provider, threads)
    if provider == "cpu":
        if _reset_rss_peak():
            base = _rss_peak_bytes()
            runner = _Runner(create_session(data, provider, threads), feeds, provider)
            for _ in range(memory_runs):
                runner.run()
            peak = _rss_peak_bytes()
            if base is not None and peak is not None:
                return runner, max(peak - base, 0), "rss-peak-delta"
        runner = _Runner(create_session(data, provider, threads), feeds, provider)
        return runner, None, "unavailable"
    free_before = _device_free_bytes()
    runner = _Runner(create_session(data, provider, threads), feeds, provider)
    for _ in range(memory_runs):
        runner.run()
    return runner, max(free_before - _device_free_bytes(), 0), "device-used-delta"


def _model_bytes(model: onnx.ModelProto | str | os.PathLike) -> bytes:
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    from onnxprune.graph.modelio import load_model  # external data is inlined by the loader

    return load_model(model).SerializeToString()


def _load_proto(path: str | os.PathLike) -> onnx.ModelProto:
    from onnxprune.graph.modelio import load_model  # external data is inlined by the loader

    return load_model(path)


def _default_name(model: onnx.ModelProto | str | os.PathLike, index: int) -> str:
    if isinstance(model, onnx.ModelProto):
        return model.graph.name or f"model{index}"
    return Path(model).stem


def measure_latency(
    models: Sequence[onnx.ModelProto | str | os.PathLike],
    feeds: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
    provider: str = "cpu",
    threads: int | None = None,
    batch: int | None = None,
    seconds: float = 2.0,
    min_runs: int = 20,
    warmup: int = 5,
    block_seconds: float = 0.05,
    memory_runs: int = 2,
    names: Sequence[str] | None = None,
) -> list[LatencyStats]:
    """Times ``models`` interleaved on ``provider``; one :class:`LatencyStats` per model, in order.

    ``feeds`` is one input dict shared by all models or one per model; each is cut or repeated
    along axis 0 to ``batch`` rows (None: the models' fixed batch, or 1; a batch a fixed-batch
    model cannot take is an error, :func:`resolve_batch`). ``threads`` fixes onnxruntime's intra-op threads (default:
    all CPUs of this process). After ``warmup`` untimed calls per model, rounds of about
    ``block_seconds`` per model run until ``seconds`` have passed and every model has
    ``min_runs`` timed calls.
    """
    if not models:
        raise OnnxPruneError("no models to measure")
    if batch is not None and batch < 1:
        raise OnnxPruneError(f"batch must be >= 1, got {batch}")
    protos = [m if isinstance(m, onnx.ModelProto) else _load_proto(m) for m in models]
    names = list(names) if names is not None else [_default_name(m, i) for i, m in enumerate(models)]
    batch = resolve_batch(protos, batch, "batch", names)
    per_model = [feeds] * len(models) if isinstance(feeds, Mapping) else list(feeds)
    if len(per_model) != len(models):
        raise OnnxPruneError(f"{len(per_model)} feed dicts for {len(models)} models")
    n_threads = resolve_threads(threads)

    runners, memory = [], []
    for model, model_feeds in zip(protos, per_model):
        data, batched = _model_bytes(model), batch_feeds(model_feeds, batch)
        runner, peak, kind = _create_measured(data, batched, provider, n_threads, memory_runs)
        runners.append(runner)
        memory.append((peak, kind))

    # warm-up: first calls allocate arenas and pick kernels; their times are not kept
    for runner in runners:
        for _ in range(warmup):
            runner.run()

    times: list[list[int]] = [[] for _ in runners]
    blocks = [1] * len(runners)  # the first round measures one call each to size the blocks
    deadline = time.perf_counter() + seconds
    round_index = 0
    while time.perf_counter() < deadline or min(len(t) for t in times) < min_runs:
        order = range(len(runners)) if round_index % 2 == 0 else reversed(range(len(runners)))
        for i in order:
            run, out = runners[i].run, times[i]
            for _ in range(blocks[i]):
                start = time.perf_counter_ns()
                run()
                out.append(time.perf_counter_ns() - start)
            # about block_seconds per model and round, from the median so far (robust to the
            # odd call that was preempted)
            typical = float(np.median(out[-256:])) / 1e9
            blocks[i] = max(1, min(int(block_seconds / max(typical, 1e-9)), 1000))
        round_index += 1

    return [
        _stats(name, provider, batch, n_threads, np.asarray(t, dtype=np.float64) / 1e6, *mem)
        for name, t, mem in zip(names, times, memory)
    ]


def _stats(name, provider, batch, threads, ms: np.ndarray, peak, kind) -> LatencyStats:
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return LatencyStats(
        name=name,
        provider=provider,
        batch=batch,
        threads=threads,
        runs=int(ms.size),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=mean,
        std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        throughput=batch / (mean / 1e3),
        peak_memory_bytes=peak,
        memory_kind=kind,
    )
