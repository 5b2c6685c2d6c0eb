"""The run loop every trainer shares: pre-training / SFT (:mod:`dsmath_jax.train.loop`), reward models
(`dsmath rm`) and RL (:mod:`dsmath_jax.rl.loop`).

A caller builds its model, state and data, then plugs a step function and hooks into a :class:`Runner`:

  runner = Runner(workdir, total_steps=..., checkpoint_every=..., log_every=..., ...)
  start = runner.resume(restore)                          # restore(step) loads the latest checkpoint, if any
  runner.add_hook(evaluate, every=250, at_end=True)       # periodic work after a step (its metrics: a row)
  result = runner.run(step_fn, checkpoint)                # step_fn(step) -> StepInfo; checkpoint(step) -> items
  runner.write_summary({"status": result.status, ...})

The runner owns what every run does the same way: resuming from the latest checkpoint in
`<workdir>/checkpoints` (metrics past it are dropped), the step loop with a progress bar, preemption
(SIGTERM saves a checkpoint and stops after the current step), metrics (`<workdir>/metrics.jsonl` and
TensorBoard), the non-finite guard (the step function skips a non-finite update and reports `finite = 0`;
`max_nonfinite_in_a_row` of them in a row stop the run with :class:`NonFiniteLossError`), periodic hooks
(evaluation), periodic checkpoints and the final forced one, and `summary.json`.

A step function may do several updates per call (it returns the step count it reached) and may stop the
run early by raising :class:`StopRun` (the data ran out). With `read_late`, a step's metrics (device
values) are read one step late, while the next step runs, so the host never waits on the device.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

import jax
from tqdm.auto import tqdm

from dsmath_jax.train.checkpoint import Checkpointer
from dsmath_jax.train.metrics import MetricsWriter
from dsmath_jax.train.rundir import write_json

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class StopRun(Exception):
    """Raised by a step function to end the run early with `status` (e.g. "data_exhausted"); the run
    saves a final checkpoint as after its last step."""

    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


class Preemption:
    """Turns SIGTERM (how TPU VMs announce preemption) into a flag the loop checks between steps."""

    def __init__(self, logger: logging.Logger = log):
        self.requested = False
        self._previous = None
        self._log = logger

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, the loop still runs
            self._previous = None
        return self

    def _handle(self, _signum, _frame):
        self._log.warning("SIGTERM received: saving a checkpoint and stopping after this step")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class StepInfo:
    """What a step function returns and hooks see: `step`, the number of steps done after it; `metrics`,
    the step's record (a `finite` entry, where present, feeds the non-finite guard); `log`, whether the
    record is logged off the `log_every` grid (the runner sets it on the grid and after the last step)."""

    step: int
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    log: bool = False


@dataclasses.dataclass(frozen=True)
class Hook:
    """`fn(info)` run at some steps (see :meth:`Runner.add_hook`)."""

    fn: Callable[[StepInfo], Mapping[str, Any] | None]
    every: int = 0
    at_start: bool = False
    at_end: bool = False
    at_finish: bool = False
    into_record: bool = False

    def due(self, step: int, total: int) -> bool:
        """Whether the hook runs after `step` inside the loop."""
        if step == total:
            return self.at_end
        return bool(self.every) and step % self.every == 0


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a run ended: status ("completed", "preempted", "stopped", or a step function's StopRun status),
    the step it ended at, the step this invocation started from, and the steps the guard saw skipped."""

    status: str
    step: int
    start: int
    skipped: int


