"""Faults of a sweep's results store, injected on a real store.

Bad lines, files that are not stores, read-only directories, a full disk,
two sweeps on one directory, Ctrl-C and SIGKILL: the good records are still
read, what was skipped is reported once, nothing is overwritten that is not
a store, and the same sweep run again stores exactly the missing cells.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psutil
import pytest

import moestat.simulation.store as store_module
from moestat.exceptions import (
    NotAStoreError,
    StoreIntegrityWarning,
    StoreLockedError,
    StoreWriteError,
    SweepInterrupted,
)
from moestat.simulation import ResultStore, load_results, read_records, simulate
from moestat.simulation.store import (
    CELLS_FILE,
    LOCK_FILE,
    cell_identity,
    scan_store,
)

# A small sweep: SG-E, 2 sizes x 2 replicates = 4 cells (well under a second).
SWEEP = dict(n_grid=[150, 300], n_reps=2)
N_CELLS = 4
# A sweep that runs for a few seconds, for the tests with processes.
LONG_GRID = ",".join(str(n) for n in range(55_000, 100_001, 5_000))  # 10 sizes
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _sweep(directory: Path) -> ResultStore:
    return simulate("SG-E", directory, progress=False, **SWEEP)


def _command(directory: Path, grid: str, reps: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "moestat",
        "simulate",
        "SG-E",
        "--n-grid",
        grid,
        "--reps",
        str(reps),
        "--out",
        str(directory),
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def complete(tmp_path_factory) -> Path:
    """A finished store of :data:`SWEEP`, made once for the module."""
    directory = tmp_path_factory.mktemp("complete")
    _sweep(directory)
    return directory


@pytest.fixture
def store_dir(complete, tmp_path) -> Path:
    """A copy of the finished store, to break."""
    return Path(shutil.copytree(complete, tmp_path / "sweep"))


def _lines(directory: Path) -> list[bytes]:
    return (directory / CELLS_FILE).read_bytes().splitlines(keepends=True)


def _write(directory: Path, lines: list[bytes]) -> None:
    (directory / CELLS_FILE).write_bytes(b"".join(lines))


def _line(record: dict) -> bytes:
    return (json.dumps(record) + "\n").encode()


def _cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The records without their timing, one row per key, in key order."""
    return (
        frame.drop(columns="fit_time")
        .sort_values("key")
        .reset_index(drop=True)
        .reindex(sorted(frame.columns.drop("fit_time")), axis=1)
    )


def _load(directory: Path, warned: bool) -> pd.DataFrame:
    """load_results, checking that it warns (once, with its report) or not."""
    if not warned:
        frame = load_results(directory)  # any warning fails the test
        assert frame.attrs["store_report"] == ""
        return frame
    with pytest.warns(StoreIntegrityWarning) as caught:
        frame = load_results(directory)
    assert len(caught) == 1
    assert str(caught[0].message) == frame.attrs["store_report"] != ""
    return frame


def _assert_each_cell_once(directory: Path, complete: Path) -> None:
    """Every cell of the sweep stored once, equal to an unbroken run's."""
    scan = scan_store(directory / CELLS_FILE)
    assert len(scan.records) == N_CELLS
    assert not scan.partial_last_line
    keys = [json.loads(line)["key"] for line in _lines(directory) if _valid(line)]
    assert len(keys) == len(set(keys)) + len(scan.duplicates)
    frame = load_results(directory) if not scan.report() else _load(directory, True)
    pd.testing.assert_frame_equal(_cells(frame), _cells(load_results(complete)))


def _valid(line: bytes) -> bool:
    """Whether a line of the store is a valid record (the format line is not)."""
    try:
        return store_module.record_problem(json.loads(line)) is None
    except ValueError:
        return False


# -- bad lines ---------------------------------------------------------------------
def _with(index: int, **changes) -> Callable[[list[bytes]], list[bytes]]:
    """Replace the record on line ``index + 1`` by a copy with ``changes``."""

    def edit(lines: list[bytes]) -> list[bytes]:
        record = json.loads(lines[index])
        return [*lines[:index], _line({**record, **changes}), *lines[index + 1 :]]

    return edit


def _inserted(index: int, line: bytes) -> Callable[[list[bytes]], list[bytes]]:
    return lambda lines: [*lines[:index], line, *lines[index:]]


def _raw(index: int, text: bytes) -> Callable[[list[bytes]], list[bytes]]:
    """Replace line ``index + 1`` by ``text``."""
    return lambda lines: [*lines[:index], text, *lines[index + 1 :]]


