"""A torch-free install runs `onnxprune bench` and `onnxprune profile` (issue 19, items 1-2; docs/target-install.md).

The fast checks run here, in the development venv: `onnxprune.cli.main`, `--help`, `bench --help`
and a bench run import none of torch, torchvision, onnx2torch, matplotlib, onnx-ir; with torch
made unimportable, bench still runs and `prune`, `inspect` and image calibration fail in one
line each. The slow check builds a
clean venv with only the `bench` extra's packages (CPU onnxruntime) and the package installed
with `--no-deps`, and runs the installed `onnxprune bench` there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "sample_models" / "mlp.onnx"
HEAVY = ("torch", "torchvision", "onnx2torch", "matplotlib", "onnx_ir")

# run in a child interpreter: the test session itself has long imported torch
_PROBE = """
import json, sys
block = sys.argv[1] == "block"
if block:  # as on an install without them
    for name in {heavy!r}:
        sys.modules[name] = None
import onnxprune.cli.main
from onnxprune.cli.main import main
out = {{"after_import": sorted(m for m in {heavy!r} if sys.modules.get(m) is not None)}}
for key, argv in [("help", ["--help"]), ("bench_help", ["bench", "--help"]),
                  ("bench", ["bench", {mlp!r}, {mlp!r}, "--seconds", "0.1", "--min-runs", "5", "--json"]),
                  ("after_bench", None),
                  ("profile_help", ["profile", "--help"]),
                  ("profile", ["profile", {mlp!r}, "--seconds", "0.05", "--min-runs", "3", "--warmup", "1",
                               "--out", sys.argv[2] + "-latency.json"])]:
    out[key] = (main(argv) if argv is not None
                else sorted(m for m in {heavy!r} if sys.modules.get(m) is not None))
if block:
    out["prune"] = main([{mlp!r}, "--method", "magnitude", "--calib", "synthetic", "--out", "x.onnx"])
    out["images"] = main(["bench", {mlp!r}, "--calib", sys.argv[2], "--seconds", "0.1"])
    out["inspect"] = main(["inspect", {mlp!r}])
out["heavy"] = sorted(m for m in {heavy!r} if sys.modules.get(m) is not None)
print("PROBE" + json.dumps(out))
"""


def _probe(tmp_path: Path, mode: str) -> tuple[dict, str]:
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"not decoded: torchvision is missing first")
    code = _PROBE.format(heavy=HEAVY, mlp=str(MLP))
    proc = subprocess.run([sys.executable, "-c", code, mode, str(images)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("PROBE"))
    return json.loads(line[len("PROBE"):]), proc.stderr


def test_cli_and_bench_import_no_torch(tmp_path):
    out, _ = _probe(tmp_path, "full")
    assert out["after_import"] == []
    assert (out["help"], out["bench_help"], out["bench"], out["profile_help"], out["profile"]) == (0, 0, 0, 0, 0)
    assert out["after_bench"] == [], f"bench imported {out['after_bench']}"
    # profile calibrates with the channel-group analysis (onnx-ir) where it can: never torch
    assert set(out["heavy"]) <= {"onnx_ir"}, f"profile imported {out['heavy']}"
    table = json.loads((tmp_path / "images-latency.json").read_text())
    # (timed: at batch 1 the MLP is mostly per-call overhead, so the fit may be refused as noise)
    assert len(table["profiles"][0]["calibration"]["points"]) == 4


def test_bench_runs_with_torch_blocked(tmp_path):
    out, stderr = _probe(tmp_path, "block")
    assert (out["help"], out["bench_help"], out["bench"], out["profile_help"], out["profile"]) == (0, 0, 0, 0, 0)
    table = json.loads((tmp_path / "images-latency.json").read_text())
    assert table["profiles"][0]["layers"]
    assert table["profiles"][0]["calibration"]["note"].startswith("not calibrated: the channel-group analysis needs")
    assert out["heavy"] == []
    # the commands that need torch say so in one line, no traceback
    assert out["prune"] != 0 and out["images"] != 0 and out["inspect"] != 0
    assert "'prune' needs torch, which is not installed" in stderr
    assert "'inspect' needs torch, which is not installed" in stderr
    assert "decoding images needs torch and torchvision" in stderr
    assert "Traceback" not in stderr


def test_help_summaries_match_the_commands():
    import importlib

    from onnxprune.cli.main import _COMMANDS, _SUMMARIES

    assert set(_SUMMARIES) == set(_COMMANDS)
    for name, module in _COMMANDS.items():
        command = importlib.import_module(module).command
        assert _SUMMARIES[name] == command.get_short_help_str(limit=10_000), name


def _bench_requirements() -> list[str]:
    """The `bench` extra, with the CPU onnxruntime wheel for the GPU one (same Python API)."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench"]
    out = []
    for req in extra:
        name = req.split(";")[0]
        if name.strip().startswith("onnxruntime"):
            continue
        out.append(name.strip())
    return [*out, "onnxruntime>=1.20"]