class Runner:
    """The run loop of one work directory (see the module docstring).

    `name` prefixes the loop's messages ("RL": "resumed RL from step 3 in ..."); `logger` is the logger
    they go to (the caller's). `checkpoint_every` / `log_every` of 0 save / log only at the end;
    `max_nonfinite_in_a_row` None turns the guard off; `stop_after_steps` ends an invocation after that many
    steps with status "stopped" (a later one resumes); `progress` is the progress bar's description (None:
    no bar) and `postfix(info)` the values it shows after each step."""

    def __init__(self, workdir: str, *, total_steps: int, checkpoint_every: int, keep_checkpoints: int = 3,
                 async_checkpoint: bool = True, log_every: int = 10, tensorboard: bool = True,
                 max_nonfinite_in_a_row: int | None = 10, stop_after_steps: int = 0, name: str = "",
                 logger: logging.Logger = log, progress: str | None = None,
                 postfix: Callable[[StepInfo], Mapping[str, Any]] | None = None,
                 nonfinite_hint: str = "Lower the learning rate or check the data.", read_late: bool = False):
        self.workdir = workdir
        self.total_steps = int(total_steps)
        self.checkpoint_every, self.log_every = int(checkpoint_every), int(log_every)
        self.tensorboard = bool(tensorboard)
        self.max_nonfinite = None if max_nonfinite_in_a_row is None else int(max_nonfinite_in_a_row)
        self.stop_after_steps = int(stop_after_steps or 0)
        self.name, self.log = name, logger
        self.progress_desc, self.postfix = progress, postfix
        self.nonfinite_hint, self.read_late = nonfinite_hint, bool(read_late)
        self.checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=int(keep_checkpoints),
                                         async_save=bool(async_checkpoint))
        self.hooks: list[Hook] = []
        self.start = 0
        self.skipped, self.bad_in_a_row = 0, 0
        self._writer: MetricsWriter | None = None
        self._progress = None
        self._shown = 0  # the step the progress bar shows

    # -------------------------------------------------------------------------------------- set-up
    def latest_step(self) -> int | None:
        """The step of the latest checkpoint in `<workdir>/checkpoints` (None: a fresh run)."""
        return self.checkpointer.latest_step()

    def resume(self, restore: Callable[[int], Any]) -> int:
        """Calls `restore(step)` with the latest checkpoint's step, if there is one (the caller restores its
        state from `self.checkpointer`); returns the step the run starts from (0 for a fresh run)."""
        step = self.latest_step()
        if step is not None:
            restore(step)
            self.log.info("resumed %sfrom step %d in %s", f"{self.name} " if self.name else "", step, self.workdir)
        self.start = int(step or 0)
        return self.start

    def add_hook(self, fn: Callable[[StepInfo], Mapping[str, Any] | None], *, every: int = 0,
                 at_start: bool = False, at_end: bool = False, at_finish: bool = False,
                 into_record: bool = False) -> None:
        """Runs `fn(info)` after the steps that are multiples of `every` (0: none) before the last one;
        `at_end`: after the last step; `at_start`: before the first step of a fresh run (step 0);
        `at_finish`: once the final checkpoint is saved, when the run completed (also when a rerun found
        nothing left to do). Hooks run in the order they were added.

        `into_record` hooks run when the step's record is read, before it is logged: the metrics they
        return join the record, and setting `info.log` logs it off the `log_every` grid. Other hooks run
        after the step's record is logged (with `read_late`, the step's record is read first); the metrics
        they return are logged as a row of their own at the step (at_finish: only when this invocation ran
        a step, so a rerun of a finished run adds no row)."""
        self.hooks.append(Hook(fn, every=int(every), at_start=at_start, at_end=at_end, at_finish=at_finish,
                               into_record=into_record))

    # -------------------------------------------------------------------------------------- the loop
    def _write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self._writer is None:
            raise RuntimeError("metrics are written only while the run loop runs")
        self._writer.write(step, metrics)

    def _row(self, step: int, metrics: Mapping[str, Any] | None) -> None:
        if metrics:
            self._write(step, metrics)

    def _guard(self, info: StepInfo) -> None:
        metrics = info.metrics
        if self.max_nonfinite is None or "finite" not in metrics:
            return
        if bool(metrics["finite"]):
            self.bad_in_a_row = 0
            return
        self.bad_in_a_row += 1
        self.skipped += 1
        what = f"{self.name} step" if self.name else "step"
        self.log.warning("%s %d: non-finite loss/gradient (loss=%s, grad_norm=%s): update skipped (%d in a row)",
                         what, info.step, metrics.get("loss"), metrics.get("grad_norm"), self.bad_in_a_row)
        if self.bad_in_a_row >= self.max_nonfinite:
            raise NonFiniteLossError(f"{self.bad_in_a_row} consecutive {what}s (up to step {info.step}) had a "
                                     f"non-finite loss or gradient; stopping. Last loss {metrics.get('loss')}, "
                                     f"grad norm {metrics.get('grad_norm')}. {self.nonfinite_hint}")

    def _finish_step(self, info: StepInfo) -> None:
        """Reads a step's record: the guard, the into-record hooks, logging, the progress bar."""
        if self.read_late:
            info.metrics = dict(jax.device_get(info.metrics))
        self._guard(info)
        step, total = info.step, self.total_steps
        info.log = info.log or step == total or bool(self.log_every and step % self.log_every == 0)
        for hook in self.hooks:
            if hook.into_record and hook.due(step, total):
                extra = hook.fn(info)
                if extra:
                    info.metrics.update(extra)
        if info.log:
            self._write(step, info.metrics)
        if self._progress is not None:
            if self.postfix is not None:
                self._progress.set_postfix(**self.postfix(info))
            self._progress.update(step - self._shown)
        self._shown = step

    def _save(self, step: int, checkpoint: Callable[[int], tuple[Mapping, Mapping]], force: bool = False) -> None:
        items, metadata = checkpoint(step)
        self.checkpointer.save(step, items, metadata=metadata, force=force)

    def run(self, step_fn: Callable[[int], StepInfo],
            checkpoint: Callable[[int], tuple[Mapping[str, Any], Mapping[str, Any]]]) -> RunResult:
        """Runs `step_fn(step)` (returning the StepInfo of the step(s) it did) from `self.start` to
        `total_steps`; `checkpoint(step)` gives the (items, metadata) a checkpoint at `step` saves. Closes the
        checkpointer and the metrics at the end, also on an error."""
        start, total = self.start, self.total_steps
        # A fresh start (no checkpoint: an earlier attempt may have died before its first) drops every old row,
        # its step-0 rows included: the start hooks write them again.
        self._writer = MetricsWriter(self.workdir, resume_step=start if start > 0 else -1,
                                     tensorboard=self.tensorboard)
        self._shown = start
        if self.progress_desc is not None:
            self._progress = tqdm(total=total, initial=start, desc=self.progress_desc,
                                  disable=jax.process_index() != 0, dynamic_ncols=True)
        status, step, pending = "completed", start, None
        with Preemption(self.log) as preemption:
            try:
                if start == 0:
                    for hook in self.hooks:
                        if hook.at_start:
                            self._row(0, hook.fn(StepInfo(0)))
                while step < total:
                    try:
                        info = step_fn(step)
                    except StopRun as stop:
                        status = stop.status
                        break
                    step = info.step
                    if pending is not None:
                        self._finish_step(pending)
                    pending = info
                    after = [h for h in self.hooks if not h.into_record and h.due(step, total)]
                    if not self.read_late or after:
                        self._finish_step(pending)
                        pending = None
                    for hook in after:
                        self._row(step, hook.fn(info))
                    if preemption.requested:
                        status = "preempted"
                        break
                    if self.stop_after_steps and step - start >= self.stop_after_steps and step < total:
                        status = "stopped"
                        break
                    if self.checkpoint_every and step % self.checkpoint_every == 0 and step < total:
                        self._save(step, checkpoint)
                if pending is not None:
                    self._finish_step(pending)
                    pending = None
                if self.checkpointer.latest_step() != step:  # a rerun of a finished run has nothing new to save
                    self._save(step, checkpoint, force=True)
                self.checkpointer.wait()
                if status == "completed":
                    for hook in self.hooks:
                        if hook.at_finish:
                            metrics = hook.fn(StepInfo(step))
                            if step > start:
                                self._row(step, metrics)
            finally:
                if self._progress is not None:
                    self._progress.close()
                self._writer.close()
                self.checkpointer.close()
        if step == start and status == "completed":
            self.log.info("nothing to do: the run in %s is already at step %d", self.workdir, step)
        return RunResult(status=status, step=step, start=start, skipped=self.skipped)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Writes `<workdir>/summary.json` (process 0)."""
        if jax.process_index() == 0:
            write_json(os.path.join(self.workdir, "summary.json"), summary)


__all__ = ["Runner", "StepInfo", "Hook", "RunResult", "StopRun", "Preemption", "NonFiniteLossError"]