def _nan_kl(lines: list[bytes]) -> list[bytes]:
    record = json.loads(lines[2])
    text = json.dumps({**record, "kl": 0.125}).replace('"kl": 0.125', '"kl": NaN')
    return [*lines[:2], (text + "\n").encode(), *lines[3:]]


def _inconsistent_copy_first(lines: list[bytes]) -> list[bytes]:
    """A copy of line 2's cell with kl=999 and an edited seed, before it."""
    record = json.loads(lines[1])
    copy = {**record, "kl": 999.0, "seed": record["seed"] + 1}
    return [lines[0], _line(copy), *lines[1:]]


def _negative_copy_first(lines: list[bytes]) -> list[bytes]:
    record = json.loads(lines[1])
    return [lines[0], _line({**record, "kl": -999.0}), *lines[1:]]


def _duplicate_appended(lines: list[bytes]) -> list[bytes]:
    record = json.loads(lines[1])
    return [*lines, _line({**record, "kl": 999.0})]


# (fault, the edit of the lines, the reported line and reason, cells lost)
BAD_LINES = [
    ("garbage", _inserted(2, b"this is not JSON\n"), (3, "is not valid JSON"), 0),
    (
        "invalid UTF-8 in the middle",
        _inserted(3, b'{"key": "caf\xe9"}\n'),
        (4, "is not valid UTF-8"),
        0,
    ),
    ("a blank line", _inserted(2, b"\n"), (3, "is blank"), 0),
    ("a JSON array", _inserted(2, b"[1, 2]\n"), (3, "is not a JSON object"), 0),
    (
        "a key that is a list",
        _with(2, key=["SG-E", 300]),
        (3, "has a key that is not a string"),
        1,
    ),
    (
        "a key that is a dict",
        _with(3, key={"n": 300}),
        (4, "has a key that is not a string"),
        1,
    ),
    (
        "n stored as a string",
        _with(2, n="150"),
        (3, "has an n that is not an integer >= 0"),
        1,
    ),
    ("n stored as a boolean", _with(2, n=True), (3, "has an n that is"), 1),
    ("a negative loss", _with(4, kl=-0.25), (5, "has a negative kl"), 1),
    ("a NaN loss", _nan_kl, (3, "has a non-finite kl"), 1),
    ("a loss as text", _with(2, tv="0.1"), (3, "has a tv that is not a number"), 1),
    (
        "a negative per-parameter error",
        _with(3, **{"err_var[0]": -1.0}),
        (4, "has a negative err_var[0]"),
        1,
    ),
    (
        "an edited seed",
        _with(1, seed=12345),
        (2, "has a seed that does not match its cell"),
        1,
    ),
    (
        "an edited n",
        _with(1, n=151),
        (2, "has a key that does not match its scenario"),
        1,
    ),
    (
        "a converged flag as a number",
        _with(2, converged=1),
        (3, "has a converged that is not true or false"),
        1,
    ),
    (
        "an inconsistent copy of a cell before its record",
        _inconsistent_copy_first,
        (2, "has a seed that does not match its cell"),
        0,
    ),
    (
        "a copy of a cell with a negative loss before its record",
        _negative_copy_first,
        (2, "has a negative kl"),
        0,
    ),
]


@pytest.mark.parametrize(
    "edit, bad, lost", [case[1:] for case in BAD_LINES], ids=[c[0] for c in BAD_LINES]
)
def test_a_bad_line_is_skipped_and_reported_once_and_the_sweep_reruns_only_its_cell(
    store_dir, complete, edit, bad, lost
):
    good = {record["key"]: record for record in read_records(complete / CELLS_FILE)}
    _write(store_dir, edit(_lines(store_dir)))
    scan = scan_store(store_dir / CELLS_FILE)
    [(number, reason)] = scan.invalid
    assert number == bad[0] and reason.startswith(bad[1])
    assert not scan.duplicates
    assert len(scan.records) == N_CELLS - lost
    for record in scan.records:  # the good records, as written
        assert record == good[record["key"]]
    report = scan.report()
    assert report.startswith(
        f"skipped 1 line of {store_dir / CELLS_FILE}: line {bad[0]}"
    )
    frame = _load(store_dir, warned=True)
    assert frame.attrs["store_report"] == report and len(frame) == N_CELLS - lost

    before = len(_lines(store_dir))
    _sweep(store_dir)  # reruns the lost cell, and only it
    assert len(_lines(store_dir)) == before + lost
    _assert_each_cell_once(store_dir, complete)


