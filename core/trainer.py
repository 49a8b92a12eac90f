"""The training loop: `fit` trains a `Run` (core/train/run.py, built by core/train/run_setup.py) step by step
(core/train/step.py), and decides, in small named functions, when to log, validate, save and stop.

A step's figures (loss, grad norm, whether its update was skipped) stay on the device until the loop
needs them: at a logging step (--log_steps), before validating or saving, and at the end. Then all the
steps since the last read come over in one transfer, and their bookkeeping (skipped-step records, the
bad-steps-in-a-row stop, the logged window) runs for each in order, as if it had run after each step.

Each epoch's steps are built ahead, a few at a time, by a background thread (core/train/prefetch.py) in the
order they are trained; a failure there is raised here.

checkpoint-N/ is written by a background thread (core/train/checkpoint_writer.py) while training goes
on, at most one write in flight; epoch_N/, the last checkpoint and the one a stop writes are written at
once, after the write in flight, which the end of the run, an error or a stop also waits for.

`Run.on_event(name, run, **details)` is called at "micro_batch" (before its forward), "step" (after
an optimizer step) and "saved" (at the first step boundary after a checkpoint directory is complete),
so that tests and tools can observe or interrupt a run at an exact point.
"""

from __future__ import annotations

import json
import math
import signal
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from core.errors import TrainingStopped
from core.model import adapters
from core.run_files import ADAPTER_FILE, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, WEIGHTS_FILE
from core.train import checkpoint as ckpt
from core.train import distributed, trackers
from core.train.checkpoint_writer import BackgroundWriter
from core.train.plan import run_config
from core.train.prefetch import Prefetcher
from core.train.run import Run
from core.train.run_log import RunLog
from core.train.samples import write_samples
from core.train.step import (
    StepResult,
    read_results,
    step_batches,
    step_groups,
    train_batches,
    train_step,
    validate,
)
from core.train.stop_signal import StopSignal
from core.utils import get_rng_state

# The loop ----------------------------------------------------------------------------------------

def fit(run: Run, log=tqdm.write) -> dict:
    """Train to the end (or to early stopping); return the final summary."""
    config, state = run.config, run.state
    started, stop_reason = time.perf_counter(), None
    tracked = trackers.open_trackers(config.report_to, run.output_dir, run_config(config, run.plan)) \
        if run.dist.is_main else []
    if state.step == 0 and run.data.prompts:  # the base model's replies, before any training
        write_samples(run.prepared.model, run.tokenizer, run.data.prompts, 0, run.output_dir,
                      config.sample_max_new_tokens)
    with StopSignal() as stop, BackgroundWriter() as run.writer, \
            RunLog(run.output_dir / METRICS_FILE, run.optim.total_steps, state.step, log, enabled=run.dist.is_main,
                   trackers=tracked) as run_log:
        if run.lr_search is not None:  # chosen during setup, before the log was open
            run_log.record(run.lr_search)
        stop.at_once = run.config.compile  # until the first step, which compiles, is done
        while stop_reason is None and state.epoch < config.epochs and not finished_between_epochs(run):
            batches = train_batches(run, state.epoch)
            with Prefetcher(partial(step_batches, run), step_groups(run, batches), run.prepared.device) as ahead:
                for group, built in ahead:
                    result = train_step(run, group, built)
                    stop.at_once = False
                    state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + len(group)
                    state.tokens_seen += result.real_tokens
                    run_log.step_done(run.optim.scheduler.get_last_lr()[0], result.real_tokens)
                    stop_reason = after_step(run, run_log, result, stopping=stop.received is not None)
                    saved(run, wait=False)
                    if distributed.any_across(run.dist, stop.received is not None, run.prepared.device):
                        read_steps(run, run_log)
                        raise interrupted(run, stop.received or signal.SIGTERM)  # another rank got the signal
                    if stop_reason is not None:
                        break
            read_steps(run, run_log)
            if stop_reason is None and state.batch_in_epoch < len(batches):
                stop_reason = "max_steps"
            elif stop_reason is None:
                stop_reason = end_epoch(run, run_log)
        if stop_reason == "max_steps":
            finish_mid_epoch(run, run_log)
        saved(run)
    run.writer = None
    if not run.data.eval_idx.size:
        save_best(run, {"eval_loss": None})
    return write_summary(run, stop_reason or "completed", time.perf_counter() - started)


