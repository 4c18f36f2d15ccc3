"""The outputs of one run as one transaction: all of them, or nothing.

    outputs = RunOutputs([model_path])
    outputs.add("--out", out)                  # a file
    outputs.add("--report", report, "dir")     # a folder (or "file" for run.json)
    outputs.check()                            # before any work: refuse bad paths, probe writability
    with outputs:                              # any exception (or Ctrl-C) inside: nothing is left
        save(model, outputs.staged(out))       # write into a temporary folder beside the target
        write_report_files(report, outputs.staged(report))
        outputs.commit()                       # fsync, then rename every output into place

The promise (docs/errors.md): an output that exists and is not what it should be (a device node,
a fifo, a socket, a directory where a file goes, a file where a folder goes), an output that is
the input or another output of the same run, and a location that cannot be written are refused
by :meth:`check`, before any work, by creating and removing a temporary file where the output
goes. Everything is written into hidden temporary folders in the directory the output lands in
(same file system, so the final step is a rename), flushed with fsync, and renamed into place
only by :meth:`commit`, with Ctrl-C held off while the renames run. A failure or Ctrl-C during the
commit undoes the renames done so far (files that were replaced come back from hard-linked
backups), so the directory holds either all of this run's outputs or none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from onnxprune.errors import OnnxPruneError

_PREFIX = ".onnxprune-"
FAULT_ENV = "ONNXPRUNE_FAULT_AT"
# the files a --report folder gets (onnxprune/reporting/folder.py), checked when the folder exists
REPORT_FILES = ("report.json", "report.md", "widths.png", "taper.png", "trail.png", "latency.png")


def fault_point(name: str) -> None:
    """Test hook: when ``$ONNXPRUNE_FAULT_AT`` names this point, the process sends itself SIGINT
    here, as a user pressing Ctrl-C at that moment would (tests/cli/test_hostile_input.py). Points:
    ``after-latency``, ``writing-report``, ``before-commit``, ``mid-commit``."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGINT)


@dataclasses.dataclass
class _Target:
    option: str
    given: str  # as the user wrote it, for messages
    path: Path  # absolute, symlinks resolved
    kind: str  # "file" or "dir"
    stage: Path | None = None  # the temporary folder holding the staged output


