"""Hostile input and faults: nothing written, nothing broken, one clear line, at every step.

A table of generated cases: broken models, calibration files, output paths (fifos, sockets,
device nodes made in a temporary folder, never real /dev nodes), options, and Ctrl-C at named
moments of a run. Every case asserts the promise of docs/errors.md:

- the exit code;
- exactly one ``error:`` line on stderr, and no traceback;
- no file left behind: the work folder holds exactly what it held before (hidden files included);
- every file that was there is byte-for-byte unchanged (the input model, the data, an existing
  output).

Most cases fail before any training and run in-process (``main(argv)``); the signal cases run
the real command line in a subprocess, which receives SIGINT at a named point
(``$ONNXPRUNE_FAULT_AT``, see onnxprune/run/outputs.py) or from outside while it trains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli.main import main
from tests.support.models import SAMPLE_MODELS, make_tiny_conv
from tests.support.processes import default_sigint

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


# --- building blocks ---------------------------------------------------------------------------

def _digits(n: int = 48) -> dict[str, np.ndarray]:
    data = np.load(SAMPLE_MODELS / "digits_train.npz")
    return {"image": data["image"][:n], "labels": data["labels"][:n]}


def _embedding_model() -> onnx.ModelProto:
    """ids int64 [N, 5] -> Gather from a 20-row table -> mean -> MatMul -> y [N, 3]."""
    rng = np.random.default_rng(0)
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    inits = [numpy_helper.from_array(rng.standard_normal((20, 8)).astype("float32"), "emb"),
             numpy_helper.from_array(rng.standard_normal((8, 3)).astype("float32"), "w"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")]
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
             helper.make_node("ReduceMean", ["e", "axes"], ["m"], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "embed", [ids], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def _external(work: Path, folder: str, location: Callable[[Path], str], data_bytes: int | None = None) -> Path:
    """The mlp sample saved with external data, then its location rewritten (or data cut)."""
    where = work / folder
    where.mkdir(parents=True)
    onnx.save(onnx.load(str(SAMPLE_MODELS / "mlp.onnx")), str(where / "mlp.onnx"),
              save_as_external_data=True, location="mlp.data", size_threshold=0)
    model = onnx.load(str(where / "mlp.onnx"), load_external_data=False)
    new = location(where)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = new
    onnx.save(model, str(where / "mlp.onnx"))
    if data_bytes is not None:
        with open(where / "mlp.data", "r+b") as data:
            data.truncate(data_bytes)
    return where / "mlp.onnx"


class Work:
    """The case's folder: inputs are built here, outputs are aimed here."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def model(self, name: str = "mlp") -> str:
        target = self.path / f"{name}.onnx"
        if not target.exists():
            shutil.copy(SAMPLE_MODELS / f"{name}.onnx", target)
        return str(target)

    def onnx(self, model: onnx.ModelProto, name: str) -> str:
        onnx.save(model, str(self.path / name))
        return str(self.path / name)

    def npz(self, name: str = "calib.npz", **arrays) -> str:
        np.savez(self.path / name, **(arrays or _digits()))
        return str(self.path / name)

    def text(self, name: str, text: str) -> str:
        (self.path / name).write_text(text)
        return str(self.path / name)

    def fifo(self, name: str) -> str:
        os.mkfifo(self.path / name)
        return str(self.path / name)

    def char_device(self, name: str) -> str:  # the numbers of /dev/null, made here; root only
        os.mknod(self.path / name, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        return str(self.path / name)

    def socket(self, name: str) -> str:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path / name))
        sock.close()  # the socket file stays
        return str(self.path / name)

    def folder(self, name: str, files: dict[str, str] | None = None) -> str:
        (self.path / name).mkdir()
        for file, text in (files or {}).items():
            (self.path / name / file).write_text(text)
        return str(self.path / name)


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> content hash (or file type) for everything under ``root``."""
    out = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        key = str(path.relative_to(root))
        if stat.S_ISREG(mode):
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISDIR(mode):
            out[key] = "dir"
        else:
            out[key] = f"special {stat.S_IFMT(mode):o}"
    return out


def assert_promise(code: int, stderr: str, expected_code: int, fragment: str, before: dict, after: dict) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert fragment.lower() in errors[0].lower(), errors[0]
    assert code == expected_code, stderr
    assert set(after) == set(before), f"left behind: {sorted(set(after) - set(before))}, gone: {sorted(set(before) - set(after))}"
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"changed: {changed}"


# --- the table -----------------------------------------------------------------------------------

MAG = ["--method", "magnitude", "--sparsity", "0.5", "--epochs", "1", "--quiet", "--latency-seconds", "0"]
LAG = ["--method", "lagrangian", "--epochs", "1", "--quiet"]
BER = ["--method", "bernoulli", "--epochs", "1", "--quiet"]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[Work], list[str]]
    fragment: str
    code: int = 2
    root_only: bool = False
    non_root_only: bool = False


def prune(w: Work, *extra: str, model: str | None = None, calib: str | None = None, out: str = "out.onnx",
          method: list[str] = MAG) -> list[str]:
    return [model or w.model(), *method, "--calib", calib or w.npz(), "--out", str(w / out), *extra]


CASES = [
    # broken models
    Case("model truncated", lambda w: prune(w, model=str(_write_bytes(
        w / "t.onnx", make_tiny_conv().SerializeToString()[:150]))), "not a valid ONNX model"),
    Case("model is text", lambda w: prune(w, model=w.text("notes.onnx", "hello\n" * 20)), "not a valid ONNX model"),
    Case("model empty", lambda w: prune(w, model=w.text("empty.onnx", "")), "empty"),
    Case("model missing", lambda w: prune(w, model=str(w / "absent.onnx")), "no such file"),
    Case("model is a folder", lambda w: prune(w, model=w.folder("m.onnx")), "directory"),
    Case("unsupported op", lambda w: prune(w, model=w.onnx(onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]> g (float[N,4] x) => (float[N,4] y) '
        '{ h = Hardmax (x)  y = Relu (h) }'), "hardmax.onnx")), "Hardmax"),
    Case("opset the runtime lacks", lambda w: prune(w, model=w.onnx(_opset(99), "opset99.onnx")), "opset 99"),
    Case("external data missing", lambda w: prune(w, model=str(_missing_data(w))), "external data file missing"),
    Case("external data outside the folder (..)", lambda w: prune(w, model=str(
        _external(w, "m", lambda d: "../outside.data"))), "outside the model's folder"),
    Case("external data absolute path", lambda w: prune(w, model=str(
        _external(w, "m", lambda d: str(d / "mlp.data")))), "outside the model's folder"),
    # an input with external data writes OUT.onnx.data beside OUT.onnx: that path is checked up front too
    Case("external data output is a folder", lambda w: prune(w, model=_external_with_data_folder(w), out="out.onnx"),
         "out.onnx.data"),
    Case("external data truncated", lambda w: prune(w, model=str(
        _external(w, "m", lambda d: "mlp.data", data_bytes=1000))), "truncated"),
    # calibration data
    Case("calib missing", lambda w: prune(w, calib=str(w / "absent.npz")), "no such file"),
    Case("calib not an npz", lambda w: prune(w, calib=w.text("c.npz", "not a zip")), "cannot read"),
    Case("calib wrong input name", lambda w: prune(w, calib=w.npz(pixels=_digits()["image"])), "'pixels'"),
    Case("calib wrong shape", lambda w: prune(w, calib=w.npz(image=np.zeros((8, 1, 4, 4), "float32"))), "shape"),
    Case("calib NaN", lambda w: prune(w, calib=w.npz(image=np.full((8, 1, 8, 8), np.nan, "float32"))), "NaN"),
    Case("calib int for float input", lambda w: prune(w, calib=w.npz(image=np.zeros((8, 1, 8, 8), "int32"))),
         "dtype"),
    Case("calib folder, mixed shapes", lambda w: prune(w, calib=_folder_of(w, [(16, 8), (16, 4)])),
         "one shape and dtype"),
    Case("calib folder, mixed dtypes", lambda w: prune(w, calib=_folder_of(w, [(16, 8), (16, 8)], "float64")),
         "one shape and dtype"),
    Case("calib folder empty", lambda w: prune(w, calib=w.folder("empty")), "no .npy or .npz"),
    Case("labels out of range", lambda w: prune(w, calib=w.npz(image=_digits()["image"],
                                                              labels=_digits()["labels"] + 10)), "out of range"),
    Case("labels negative", lambda w: prune(w, calib=w.npz(image=_digits()["image"],
                                                          labels=_digits()["labels"] - 5)), ">= 0"),
    Case("labels float", lambda w: prune(w, calib=w.npz(image=_digits()["image"],
                                                       labels=_digits()["labels"].astype("float32"))), "integer"),
    Case("labels wrong count", lambda w: prune(w, calib=w.npz(image=_digits()["image"],
                                                             labels=_digits()["labels"][:5])), "shape"),
    Case("token ids beyond the embedding", lambda w: prune(
        w, model=w.onnx(_embedding_model(), "embed.onnx"),
        calib=w.npz(ids=np.random.default_rng(0).integers(0, 200, (16, 5)))), "must lie in [-20, 19]"),
    # options
    Case("--lr nan", lambda w: prune(w, "--lr", "nan"), "finite"),
    Case("--lr inf", lambda w: prune(w, "--lr", "inf"), "finite"),
    Case("--lr 0", lambda w: prune(w, "--lr", "0"), "--lr"),
    Case("--lr -1", lambda w: prune(w, "--lr", "-1"), "--lr"),
    Case("--temperature nan", lambda w: prune(w, "--temperature", "nan"), "finite"),
    Case("--holdout 1.5", lambda w: prune(w, "--holdout", "1.5"), "--holdout"),
    Case("unknown option", lambda w: prune(w, "--bogus"), "no such option"),
    Case("missing --method", lambda w: [w.model(), "--calib", w.npz(), "--out", str(w / "o.onnx")], "--method"),
    Case("another method's option", lambda w: prune(w, "--sparsity", "0.5", method=LAG), "does not apply"),
    Case("-v before the model", lambda w: ["-v", *prune(w, calib=str(w / "absent.npz"))], "no such file"),
    Case("lagrangian --target-macs 1.5", lambda w: prune(w, "--target-macs", "1.5", method=LAG), "(0, 1]"),
    Case("lagrangian --target-macs 3e6", lambda w: prune(w, "--target-macs", "3e6", method=LAG), "3M"),
    Case("lagrangian --target-macs 0.0001", lambda w: prune(w, "--target-macs", "0.0001", method=LAG),
         "smallest model"),
    Case("lagrangian --target-macs 2G", lambda w: prune(w, "--target-macs", "2G", method=LAG), "more than"),
    Case("lagrangian --target-macs half", lambda w: prune(w, "--target-macs", "half", method=LAG), "expected"),
    Case("bernoulli --target-macs 1.5", lambda w: prune(w, "--target-macs", "1.5", method=BER), "(0, 1]"),
    Case("bernoulli --target-macs 0.0001", lambda w: prune(w, "--target-macs", "0.0001", method=BER),
         "smallest model"),
    # output paths
    Case("--out is a fifo", lambda w: prune(w, out=Path(w.fifo("o.onnx")).name), "a fifo"),
    Case("--out is a socket", lambda w: prune(w, out=Path(w.socket("o.onnx")).name), "a socket"),
    Case("--out is a character device", lambda w: prune(w, out=Path(w.char_device("o.onnx")).name),
         "a character device", root_only=True),
    Case("--out is a folder", lambda w: prune(w, out=Path(w.folder("o.onnx")).name), "directory"),
    Case("--out in a missing folder", lambda w: prune(w, out="nowhere/o.onnx"), "does not exist"),
    Case("--out in /proc", lambda w: [*prune(w)[:-2], "--out", "/proc/onnxprune-test.onnx"], "cannot write"),
    Case("--out in a read-only folder", lambda w: prune(w, out=_read_only(w) + "/o.onnx"), "cannot write",
         non_root_only=True),
    Case("--out is the input", lambda w: prune(w, out="mlp.onnx"), "input"),
    Case("--report is --out", lambda w: prune(w, "--report", str(w / "out.onnx")), "same path"),
    Case("--report .json in /proc", lambda w: prune(w, "--report", "/proc/onnxprune-test.json"), "cannot write"),
    Case("--report DIR in /proc", lambda w: prune(w, "--report", "/proc/onnxprune-test"), "cannot write"),
    Case("--report DIR is a file", lambda w: prune(w, "--report", w.text("rep", "x")), "not a directory"),
    Case("--report .json is a folder", lambda w: prune(w, "--report", w.folder("r.json")), "not a regular file"),
    Case("--report .json is a fifo", lambda w: prune(w, "--report", w.fifo("r.json")), "a fifo"),
    Case("--report DIR holds a fifo named report.md", lambda w: prune(w, "--report", _report_with_fifo(w)), "a fifo"),
    Case("--report is the rejected model", lambda w: prune(w, "--min-fidelity", "0.99", "--report",
                                                           str(w / "out.rejected.onnx")), "same path"),
    Case("--trail is --report", lambda w: prune(w, "--trail", str(w / "d"), "--report", str(w / "d"),
                                                method=LAG), "same path"),
    Case("--trail is a fifo", lambda w: prune(w, "--trail", w.fifo("tr"), method=LAG), "a fifo"),
    Case("apply --out is a fifo", lambda w: ["apply", w.model(), "--out", w.fifo("o.onnx")], "a fifo"),
    Case("apply --out in /proc", lambda w: ["apply", w.model(), "--out", "/proc/onnxprune-test.onnx"],
         "cannot write"),
    Case("apply --out is the input", lambda w: ["apply", w.model(), "--out", w.model()], "input"),
    # bench
    Case("bench opset the runtime lacks", lambda w: ["bench", w.onnx(_opset(27), "o27.onnx"), "--seconds", "0.1"],
         "opset 27"),
    Case("bench --batch 100000000", lambda w: ["bench", w.model(), "--batch", "100000000", "--seconds", "0.1"],
         "memory available"),
    Case("bench --seconds nan", lambda w: ["bench", w.model(), "--seconds", "nan"], "finite"),
    Case("bench no model", lambda w: ["bench"], "missing argument"),
]


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _opset(version: int) -> onnx.ModelProto:
    model = onnx.load(str(SAMPLE_MODELS / "mlp.onnx"))
    model.opset_import[0].version = version
    return model


def _external_with_data_folder(w: Work) -> str:
    """A valid model with external data, and a folder where its output's OUT.onnx.data would go."""
    path = _external(w, "m", lambda d: "mlp.data")
    w.folder("out.onnx.data")
    return str(path)