def finished_between_epochs(run: Run) -> bool:
    """All steps are done and the last epoch's end was handled (max_steps fell on an epoch boundary)."""
    return run.state.step >= run.optim.total_steps and run.state.batch_in_epoch == 0


class Done(NamedTuple):
    """A step whose figures are still on the device, with what the host knew when it ended."""
    step: int
    epoch: int
    lr: float
    result: StepResult


def after_step(run: Run, run_log: RunLog, result: StepResult, stopping: bool = False) -> str | None:
    """After an optimizer step: read the figures when due, then evaluate and save when due. `stopping`: a stop
    signal came, so a save due now is written at once (the stop's own checkpoint follows), not left in flight."""
    config, state = run.config, run.state
    run.unread.append(Done(state.step, state.epoch, run.optim.scheduler.get_last_lr()[0], result))
    run.on_event("step", run)
    if any(due(every, state.step) for every in (config.log_steps, config.eval_steps, config.save_steps)) \
            or state.step == run.optim.total_steps:
        read_steps(run, run_log)
    stop_reason = evaluate(run, run_log, state.epoch + 1) if due(config.eval_steps, state.step) else None
    if due(config.save_steps, state.step):
        save(run, f"checkpoint-{state.step}", wait=stopping)
    return stop_reason


def read_steps(run: Run, run_log: RunLog) -> None:
    """Read the unread steps' figures (one transfer) and do each one's bookkeeping, in order: bad-number guard,
    the logged window and, at a logging step, its line."""
    done, run.unread = run.unread, []
    read_results([d.result for d in done])
    for step, epoch, lr, result in done:
        count_step(run, run_log, step, epoch, lr, result)


def count_step(run: Run, run_log: RunLog, step: int, epoch: int, lr: float, result: StepResult) -> None:
    config, state = run.config, run.state
    guard_bad_step(run, run_log, step, lr, result.loss)
    if not math.isnan(result.loss):
        state.window_loss += result.loss * result.count
        state.window_tokens += result.count
        state.window_sums = [a + b for a, b in zip(state.window_sums, result.sums)] if state.window_sums \
            else list(result.sums)
    state.window_seen += result.real_tokens
    if due(config.log_steps, step) or step == run.optim.total_steps:
        window_loss = state.window_loss / state.window_tokens if state.window_tokens else float("nan")
        run_log.train_line(step, run.optim.total_steps, epoch + 1, window_loss, lr, result.grad_norm,
                           state.window_seen, run.objective.train_metrics(state.window_sums, state.window_tokens))
        state.window_loss, state.window_tokens, state.window_seen, state.window_sums = 0.0, 0, 0, []


def due(every: int, step: int) -> bool:
    return bool(every) and step % every == 0


def guard_bad_step(run: Run, run_log: RunLog, step: int, lr: float, loss: float) -> None:
    """Count a skipped (non-finite) step; stop when they repeat or when the weights themselves went bad."""
    state = run.state
    if not math.isnan(loss):
        state.bad_steps_in_row = 0
        return
    state.bad_steps_in_row += 1
    state.bad_steps_total += 1
    run_log.record({"type": "skipped", "step": step, "reason": "non-finite loss or gradient norm", "lr": lr})
    run_log.log(f"step {step}: non-finite loss or gradient norm, update skipped "
                f"({state.bad_steps_in_row} in a row, {state.bad_steps_total} in total)")
    diverged = not weights_finite(run)
    if diverged or state.bad_steps_in_row >= run.config.max_bad_steps:
        cause = "the weights are no longer finite" if diverged else (
            f"{state.bad_steps_in_row} non-finite losses or gradients in a row")
        raise TrainingStopped(f"{cause}, the last at step {step} (learning rate {lr:.3g}); the learning rate "
                              "is a likely cause: lower --lr or raise --warmup_ratio")