def kind_of(mode: int) -> str:
    """A file type in words, for messages."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a fifo"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "a special file"


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.fspath(path)))


class RunOutputs:
    """The files and folders one run writes (module docstring)."""

    def __init__(self, inputs: Iterable[str | os.PathLike] = ()) -> None:
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.targets: list[_Target] = []
        self.committed = False
        self._undo: list[tuple[Path, Path | None]] = []  # (final path, backup or None), in commit order

    # --- declaring and checking ------------------------------------------------------------------

    def add(self, option: str, path: str | os.PathLike | None, kind: str = "file", entries: Iterable[str] = ()) -> None:
        """Declare an output; ``kind`` is "file" or "dir" (``entries``: the files a folder output
        writes into it, checked like file outputs when the folder exists). ``None`` is ignored."""
        if path is None:
            return
        if kind not in ("file", "dir"):
            raise ValueError(kind)
        absolute = _absolute(path)
        try:
            resolved = absolute.resolve()  # an existing symlink: the file it names is replaced
        except (OSError, RuntimeError):  # a symlink loop
            raise OnnxPruneError(f"{option} {os.fspath(path)}: cannot resolve the path (a symlink loop?)") from None
        self.targets.append(_Target(option, os.fspath(path), resolved, kind))
        if kind == "dir" and resolved.is_dir():
            for name in entries:  # an existing report folder whose report.json is a fifo, ...
                self.targets.append(_Target(option, os.path.join(os.fspath(path), name), resolved / name, "file"))

    def check(self) -> None:
        """Refuse every bad output up front (module docstring); raises OnnxPruneError."""
        for i, target in enumerate(self.targets):
            self._check_not_input(target)
            self._check_type(target)
            for other in self.targets[:i]:
                if other.path == target.path:
                    raise OnnxPruneError(f"{target.option} {target.given} names the same path as {other.option} "
                                         f"{other.given}; give each output its own path")
        for target in self.targets:
            self._probe(target)

    def _check_type(self, target: _Target) -> None:
        try:
            mode = os.stat(target.path).st_mode
        except FileNotFoundError:
            mode = None
        except OSError as exc:
            raise OnnxPruneError(f"{target.option} {target.given}: cannot inspect the path ({exc.strerror})") from None
        if mode is not None:
            want = stat.S_ISREG if target.kind == "file" else stat.S_ISDIR
            if not want(mode):
                expected = "a regular file" if target.kind == "file" else "a directory"
                hint = (" (a .json name writes one file)" if target.option == "--report" and target.kind == "dir"
                        else "; choose another path")
                raise OnnxPruneError(f"{target.option} {target.given}: exists and is {kind_of(mode)}, "
                                     f"not {expected}{hint}")
            return
        parent = target.path.parent
        if not parent.is_dir():
            shown = Path(target.given).parent
            raise OnnxPruneError(f"{target.option} {target.given}: directory {shown} does not exist")

    def _check_not_input(self, target: _Target) -> None:
        for source in self.inputs:
            same = False
            with contextlib.suppress(OSError):
                same = target.path.exists() and source.exists() and os.path.samefile(target.path, source)
            if same or _absolute(source).resolve() == target.path:
                raise OnnxPruneError(f"{target.option} {target.given} is the input file; choose another path")

    def _root(self, target: _Target) -> Path:
        """The directory whose entries this output changes (where its temporary folder goes)."""
        if target.kind == "dir" and target.path.is_dir():
            return target.path
        return target.path.parent

    def _probe(self, target: _Target) -> None:
        root = self._root(target)
        failure = None
        with _held_sigint() as interrupted:  # Ctrl-C must not leave the probe behind
            try:
                fd, probe = tempfile.mkstemp(prefix=_PREFIX + "probe-", dir=root)
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                failure = exc.strerror or type(exc).__name__
        if interrupted:
            _redeliver(interrupted)
        if failure is not None:
            raise OnnxPruneError(f"{target.option} {target.given}: cannot write in {root} ({failure})")

    # --- staging ---------------------------------------------------------------------------------

    def target(self, path: str | os.PathLike) -> _Target | None:
        resolved = _absolute(path).resolve()
        return next((t for t in self.targets if t.path == resolved), None)

    def staged(self, path: str | os.PathLike) -> Path:
        """Where to write the output declared for ``path``: a path inside a temporary folder
        beside the target (created on first use). The caller writes a file there (a folder for
        "dir" outputs; sibling files such as ``OUT.onnx.data`` travel along)."""
        target = self.target(path)
        if target is None:
            raise KeyError(f"{path} is not a declared output")
        if target.stage is None:
            with _held_sigint() as interrupted:  # the folder is made and recorded, or neither
                target.stage = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=self._root(target)))
            if interrupted:
                _redeliver(interrupted)
        return target.stage / target.path.name

    def staged_if_declared(self, path: str | os.PathLike | None) -> str | os.PathLike | None:
        """``staged(path)`` for a declared output, else ``path`` unchanged."""
        if path is None or self.target(path) is None:
            return path
        return self.staged(path)

    # --- commit and abort ------------------------------------------------------------------------

    def commit(self) -> None:
        """fsync every staged file, then rename each into place; Ctrl-C waits until the renames
        are done and then undoes them. On any failure the outputs renamed so far are undone."""
        if self.committed:
            return
        for target in self.targets:
            if target.stage is not None:
                _fsync_tree(target.stage)
        with _held_sigint() as interrupted:
            try:
                for target in self.targets:
                    if target.stage is not None:
                        self._commit_one(target)
                        fault_point("mid-commit")
                for root in {self._root(t) for t in self.targets if t.stage is not None}:
                    _fsync_dir(root)
            except BaseException:
                self._rollback()
                raise
            if interrupted:
                self._rollback()
        if interrupted:
            self.abort()
            _redeliver(interrupted)
        self.committed = True
        self.abort()  # the temporary folders (now holding only backups)

    def _commit_one(self, target: _Target) -> None:
        stage = target.stage
        main = stage / target.path.name
        if not os.path.lexists(main):
            return  # declared but nothing written (e.g. an accepted run's rejected name)
        if target.kind == "dir" and main.is_dir() and target.path.is_dir():
            self._merge(main, target.path, stage)  # an existing folder: its other files stay
            return
        self._place(main, target.path, stage)
        if target.kind == "file":
            for entry in sorted(stage.iterdir()):  # siblings written beside a file: OUT.onnx.data
                if not entry.name.startswith(_PREFIX):
                    self._place(entry, target.path.parent / entry.name, stage)

    def _merge(self, source: Path, dest: Path, stage: Path) -> None:
        for entry in sorted(source.iterdir()):
            final = dest / entry.name
            if entry.is_dir() and not entry.is_symlink() and final.is_dir():
                self._merge(entry, final, stage)
            else:
                self._place(entry, final, stage)

    def _place(self, source: Path, final: Path, stage: Path) -> None:
        backup = None
        if os.path.lexists(final):
            mode = os.lstat(final).st_mode
            if stat.S_ISDIR(mode) or not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)) or source.is_dir():
                raise OnnxPruneError(f"{final}: exists and is {kind_of(os.stat(final).st_mode)}, not a regular file; "
                                     f"nothing of this run was written")
            backup = Path(tempfile.mktemp(prefix=_PREFIX + "backup-", dir=stage))
            try:
                os.link(final, backup, follow_symlinks=False)
            except OSError:
                shutil.copy2(final, backup, follow_symlinks=False)
        os.replace(source, final)
        self._undo.append((final, backup))

    def _rollback(self) -> None:
        for final, backup in reversed(self._undo):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, final)
                elif final.is_dir() and not final.is_symlink():
                    shutil.rmtree(final)
                else:
                    os.unlink(final)
        self._undo.clear()

    def abort(self) -> None:
        """Remove every temporary folder (and with it whatever was staged)."""
        with _held_sigint():
            for target in self.targets:
                if target.stage is not None:
                    shutil.rmtree(target.stage, ignore_errors=True)
                    target.stage = None

    def __enter__(self) -> RunOutputs:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()


@contextlib.contextmanager
def _held_sigint() -> Iterator[list[int]]:
    """Ctrl-C (and SIGTERM, which the CLI handles like it) inside the block is recorded (the
    list gets the signal), not raised. Signals without a Python handler are left alone."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if callable(handler):
            previous[signum] = handler
            signal.signal(signum, lambda number, frame: caught.append(number))
    try:
        yield caught
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _redeliver(caught: list[int]) -> None:
    """Deliver a signal held by :func:`_held_sigint` to its own handler (which raises
    KeyboardInterrupt for Ctrl-C, or the CLI's SIGTERM handling); KeyboardInterrupt otherwise."""
    handler = signal.getsignal(caught[0])
    if callable(handler):
        handler(caught[0], None)
    raise KeyboardInterrupt


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system can sync a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def report_kind(path: str | os.PathLike | None) -> str:
    """``--report run.json`` is one file; any other name a folder."""
    return "file" if path is not None and Path(path).suffix.lower() == ".json" else "dir"
