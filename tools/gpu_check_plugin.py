"""pytest plugin of tools/gpu_check.py: one JSON row per test outcome ({"stage": "kernel-tests", "kind": "test",
"test", "outcome", "seconds", ...}), appended to gpu_check's rows.jsonl as each test finishes, so a run stopped by
its time budget still says what passed, failed or never ran. Also imports vmae_fast from this checkout when the package
is not installed (a bare checkout on a GPU machine).

    python -m pytest -p gpu_check_plugin --gpu-check-rows rows.jsonl tests/...   # with tools/ on PYTHONPATH
"""

from __future__ import annotations

import json
import time


def pytest_addoption(parser):
    parser.addoption("--gpu-check-rows", default=None, help="append one JSON row per test outcome to this file")


_CONFIG: dict = {}


def pytest_configure(config):
    _CONFIG["config"] = config
    # after conftest.py decided TRITON_INTERPRET: importing the kernels imports triton
    from bench_env import import_vmae_fast

    import_vmae_fast()


def _append(row: dict) -> None:
    with open(_CONFIG["config"].getoption("--gpu-check-rows"), "a") as f:
        f.write(json.dumps(row) + "\n")


def pytest_collection_finish(session):
    """How many tests there are (each xdist worker collects them all: the summary takes the largest count)."""
    if session.config.getoption("--gpu-check-rows") is not None:
        worker = getattr(session.config, "workerinput", {}).get("workerid", "main")
        _append({"stage": "kernel-tests", "kind": "collected", "count": len(session.items), "worker": worker})


def pytest_runtest_logreport(report):
    config = _CONFIG.get("config")
    path = config.getoption("--gpu-check-rows") if config is not None else None
    if path is None or hasattr(config, "workerinput"):  # xdist workers: the controller writes the rows
        return
    if report.when != "call" and not (report.failed or report.skipped):
        return  # setup/teardown that passed: nothing to say
    outcome = report.outcome if report.when == "call" else f"{report.outcome} in {report.when}"
    row = {"stage": "kernel-tests", "kind": "test", "test": report.nodeid, "outcome": outcome,
           "seconds": round(report.duration, 3), "time": time.time()}
    if report.failed:
        row["error"] = str(report.longrepr).strip().splitlines()[-1][:300] if report.longrepr else ""
    if report.skipped and isinstance(report.longrepr, tuple):
        row["reason"] = str(report.longrepr[2])[:200]
    _append(row)