def _missing_data(w: Work) -> Path:
    path = _external(w, "m", lambda d: "mlp.data")
    (path.parent / "mlp.data").unlink()
    return path


def _folder_of(w: Work, parts: list[tuple[int, int]], second_dtype: str = "float32") -> str:
    folder = w / "calib"
    folder.mkdir()
    image = _digits()["image"]
    for i, (n, width) in enumerate(parts):
        array = image[:n, :, :width, :] if width != 8 else image[:n]
        np.save(folder / f"{i}.npy", array.astype(second_dtype) if i else array)
    return str(folder)


def _report_with_fifo(w: Work) -> str:
    folder = w.folder("rep", {"notes.txt": "mine"})
    w.fifo("rep/report.md")
    return folder


def _read_only(w: Work) -> str:
    folder = w / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder)


@pytest.fixture
def work(tmp_path):
    (tmp_path / "w").mkdir()
    yield Work(tmp_path / "w")
    for path in (tmp_path / "w").rglob("*"):  # let pytest remove a read-only folder
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)


@pytest.fixture
def alarm():
    """A case that hangs (a fifo opened for writing would) fails instead of hanging CI."""
    def on_alarm(signum, frame):
        raise TimeoutError("the case hung")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case(case: Case, work: Work, capsys, alarm):
    if case.root_only and not ROOT:
        pytest.skip("mknod needs root")
    if case.non_root_only and ROOT:
        pytest.skip("root writes into read-only folders")
    argv = case.argv(work)
    capsys.readouterr()
    before = snapshot(work.path)
    code = main(argv)
    stderr = capsys.readouterr().err
    assert_promise(code, stderr, case.code, case.fragment, before, snapshot(work.path))