def _run(cmd: list, env: dict, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_clean_venv_runs_bench(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env.update(HOME=str(home), PIP_CACHE_DIR=str(tmp_path / "pip-cache"), PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST"):
        if key in os.environ:  # where this machine's packages come from, nothing else
            env[key] = os.environ[key]
    # a copy of the sources, so the build writes nothing into the checkout
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for part in ("onnxprune", "passes", "calibration"):
        shutil.copytree(ROOT / part, src / part, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)

    venv_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    bindir = venv_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv_dir)

    fetch = _run([python, "-m", "pip", "install", "-q", "--retries", "1", "--timeout", "15", "setuptools>=68",
                  *_bench_requirements()], env, tmp_path, timeout=240)
    if fetch.returncode != 0:
        pytest.skip(f"pip could not install the bench packages (no network?): {fetch.stderr.strip()[-300:]}")
    build = _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", src], env, tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]

    # the venv is clean: none of the heavy packages can be imported there
    missing = _run([python, "-c", "import importlib.util as u, sys; "
                    f"sys.exit(sum(u.find_spec(m) is not None for m in {HEAVY!r}))"], env, tmp_path)
    assert missing.returncode == 0, "the clean venv has one of " + ", ".join(HEAVY)

    onnxprune = bindir / "onnxprune"
    for argv in (["--help"], ["bench", "--help"]):
        proc = _run([onnxprune, *argv], env, tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    bench = _run([onnxprune, "bench", MLP, MLP, "--seconds", "0.2"], env, tmp_path)
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert "p50 ms" in bench.stdout and "mlp#2" in bench.stdout, bench.stdout
    as_json = _run([onnxprune, "bench", MLP, "--seconds", "0.2", "--json"], env, tmp_path)
    assert as_json.returncode == 0, as_json.stderr[-3000:]
    row = json.loads(as_json.stdout)["results"][0]
    assert row["provider"] == "cpu" and row["p50_ms"] > 0 and row["runs"] >= 20
    table_path = tmp_path / "latency.json"
    profile = _run([onnxprune, "profile", MLP, "--seconds", "0.05", "--out", table_path], env, tmp_path)
    assert profile.returncode == 0, profile.stderr[-3000:]
    table = json.loads(table_path.read_text())
    assert [e["node"] for e in table["profiles"][0]["layers"]] and table["versions"]["onnxruntime"]

    probe = _run([python, "-c", "import sys, onnxprune.cli.main; from onnxprune.cli.main import main; "
                  f"rc = main(['bench', {str(MLP)!r}, '--seconds', '0.1']); "
                  f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
                  "assert rc == 0 and not heavy, (rc, heavy); "
                  "assert onnxprune.cli.main.__file__.startswith(sys.prefix), onnxprune.cli.main.__file__"], env, tmp_path)
    assert probe.returncode == 0, probe.stderr[-3000:]

    prune = _run([onnxprune, MLP, "--method", "magnitude", "--calib", "synthetic", "--out", tmp_path / "x.onnx"],
                 env, tmp_path)
    assert prune.returncode != 0 and "'prune' needs torch" in prune.stderr and "Traceback" not in prune.stderr, \
        prune.stderr[-3000:]
