"""The quickstart's run directory as the stages left it: whether a stage completed (by its own summary), its
status, and quickstart_state.json (the seconds spent per stage over all invocations, the last options)."""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from dsmath_jax.train.rundir import write_json

STATE_FILE = "quickstart_state.json"
COMPLETED = "completed"
MINING_DONE = "done"  # dsmath_jax.mining.driver.DONE (not imported: reading results needs no Apache Beam)
CORPUS_DATASET = "dsmath_corpus"  # the mining driver's TFDS dataset (dsmath_jax.mining.tfds_builder.NAME)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_summary(stage_dir: str | os.PathLike) -> dict | None:
    """A stage's own summary: summary.json of a training / RL run, stats.json of a mining run."""
    for name in ("summary.json", "stats.json"):
        path = os.path.join(stage_dir, name)
        if os.path.isfile(path):
            return read_json(path)
    return None


def corpus_tfds_dir(workdir: str) -> str:
    return os.path.join(workdir, "mine", "tfds", CORPUS_DATASET)


def stage_completed(workdir: str, stage: str) -> bool:
    """Whether `stage` finished in `workdir`, by its own summary (mining: done with the TFDS corpus)."""
    summary = read_summary(os.path.join(workdir, stage))
    if not summary:
        return False
    if stage == "mine":
        return summary.get("status") == MINING_DONE and os.path.isdir(corpus_tfds_dir(workdir))
    return summary.get("status") == COMPLETED


def stage_status(workdir: str, stage: str) -> str:
    """`completed`, else the status of the stage's summary, else `started` (its directory exists) or `pending`."""
    if stage_completed(workdir, stage):
        return COMPLETED
    summary = read_summary(os.path.join(workdir, stage))
    if summary:
        return str(summary.get("status", "running"))
    return "started" if os.path.isdir(os.path.join(workdir, stage)) else "pending"


def read_state(workdir: str) -> dict:
    """quickstart_state.json of `workdir`, or an empty state when no invocation wrote one."""
    path = os.path.join(workdir, STATE_FILE)
    return read_json(path) if os.path.isfile(path) else {"stages": {}}


class State:
    """quickstart_state.json: per stage, its status, the seconds spent (over all invocations), how often it
    ran, when it last started and finished; and the options of the last invocation."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, STATE_FILE)
        self.data = read_state(workdir)

    def stage(self, name: str) -> dict:
        return self.data["stages"].setdefault(name, {"status": "pending", "seconds": 0.0, "invocations": 0})

    def save(self) -> None:
        write_json(self.path, self.data)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