def test_float16_calibration_is_cast_with_a_warning(work: Work, capsys, caplog):
    """float16 data for a float32 input: cast (exactly: every float16 is a float32), with a
    warning; the run succeeds."""
    data = _digits()
    calib = work.npz(image=data["image"].astype(np.float16), labels=data["labels"])
    with caplog.at_level("WARNING"):
        code = main(prune(work, calib=calib))
    assert code == 0, capsys.readouterr().err
    assert any("from float16 to float32" in r.getMessage() for r in caplog.records)
    assert (work / "out.onnx").is_file()


# --- Ctrl-C: subprocesses ------------------------------------------------------------------------

def _cli(args: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "onnxprune", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                            preexec_fn=default_sigint, **kwargs)


# (before-commit, between the last write and the first rename, lies between these; left out for time)
SIGINT_POINTS = ["after-latency", "writing-report", "mid-commit"]


@pytest.mark.parametrize("point", SIGINT_POINTS)
def test_sigint_at_a_named_point_leaves_nothing(point: str, work: Work):
    """Ctrl-C after the latency step, while the report folder is written, before and during the
    renames: exit 130, one line, none of the run's files; existing outputs (a previous run's
    model and report folder) come through unchanged."""
    args = prune(work, "--report", str(work / "rep"), "--trail", str(work / "tr"), "--target-macs", "0.5",
                 "--latency-seconds", "0.1", "--batch-size", "16", method=["--method", "lagrangian", "--epochs",
                                                                             "2", "--quiet"])
    if point == "mid-commit":  # a previous run's outputs are there: they must survive
        (work / "out.onnx").write_bytes(b"previous model")
        work.folder("rep", {"report.md": "previous report", "notes.txt": "mine"})
    before = snapshot(work.path)
    proc = _cli(args, {"ONNXPRUNE_FAULT_AT": point})
    _, stderr = proc.communicate(timeout=240)
    assert_promise(proc.returncode, stderr, 130, "interrupted", before, snapshot(work.path))