def weights_finite(run: Run) -> bool:
    return distributed.all_finite(run.prepared.model.parameters(), run.dist, run.prepared.device)


def end_epoch(run: Run, run_log: RunLog) -> str | None:
    """Validate (unless --eval_steps just did) and save epoch_N/; return a stop reason (early stopping) or None."""
    state = run.state
    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    stop_reason = None if due(run.config.eval_steps, state.step) else evaluate(run, run_log, state.epoch)
    save(run, f"epoch_{state.epoch}", wait=True)
    return stop_reason


def finish_mid_epoch(run: Run, run_log: RunLog) -> None:
    """--max_steps ended the run inside an epoch: validate and checkpoint the last step unless just done
    (--save_steps 0 writes no checkpoint-N/: the run is finished, and best_model/ holds the model)."""
    config, step = run.config, run.state.step
    if not due(config.eval_steps, step):
        evaluate(run, run_log, run.state.epoch + 1)
    if config.save_steps and not due(config.save_steps, step):
        save(run, f"checkpoint-{step}", wait=True)


def evaluate(run: Run, run_log: RunLog, epoch: int) -> str | None:
    """Validate, keep best_model/ up to date, and apply early stopping; a non-finite loss stops the run."""
    config, state = run.config, run.state
    if not run.data.eval_idx.size:
        return None
    result = validate(run)
    run_log.record({"type": "eval", "step": state.step, "epoch": epoch, **result})
    if run.data.prompts:
        write_samples(run.prepared.model, run.tokenizer, run.data.prompts, state.step, run.output_dir,
                      config.sample_max_new_tokens)
    if not math.isfinite(result["eval_loss"]):
        raise TrainingStopped(f"the validation loss at step {state.step} is not finite: the weights have diverged "
                              f"(learning rate {run.optim.scheduler.get_last_lr()[0]:.3g}); lower --lr")
    best = run.objective.best  # state.best_loss holds the best value of this metric
    improved = best.improved(result[best.metric], state.best_loss, config.early_stopping_threshold)
    run_log.log(f"validation at step {state.step}: {run.objective.describe_eval(result)}"
                + (" (best so far)" if improved else ""))
    if improved:
        state.best_loss, state.best_step = result[best.metric], state.step
        state.evals_without_improvement = 0
        save_best(run, result)
        return None
    state.evals_without_improvement += 1
    if config.early_stopping_patience and state.evals_without_improvement >= config.early_stopping_patience:
        what = best.metric.removeprefix("eval_").replace("_", " ")
        run_log.log(f"Early stopping: {state.evals_without_improvement} evaluations without improvement; "
                    f"best_model/ is from step {state.best_step} ({what} {state.best_loss:.4f})")
        return "early_stopping"
    return None


def save_best(run: Run, result: dict) -> None:
    """best_model/: a plain Hugging Face directory (a LoRA run's merged model, its adapter in adapter/)."""
    refuse_non_finite(run, "best_model")
    model, adapter = run.prepared.model, None
    weights = distributed.full_model_state(run.prepared.loss_module, run.dist)  # every rank takes part
    if run.dist.is_main and adapters.is_lora(model) and run.config.merge_lora:  # (LoRA runs are never sharded)
        model, adapter, weights = model.get_base_model(), model, adapters.merged_state_dict(model)
    if run.dist.is_main:
        ckpt.save_model_dir(run.output_dir / "best_model", model, run.tokenizer, weights=weights, adapter=adapter,
                            extra_files={CONFIG_FILE: json.dumps(run_config(run.config, run.plan), indent=2),
                                         "best.json": json.dumps({"step": run.state.step, **result}, indent=2)})
    distributed.barrier(run.dist)