def test_a_later_duplicate_of_a_cell_is_ignored_and_the_first_record_kept(
    store_dir, complete
):
    lines = _duplicate_appended(_lines(store_dir))
    _write(store_dir, lines)
    scan = scan_store(store_dir / CELLS_FILE)
    first = json.loads(lines[1])
    assert scan.duplicates == [(6, first["key"])] and not scan.invalid
    assert scan.report() == (
        f"{store_dir / CELLS_FILE}: 1 duplicate record of a stored cell (line 6) "
        "ignored, the first record of each cell is kept"
    )
    frame = _load(store_dir, warned=True).set_index("key")
    assert frame.loc[first["key"], "kl"] == first["kl"] != 999.0
    _sweep(store_dir)  # nothing to run
    assert len(_lines(store_dir)) == len(lines)
    _assert_each_cell_once(store_dir, complete)


def test_a_report_names_several_faults_in_one_line(store_dir):
    lines = _lines(store_dir)
    edited = [
        *lines[:2],
        b"\xff\xfe\n",
        *lines[2:5],
        _line({**json.loads(lines[1]), "kl": -1.0}),
        _line(json.loads(lines[3])),
    ]
    _write(store_dir, edited)
    report = scan_store(store_dir / CELLS_FILE).report()
    assert report == (
        f"skipped 2 lines of {store_dir / CELLS_FILE}: line 3 is not valid UTF-8, "
        "line 7 has a negative kl; 1 duplicate record of a stored cell (line 8) "
        "ignored, the first record of each cell is kept"
    )
    assert "\n" not in report