@pytest.mark.parametrize("signum,code,fragment", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_from_outside_during_training_leaves_nothing(work: Work, signum, code, fragment):
    """Ctrl-C (or SIGTERM, as a cancelled CI job sends) while the model trains."""
    args = ["-v", *prune(work, "--report", str(work / "rep"), "--target-macs", "0.5", "--batch-size", "8",
                         method=["--method", "lagrangian", "--epochs", "200", "--quiet"])]
    before = snapshot(work.path)
    proc = _cli(args)
    lines = []
    deadline = time.monotonic() + 200
    for line in proc.stderr:  # wait for the first epoch: the run is training
        lines.append(line)
        if "epoch 1/" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signum)
    _, rest = proc.communicate(timeout=120)
    assert_promise(proc.returncode, "".join(lines) + rest, code, fragment, before, snapshot(work.path))


def test_a_successful_run_commits_model_report_and_trail_together(work: Work, capsys):
    """The positive control of the signal cases: the same run without a fault writes the model
    (or, when a quality gate rejects it, OUT.rejected.onnx), the report folder and the trail
    together, and leaves no temporary files. The model records the torch thread count."""
    args = prune(work, "--report", str(work / "rep"), "--trail", str(work / "tr"), "--target-macs", "0.5",
                 "--latency-seconds", "0.1", "--batch-size", "16",
                 method=["--method", "lagrangian", "--epochs", "2", "--quiet"])
    code = main(args)
    assert code in (0, 3), capsys.readouterr().err
    names = set(snapshot(work.path))
    written = "out.onnx" if code == 0 else "out.rejected.onnx"
    assert {written, "rep/report.json", "rep/report.md", "tr"} <= names
    assert not [n for n in names if ".onnxprune-" in n]
    meta = {p.key: p.value for p in onnx.load(str(work / written)).metadata_props}
    assert int(meta["onnxprune.torch_threads"]) >= 1