def save(run: Run, name: str, wait: bool = False) -> Path:
    """Write checkpoint-N/ or epoch_N/ (rank 0; every rank helps gather), then rotate old checkpoints. Unless
    `wait`, in the background, from a copy of the state as it is now: training goes on while it is written."""
    refuse_non_finite(run, name)
    saved(run)  # the previous write first: at most one in flight
    path, optim, prepared = run.output_dir / name, run.optim, run.prepared
    weights = distributed.full_model_state(prepared.loss_module, run.dist)
    tensors = {"optimizer": distributed.optimizer_state(prepared.loss_module, optim.optimizer, run.dist),
               "scheduler": optim.scheduler.state_dict(), "scaler": optim.scaler.state_dict(), "rng": get_rng_state()}
    if run.dist.is_main:
        protected = {p for p in (run.resumed_from,) if p is not None}
        if run.state.best_step is not None:
            protected.add(run.output_dir / f"checkpoint-{run.state.best_step}")

        def write(snapshot: dict) -> None:
            ckpt.save_checkpoint(path, prepared.model, run.tokenizer, run_config(run.config, run.plan),
                                 snapshot["state"], run.fingerprint, snapshot["tensors"], snapshot["weights"])
            if run.config.save_total_limit:
                ckpt.rotate_checkpoints(run.output_dir, run.config.save_total_limit, protected)
        if run.writer is None or wait:  # written here: a second signal interrupts it as any save
            write({"weights": weights, "tensors": tensors, "state": run.state})
        else:
            run.writer.submit(write, {"weights": weights if weights is not None else model_weights(prepared.model),
                                      "tensors": tensors, "state": run.state})
    run.saving = path
    distributed.barrier(run.dist)
    saved(run, wait=wait or run.writer is None)
    return path


def model_weights(model) -> dict:
    """What a checkpoint's weights file holds: a LoRA model's trainable (adapter) tensors, whose names PEFT's
    save_pretrained picks from, or the whole state dict."""
    state = model.state_dict(keep_vars=True)
    if adapters.is_lora(model):
        return {k: v for k, v in state.items() if v.requires_grad}
    return state


def saved(run: Run, wait: bool = True) -> None:
    """Fire "saved" for the checkpoint being written once it is complete (waiting for it, or only if it is done);
    a failed write raises here."""
    if run.saving is None or (not wait and run.writer is not None and run.writer.busy):
        return
    if run.writer is not None:
        run.writer.wait()
    path, run.saving = run.saving, None
    run.on_event("saved", run, path=path)


def refuse_non_finite(run: Run, name: str) -> None:
    """Never write a diverged model: non-finite weights, or, with no validation to vouch for it, a run that
    ends on a non-finite step."""
    state = run.state
    ending = state.epoch >= run.config.epochs or state.step >= run.optim.total_steps
    unvouched = state.bad_steps_in_row and ending and not run.data.eval_idx.size
    if unvouched or not weights_finite(run):
        raise TrainingStopped(f"the model diverged (non-finite weights or loss at step {run.state.step}), so {name}/ "
                              f"was not written (learning rate {run.optim.scheduler.get_last_lr()[0]:.3g}); lower "
                              "--lr or raise --warmup_ratio")


def interrupted(run: Run, signum: int) -> TrainingStopped:
    path = save(run, f"checkpoint-{run.state.step}", wait=True)
    write_summary(run, signal.Signals(signum).name, None)
    return TrainingStopped(f"stopped by {signal.Signals(signum).name} after step {run.state.step}; checkpoint saved "
                           f"to {path}", path, 128 + signum)


def write_summary(run: Run, stopped: str, seconds: float | None) -> dict:
    """summary.json (rank 0); a finished run must have written the best_model/ it names."""
    state = run.state
    best = run.output_dir / "best_model"
    finished = stopped in ("completed", "max_steps", "early_stopping")
    written = (best / WEIGHTS_FILE).is_file() or (best / ADAPTER_FILE).is_file()
    if run.dist.is_main and finished and not written:
        raise TrainingStopped(f"the run ended ({stopped}) but {best} was not written; this is a bug")
    trainable, total = adapters.parameter_counts(run.prepared.model)
    summary = {"steps": state.step, "epochs_completed": state.epoch, "best_eval_loss": state.best_loss,
               "best_step": state.best_step, "bad_steps_skipped": state.bad_steps_total, "stopped": stopped,
               "seconds": None if seconds is None else round(seconds, 1), "best_model": str(best),
               "trainable_parameters": trainable, "total_parameters": total}
    if run.dist.is_main:
        (run.output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