def test_a_half_written_last_line_is_not_a_fault_and_is_cut_off_only_to_append(
    store_dir, complete
):
    lines = _lines(store_dir)
    _write(store_dir, [*lines[:-1], lines[-1][: len(lines[-1]) // 2]])
    content = (store_dir / CELLS_FILE).read_bytes()
    scan = scan_store(store_dir / CELLS_FILE)
    assert scan.partial_last_line and scan.report() == ""
    assert len(_load(store_dir, warned=False)) == N_CELLS - 1  # no warning
    ResultStore(store_dir)
    assert (store_dir / CELLS_FILE).read_bytes() == content  # reading cuts nothing
    _sweep(store_dir)
    assert len(_lines(store_dir)) == 1 + N_CELLS
    _assert_each_cell_once(store_dir, complete)


def test_a_store_without_a_format_line_of_an_earlier_version_is_read_and_resumed(
    store_dir, complete
):
    lines = _lines(store_dir)
    assert json.loads(lines[0]) == {"format": "moestat-cells", "version": 1}
    _write(store_dir, lines[1:-1])  # headerless, one cell short
    assert scan_store(store_dir / CELLS_FILE).kind == "legacy"
    _sweep(store_dir)
    assert [json.loads(line).get("format") for line in _lines(store_dir)] == [None] * 4
    _assert_each_cell_once(store_dir, complete)


def test_a_store_of_a_later_format_version_is_read_but_not_appended_to(store_dir):
    lines = _lines(store_dir)
    _write(store_dir, [_line({"format": "moestat-cells", "version": 2}), *lines[1:-1]])
    assert len(load_results(store_dir)) == N_CELLS - 1
    with pytest.raises(NotAStoreError, match="format version 2.*upgrade moestat"):
        _sweep(store_dir)


def test_a_record_that_would_be_read_as_invalid_is_refused_on_write(tmp_path):
    store = ResultStore(tmp_path)
    record = {**cell_identity("SG-E", "m=2", 150, 0), "kl": 0.5}
    with pytest.raises(ValueError, match="has a negative kl"):
        store.append({**record, "kl": -0.5})
    with pytest.raises(ValueError, match="has no key"):
        store.append({"kl": 0.5})
    assert not (tmp_path / CELLS_FILE).exists()
    assert store.append(record) and read_records(tmp_path / CELLS_FILE) == [record]


# -- files that are not stores --------------------------------------------------
def test_a_csv_file_named_cells_jsonl_is_refused_and_left_byte_for_byte(tmp_path):
    content = b"scenario,n,kl\nSG-E,150,0.1\nSG-E,300,0.05"  # no final newline
    (tmp_path / CELLS_FILE).write_bytes(content)
    with pytest.raises(NotAStoreError) as error:
        _sweep(tmp_path)
    message = str(error.value)
    assert str(tmp_path / CELLS_FILE) in message
    assert "not a moestat results store" in message
    assert "another --out directory" in message
    assert (tmp_path / CELLS_FILE).read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == [CELLS_FILE]  # not even a lock file
    with pytest.raises(NotAStoreError):
        ResultStore(tmp_path).append(cell_identity("SG-E", "m=2", 150, 0))
    with pytest.raises(NotAStoreError):
        load_results(tmp_path)
    assert (tmp_path / CELLS_FILE).read_bytes() == content


def test_an_out_directory_that_is_a_file_is_refused_before_any_work(tmp_path):
    target = tmp_path / "results"
    target.write_text("notes\n")
    with pytest.raises(NotAStoreError, match="is a file, not a directory"):
        _sweep(target)
    assert target.read_text() == "notes\n"


# -- read-only directories -----------------------------------------------------
def _refuse_writes_under(root: Path, monkeypatch) -> None:
    """Writes under ``root`` fail with EROFS, as on a read-only file system.

    For root, whom permission bits do not stop.
    """
    root = root.resolve()

    def inside(path) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(root)
        except TypeError:  # a file descriptor
            return False

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_open, real_mkdir, real_io_open = os.open, os.mkdir, io.open
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & writes and inside(path):
            refuse(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def mkdir(path, mode=0o777, *, dir_fd=None):
        if inside(path):
            if os.path.exists(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
            refuse(path)
        return real_mkdir(path, mode, dir_fd=dir_fd)

    def io_open(file, mode="r", *args, **kwargs):
        if set(mode) & set("wax+") and inside(file):
            refuse(file)
        return real_io_open(file, mode, *args, **kwargs)

    def refused(real):
        def call(path, *args, **kwargs):
            if inside(path):
                refuse(path)
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(io, "open", io_open)
    monkeypatch.setattr(builtins, "open", io_open)
    for name in ("truncate", "unlink", "remove", "rename", "replace", "rmdir"):
        monkeypatch.setattr(os, name, refused(getattr(os, name)))


@pytest.fixture
def read_only(monkeypatch):
    """Make a directory and its files read-only (for root too)."""
    made: list[Path] = []

    def make(directory: Path) -> None:
        for path in directory.iterdir():
            path.chmod(0o444)
        directory.chmod(0o555)
        made.append(directory)
        if os.geteuid() == 0:
            _refuse_writes_under(directory, monkeypatch)

    yield make
    monkeypatch.undo()
    for directory in made:
        directory.chmod(0o755)
        for path in directory.iterdir():
            path.chmod(0o644)


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        path.name: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(directory.iterdir())
    }


def test_a_complete_store_in_a_read_only_directory_is_read_and_resumed_without_a_write(
    store_dir, read_only
):
    before = _snapshot(store_dir)
    read_only(store_dir)
    assert len(load_results(store_dir)) == N_CELLS
    store = _sweep(store_dir)  # nothing to do
    assert len(store.keys()) == N_CELLS
    assert _snapshot(store_dir) == before


def test_an_incomplete_store_in_a_read_only_directory_says_it_cannot_be_written(
    store_dir, read_only
):
    _write(store_dir, _lines(store_dir)[:-1])
    before = _snapshot(store_dir)
    read_only(store_dir)
    with pytest.raises(StoreWriteError) as error:
        _sweep(store_dir)
    message = str(error.value)
    assert message.startswith(f"cannot write to {store_dir} (")
    assert "not writable, and 1 of 4 cells of the sweep are not stored yet" in message
    assert "another --out directory" in message
    assert _snapshot(store_dir) == before


def test_a_missing_directory_under_a_read_only_one_cannot_be_created(
    tmp_path, read_only
):
    read_only(tmp_path)
    with pytest.raises(StoreWriteError, match="not writable, and 4 of 4 cells"):
        _sweep(tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


# -- a full disk, Ctrl-C, a held lock ---------------------------------------------
def test_a_full_disk_stops_the_sweep_with_a_message_and_the_next_run_resumes(
    tmp_path, complete, monkeypatch
):
    real = store_module._append_bytes
    stored: list[bytes] = []

    def fills_up_after_two_records(path, data):
        if data.startswith(b'{"key"') and len(stored) == 2:
            real(path, data[: len(data) // 2])  # the disk fills mid-line
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        if data.startswith(b'{"key"'):
            stored.append(data)
        real(path, data)

    monkeypatch.setattr(store_module, "_append_bytes", fills_up_after_two_records)
    out = tmp_path / "sweep"
    with pytest.raises(StoreWriteError) as error:
        _sweep(out)
    assert str(error.value) == (
        f"could not write to {out / CELLS_FILE} (No space left on device); every "
        "cell finished before is stored: free some disk space and run the same "
        "command again to resume"
    )
    assert isinstance(error.value, OSError) and error.value.errno == errno.ENOSPC
    scan = scan_store(out / CELLS_FILE)
    assert len(scan.records) == 2 and scan.partial_last_line

    monkeypatch.setattr(store_module, "_append_bytes", real)
    _sweep(out)
    assert len(_lines(out)) == 1 + N_CELLS
    _assert_each_cell_once(out, complete)


def test_ctrl_c_mid_sweep_raises_sweep_interrupted_with_the_stored_count(
    tmp_path, complete, monkeypatch
):
    append = ResultStore.append

    def interrupted_after_two(self, record):
        if len(self.keys()) == 2:
            raise KeyboardInterrupt
        return append(self, record)

    monkeypatch.setattr(ResultStore, "append", interrupted_after_two)
    out = tmp_path / "sweep"
    with pytest.raises(KeyboardInterrupt) as error:
        _sweep(out)
    assert isinstance(error.value, SweepInterrupted)
    assert (error.value.n_stored, error.value.n_cells) == (2, N_CELLS)
    assert str(error.value) == (
        f"interrupted; 2 of 4 cells stored in {out}; run the same command to resume"
    )
    assert error.value.__suppress_context__

    monkeypatch.setattr(ResultStore, "append", append)
    _sweep(out)  # the lock was released
    _assert_each_cell_once(out, complete)


def test_a_sweep_stops_at_once_when_another_process_writes_to_its_directory(
    store_dir,
):
    _write(store_dir, _lines(store_dir)[:-1])
    content = (store_dir / CELLS_FILE).read_bytes()
    with ResultStore(store_dir).writing():
        with pytest.raises(StoreLockedError) as error:
            _sweep(store_dir)
    assert str(error.value) == (
        f"another moestat sweep (pid {os.getpid()}) is writing to {store_dir} (it "
        f"holds the lock {store_dir / LOCK_FILE}); wait for it to finish or use "
        "another --out directory"
    )
    assert (store_dir / CELLS_FILE).read_bytes() == content


def test_a_complete_store_needs_no_lock_to_be_resumed(store_dir):
    with ResultStore(store_dir).writing():
        assert len(_sweep(store_dir).keys()) == N_CELLS


# -- processes --------------------------------------------------------------------
def test_two_sweeps_started_together_on_one_directory_store_each_cell_once(tmp_path):
    out, reps = tmp_path / "sweep", 6
    pipes = dict(env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = subprocess.Popen(_command(out, LONG_GRID, reps), **pipes)
    time.sleep(0.5)
    second = subprocess.Popen(_command(out, LONG_GRID, reps), **pipes)
    results = [(p.wait(timeout=300), *p.communicate()) for p in (first, second)]
    assert sorted(code for code, _, _ in results) == [0, 1], results
    _, _, stderr = next(result for result in results if result[0] == 1)
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1 and stderr.startswith(
        "moestat simulate: another moestat sweep (pid "
    )
    assert str(out / LOCK_FILE) in stderr
    scan = scan_store(out / CELLS_FILE)
    assert len(scan.records) == 10 * reps and not scan.duplicates
    assert len(_lines(out)) == 1 + 10 * reps


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_sigkill_of_a_parallel_sweep_ends_its_workers_and_the_sweep_resumes(tmp_path):
    out, reps = tmp_path / "sweep", 8
    grid = ",".join(str(n) for n in range(60_000, 100_001, 10_000))  # 5 sizes
    process = subprocess.Popen(
        _command(out, grid, reps, "--jobs", "2"),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cells = out / CELLS_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(read_records(cells)) < 2:
        time.sleep(0.02)
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stored = len(read_records(cells))
    try:
        assert 2 <= stored < 5 * reps, "the kill must land mid-sweep"
        assert len(children) >= 2  # the workers (and loky's helpers)
        deadline = time.monotonic() + 10
        while _alive(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(children), [p.cmdline()[:4] for p in _alive(children)]
    finally:
        for child in _alive(children):
            child.kill()
    simulate("SG-E", out, n_grid=grid.split(","), n_reps=reps, progress=False)
    scan = scan_store(cells)
    assert len(scan.records) == 5 * reps and not scan.duplicates and not scan.invalid