def test_same_seed_and_thread_count_give_the_same_bytes(work: Work, capsys):
    """Determinism (docs/errors.md): two runs with one seed and --threads 1 write identical
    files; the count is in the model's metadata (another count may round sums differently)."""
    calib = work.npz()
    for name in ("a.onnx", "b.onnx"):
        assert main(prune(work, "--threads", "1", calib=calib, out=name)) == 0, capsys.readouterr().err
    assert (work / "a.onnx").read_bytes() == (work / "b.onnx").read_bytes()
    meta = {p.key: p.value for p in onnx.load(str(work / "a.onnx")).metadata_props}
    assert meta["onnxprune.torch_threads"] == "1"


def test_a_failed_rename_undoes_the_commit(tmp_path, monkeypatch):
    """RunOutputs: when the second of three renames fails, the first is undone (the replaced
    file comes back), and no temporary folder stays; files of an existing report folder that
    this run does not write are kept."""
    from onnxprune.run.outputs import RunOutputs

    (tmp_path / "in.onnx").write_bytes(b"input")
    (tmp_path / "out.onnx").write_bytes(b"old model")
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "mine.txt").write_text("keep me")
    outputs = RunOutputs([tmp_path / "in.onnx"])
    outputs.add("--out", tmp_path / "out.onnx")
    outputs.add("--report", tmp_path / "rep", "dir")
    outputs.add("--trail", tmp_path / "tr", "dir")
    outputs.check()
    before = snapshot(tmp_path)
    with outputs:
        outputs.staged(tmp_path / "out.onnx").write_bytes(b"new model")
        outputs.staged(tmp_path / "rep").mkdir()
        (outputs.staged(tmp_path / "rep") / "report.json").write_text("{}")
        outputs.staged(tmp_path / "tr").mkdir()
        real, calls = os.replace, []

        def flaky(src, dst):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
            return real(src, dst)

        monkeypatch.setattr(os, "replace", flaky)
        with pytest.raises(OSError):
            outputs.commit()
        monkeypatch.setattr(os, "replace", real)
    assert snapshot(tmp_path) == before

    with RunOutputs([tmp_path / "in.onnx"]) as again:  # and the same commit, unhindered
        again.add("--out", tmp_path / "out.onnx")
        again.add("--report", tmp_path / "rep", "dir")
        again.check()
        again.staged(tmp_path / "out.onnx").write_bytes(b"new model")
        again.staged(tmp_path / "rep").mkdir()
        (again.staged(tmp_path / "rep") / "report.json").write_text("{}")
        again.commit()
    assert (tmp_path / "out.onnx").read_bytes() == b"new model"
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["mine.txt", "report.json"]
    assert not [p for p in tmp_path.rglob(".onnxprune-*")]
