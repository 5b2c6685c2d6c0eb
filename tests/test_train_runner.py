"""The shared run loop (dsmath_jax.train.runner) with a toy step and no model: which rows metrics.jsonl gets
and in what order (the step's record on the log_every grid, hooks merged into it or as rows of their own,
at the start and at the finish), periodic and final checkpoints, early stops, resume, the non-finite guard."""

import numpy as np
import pytest

from dsmath_jax.train.metrics import read_metrics
from dsmath_jax.train.runner import NonFiniteLossError, Runner, StepInfo, StopRun


def _runner(workdir, **kwargs):
    kwargs = dict(dict(total_steps=6, checkpoint_every=4, log_every=2, tensorboard=False, async_checkpoint=False),
                  **kwargs)
    return Runner(str(workdir), **kwargs)


def _toy(state, finite=lambda step: True, stop_at=None):
    """A step that adds 1 to state["x"]; a checkpoint holds x."""

    def step_fn(step):
        if step == stop_at:
            raise StopRun("data_exhausted")
        state["x"] += 1.0
        return StepInfo(step + 1, {"loss": state["x"], "finite": float(finite(step + 1))})

    def checkpoint(step):
        return {"state": {"x": np.asarray(state["x"])}}, {"step": step}

    return step_fn, checkpoint


def _hooks(runner, finished):
    runner.add_hook(lambda info: {"n": info.step}, every=1, at_end=True, into_record=True)
    runner.add_hook(lambda info: {"eval": info.step}, every=3, at_start=True, at_end=True)
    runner.add_hook(lambda info: finished.append(info.step) or {"final": info.step}, at_finish=True)


def _rows(workdir):
    return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(str(workdir / "metrics.jsonl"))]


def _steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())


@pytest.mark.parametrize("read_late", [False, True])
def test_rows_hooks_and_checkpoints(tmp_path, read_late):
    runner, finished = _runner(tmp_path, read_late=read_late), []
    _hooks(runner, finished)
    assert runner.resume(lambda step: pytest.fail("nothing to resume")) == 0
    result = runner.run(*_toy({"x": 0.0}))
    assert (result.status, result.step, result.start, result.skipped) == ("completed", 6, 0, 0)
    assert _rows(tmp_path) == [
        {"step": 0, "eval": 0},
        {"step": 2, "loss": 2.0, "finite": 1.0, "n": 2},
        {"step": 3, "eval": 3},
        {"step": 4, "loss": 4.0, "finite": 1.0, "n": 4},
        {"step": 6, "loss": 6.0, "finite": 1.0, "n": 6},
        {"step": 6, "eval": 6},
        {"step": 6, "final": 6}]
    assert _steps(tmp_path) == [4, 6] and finished == [6]
    runner.write_summary({"status": result.status})
    assert (tmp_path / "summary.json").read_text() == '{\n  "status": "completed"\n}'


def test_stop_resume_and_rerun_match_the_straight_run(tmp_path):
    straight, finished = _runner(tmp_path / "a"), []
    _hooks(straight, finished)
    straight.resume(lambda step: None)
    straight.run(*_toy({"x": 0.0}))

    first = _runner(tmp_path / "b", stop_after_steps=3)
    _hooks(first, finished)
    first.resume(lambda step: None)
    result = first.run(*_toy({"x": 0.0}))
    assert (result.status, result.step) == ("stopped", 3) and _steps(tmp_path / "b") == [3]  # the final save

    def resumed(state):
        runner = _runner(tmp_path / "b")
        _hooks(runner, finished)

        def restore(step):
            state["x"] = float(runner.checkpointer.restore(step)["state"]["x"])

        return runner, runner.resume(restore)

    state = {"x": 0.0}
    runner, start = resumed(state)
    assert start == 3 and state["x"] == 3.0
    assert runner.run(*_toy(state)).status == "completed"
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a") and _steps(tmp_path / "b") == [3, 4, 6]
    # A rerun of the finished run: nothing trained, no row added, the finish hook still runs.
    finished.clear()
    runner, start = resumed(state)
    result = runner.run(*_toy(state))
    assert (result.status, result.step, start) == ("completed", 6, 6) and finished == [6]
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")


def test_a_rerun_after_dying_before_the_first_checkpoint_keeps_one_history(tmp_path):
    """An attempt that dies before its first checkpoint leaves rows (the start hook's step 0, step 2); the rerun
    starts from scratch and its metrics.jsonl equals a straight run's, with no second step-0 row."""
    straight, finished = _runner(tmp_path / "a"), []
    _hooks(straight, finished)
    straight.resume(lambda step: None)
    straight.run(*_toy({"x": 0.0}))

    died = _runner(tmp_path / "b")
    _hooks(died, finished)
    died.resume(lambda step: None)
    step_fn, checkpoint = _toy({"x": 0.0})

    def dies_at_3(step):
        if step == 3:
            raise RuntimeError("killed")
        return step_fn(step)

    with pytest.raises(RuntimeError, match="killed"):
        died.run(dies_at_3, checkpoint)
    assert [r["step"] for r in _rows(tmp_path / "b")] == [0, 2, 3]
    rerun = _runner(tmp_path / "b")
    _hooks(rerun, finished)
    assert rerun.resume(lambda step: pytest.fail("no checkpoint to resume")) == 0
    assert rerun.run(*_toy({"x": 0.0})).status == "completed"
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")


def test_a_step_function_ends_the_run_early_with_a_status(tmp_path):
    runner = _runner(tmp_path)
    runner.resume(lambda step: None)
    result = runner.run(*_toy({"x": 0.0}, stop_at=5))
    assert (result.status, result.step) == ("data_exhausted", 5) and _steps(tmp_path) == [4, 5]


@pytest.mark.parametrize("read_late", [False, True])
def test_the_non_finite_guard(tmp_path, read_late):
    # Steps 2 and 3 are skipped, 4 is fine (the count restarts), 5..7 are not: the third in a row stops the run.
    runner = _runner(tmp_path / "stop", total_steps=10, max_nonfinite_in_a_row=3, name="RL", read_late=read_late)
    runner.add_hook(lambda info: {"skipped_steps": runner.skipped}, every=1, into_record=True)
    runner.resume(lambda step: None)
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive RL steps \(up to step 7\)"):
        runner.run(*_toy({"x": 0.0}, finite=lambda step: step in (1, 4)))
    assert [r["skipped_steps"] for r in _rows(tmp_path / "stop")] == [1, 2, 4]  # steps 2, 4 and 6
    assert runner.skipped == 5

    runner = _runner(tmp_path / "off", max_nonfinite_in_a_row=None)
    runner.resume(lambda step: None)
    assert runner.run(*_toy({"x": 0.0}, finite=lambda step: False)).skipped == 0
