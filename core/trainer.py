"""The training recipe: `setup` builds the parts from a config, `fit` runs the loop, `validate` evaluates.

One optimizer step = `grad_accum_steps` micro-batches whose summed token losses are divided by the
number of trained tokens in all of them, so accumulation gives the same update as one larger batch.
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import get_scheduler
from transformers.utils import logging as hf_logging

from core import checkpoint as ckpt
from core.batching import collate, epoch_batches, eval_batches
from core.checkpoint import TrainState
from core.config import TrainConfig
from core.dataset import DataOptions
from core.last_layer import trim_last_layer
from core.lean_layers import make_lean
from core.loss import IGNORE, summed_loss, summed_loss_full_logits, supports_selective_head
from core.models import default_cache_dir, load_model_and_tokenizer
from core.packing import can_pack, enable_packing, pack
from core.tokenized import TokenizedData, split_sequences, tokenize_file
from core.utils import (autocast, get_rng_state, pick_device, pick_precision, retain_freed_memory, set_rng_state,
                        set_seed)

# Options whose change makes a resumed run differ from the interrupted one.
RESUME_CRITICAL = ("model_name", "epochs", "batch_size", "grad_accum_steps", "max_steps", "lr", "lr_scheduler",
                   "warmup_ratio", "weight_decay", "max_grad_norm", "seed", "eval_split", "max_length", "train_on",
                   "system_prompt", "merge_consecutive", "precision", "packing")


class TrainingStopped(RuntimeError):
    """The run ended before its last step; the message says why, and `checkpoint` where to resume from."""

    def __init__(self, message: str, checkpoint: Path | None = None, exit_code: int = 1):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.exit_code = exit_code


@dataclass
class Run:
    config: TrainConfig
    model: torch.nn.Module
    tokenizer: object
    data: TokenizedData
    train_idx: np.ndarray
    eval_idx: np.ndarray
    device: torch.device
    amp_dtype: torch.dtype
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    total_steps: int
    state: TrainState = field(default_factory=TrainState)
    body: object = None           # the (optionally compiled) transformer without its head
    packed: bool = False          # batches are packed rows (core.packing), not padded ones
    resumed_from: Path | None = None
    fingerprint: dict = field(default_factory=dict)
    window_start: float = 0.0     # when the current log window began (for tokens per second)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)


# Setup -------------------------------------------------------------------------------------------

def setup(config: TrainConfig, log=print) -> Run:
    """Load data, model and optimizer; restore a checkpoint when resuming."""
    hf_logging.disable_progress_bar()  # our own bar is the one to watch
    output_dir = Path(config.output_dir)
    ckpt.recover_interrupted_swap(output_dir / "best_model")
    resume_dir = _resume_dir(config, output_dir, log)
    set_seed(config.seed)
    device = pick_device(config.device)
    amp_dtype = pick_precision(device, config.precision)
    cache_root = default_cache_dir(config.cache_dir)

    model, tokenizer = load_model_and_tokenizer(str(resume_dir or config.model_name), config.cache_dir,
                                                config.trust_remote_code)
    options = DataOptions(config.system_prompt, config.merge_consecutive, config.train_on)
    data = tokenize_file(config.data_path, tokenizer, options, config.max_length, cache_root)
    train_idx, eval_idx = split_sequences(data, config.eval_split, config.seed)
    if len(train_idx) == 0:
        raise TrainingStopped(f"{config.data_path}: no training sequences left after the validation split")
    log(describe_data(data, train_idx, eval_idx))
    _set_stop_tokens(model, tokenizer, data)

    if device.type == "cpu" and not retain_freed_memory():
        log("Note: the C library (not glibc?) refused to keep freed memory for reuse, so every step faults its "
            "activations in afresh: slower on the CPU, not wrong")
    model.to(device)
    model.train()  # from_pretrained returns eval mode, in which gradient checkpointing is inactive
    make_lean(model)
    packed = False
    if config.packing:
        reason = can_pack(model, config.max_length)
        if reason:
            log(f"Packing is off: {reason}; training on right-padded batches of similar lengths")
        else:
            enable_packing(model)
            packed = True
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    body = None
    if supports_selective_head(model):
        body = model.get_decoder()
        trim_last_layer(model)
    if config.compile and body is not None:
        body = torch.compile(body)

    n_batches = math.ceil(len(train_idx) / config.batch_size)
    steps_per_epoch = math.ceil(n_batches / config.grad_accum_steps)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    optimizer = _make_optimizer(model, config, device)
    scheduler = get_scheduler({"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[
        config.lr_scheduler], optimizer, num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
        num_training_steps=total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    fingerprint = {"data_sha256": data.data_hash,
                   "config": {k: getattr(config, k) for k in RESUME_CRITICAL}}
    run = Run(config, model, tokenizer, data, train_idx, eval_idx, device, amp_dtype, optimizer, scheduler,
              scaler, total_steps, body=body, packed=packed, fingerprint=fingerprint)
    if resume_dir is not None:
        _restore(run, resume_dir, log)
    output_dir.mkdir(parents=True, exist_ok=True)
    config.save(output_dir / "train_config.json")
    return run


def _resume_dir(config: TrainConfig, output_dir: Path, log) -> Path | None:
    if not config.resume_from_checkpoint:
        return None
    if config.resume_from_checkpoint == "auto":
        found = ckpt.latest_checkpoint(output_dir)
        log(f"Resuming from {found}" if found else f"No complete checkpoint in {output_dir}; starting fresh")
        return found
    path = Path(config.resume_from_checkpoint)
    if not path.is_dir():
        raise TrainingStopped(f"--resume_from_checkpoint {path}: no such directory")
    ckpt.load_checkpoint(path)  # fails early, with its message, on an incomplete one
    return path


def _restore(run: Run, path: Path, log) -> None:
    state, fingerprint, _, tensors = ckpt.load_checkpoint(path)
    differences = [f"data file (sha256 {fingerprint['data_sha256'][:12]} -> {run.fingerprint['data_sha256'][:12]})"
                   ] if fingerprint["data_sha256"] != run.fingerprint["data_sha256"] else []
    for key, before in fingerprint["config"].items():
        now = run.fingerprint["config"].get(key)
        if key != "model_name" and now != before:
            differences.append(f"--{key} {before!r} -> {now!r}")
    if differences:
        message = f"{path} was written with different inputs: {'; '.join(differences)}"
        if not run.config.force_resume:
            raise TrainingStopped(message + ". The resumed run would not match the original; "
                                  "restore them or pass --force_resume to continue anyway")
        log(f"Warning: {message}; continuing because of --force_resume")
    run.optimizer.load_state_dict(tensors["optimizer"])
    run.scheduler.load_state_dict(tensors["scheduler"])
    run.scaler.load_state_dict(tensors["scaler"])
    set_rng_state(tensors["rng"])
    run.state = state
    run.resumed_from = path
    _truncate_metrics(run.output_dir / "metrics.jsonl", state.step)
    log(f"Resumed at step {state.step}, epoch {state.epoch + 1}, batch {state.batch_in_epoch}")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint, so the resumed run's lines are not doubled."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def _make_optimizer(model, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and norm weights; fused kernels on CUDA and CPU, foreach elsewhere."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=config.lr, fused=fused, foreach=None if fused else True)


def _set_stop_tokens(model, tokenizer, data: TokenizedData) -> None:
    """Make generation stop at the end-of-turn tokens the model is trained to emit."""
    learned = data.summary["format"]["end_of_turn_ids"]
    existing = model.generation_config.eos_token_id
    existing = [] if existing is None else [existing] if isinstance(existing, int) else list(existing)
    stop = existing + [t for t in learned if t not in existing]
    model.generation_config.eos_token_id = stop[0] if len(stop) == 1 else stop
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def describe_data(data: TokenizedData, train_idx: np.ndarray, eval_idx: np.ndarray) -> str:
    load, fmt = data.summary["load"], data.summary["format"]
    formats = ", ".join(f"{n} {k}" for k, n in sorted(load["formats"].items()))
    lines = [f"Data: {load['records']} records ({formats}) -> {fmt['sequences']} sequences; "
             f"{len(train_idx)} train, {len(eval_idx)} validation",
             f"  trained tokens: {int(np.asarray(data.trained).sum())} of {len(data.ids)}"]
    if load["merged_records"]:
        lines.append(f"  {load['merged_records']} records had consecutive same-role messages merged")
    if load["system_added"]:
        lines.append(f"  {load['system_added']} records got the default --system_prompt")
    if fmt["split_by_template"]:
        lines.append(f"  {fmt['split_by_template']} records were split into one sequence per trained turn because "
                     "the chat template renders earlier turns differently later on")
    if fmt["shortened"]:
        lines.append(f"  {fmt['shortened']} sequences exceeded --max_length {data.summary['max_length']} and were "
                     f"shortened (oldest turns dropped first), {fmt['dropped_tokens']} tokens dropped")
    if fmt["replies_cut"]:
        lines.append(f"  WARNING: {fmt['replies_cut']} replies alone exceed --max_length and were cut; their "
                     "end-of-turn token is not trained. Raise --max_length to keep them whole")
    return "\n".join(lines)


# Loop --------------------------------------------------------------------------------------------

def train_batches(run: Run, epoch: int) -> list[np.ndarray]:
    """The epoch's batch order: shuffled, and length-grouped only when batches are padded."""
    return epoch_batches(run.train_idx, run.data.lengths, run.config.batch_size, run.config.seed, epoch,
                         by_length=not run.packed)


def make_batch(run: Run, batch: np.ndarray) -> tuple[dict, torch.Tensor]:
    """(model inputs, labels) on the run's device: one packed row, or right-padded rows."""
    inputs, labels = pack(run.data, batch) if run.packed else collate(run.data, batch, run.tokenizer.pad_token_id)
    return ({k: v.to(run.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()},
            labels.to(run.device))


def _loss_sum(run: Run, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
    with autocast(run.device, run.amp_dtype):
        if run.body is not None:
            return summed_loss(run.model, inputs, labels, body=run.body)
        return summed_loss_full_logits(run.model, inputs, labels)


@torch.no_grad()
def validate(run: Run) -> dict:
    """Token-weighted validation loss and perplexity over the whole held-out split."""
    run.model.eval()
    total, tokens = 0.0, 0
    for batch in eval_batches(run.eval_idx, run.data.lengths, run.config.batch_size):
        inputs, labels = make_batch(run, batch)
        total += _loss_sum(run, inputs, labels).item()
        tokens += int((labels[:, 1:] != IGNORE).sum())
    run.model.train()
    loss = total / max(tokens, 1)
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": tokens}


def accumulate_gradients(run: Run, micro_batches: list[np.ndarray]) -> tuple[float, int, int]:
    """Backward over the micro-batches, each scaled by 1 / (trained tokens of all of them).

    Returns (mean token loss, trained tokens, real tokens). The gradient equals that of one batch
    holding all the micro-batches, whatever their sizes.
    """
    batches = [make_batch(run, b) for b in micro_batches]
    n_trained = sum(int((labels[:, 1:] != IGNORE).sum()) for _, labels in batches)
    n_real = int(sum(run.data.lengths[b].sum() for b in micro_batches))
    total = torch.zeros((), device=run.device)
    for inputs, labels in batches:
        loss = _loss_sum(run, inputs, labels)
        run.scaler.scale(loss / max(n_trained, 1)).backward()
        total += loss.detach()
    return float(total) / max(n_trained, 1), n_trained, n_real


def train_step(run: Run, micro_batches: list[np.ndarray]) -> tuple[float, float, int, int]:
    """One optimizer step: (mean token loss or NaN if the update was skipped, grad norm, trained, real tokens)."""
    mean_loss, n_trained, n_real = accumulate_gradients(run, micro_batches)
    run.scaler.unscale_(run.optimizer)
    params = [p for p in run.model.parameters() if p.grad is not None]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, run.config.max_grad_norm or float("inf")))
    # With fp16 the scaler itself skips steps with overflowing gradients; only a bad loss is ours to count.
    finite = math.isfinite(mean_loss) and (math.isfinite(grad_norm) or run.scaler.is_enabled())
    if finite:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    return (mean_loss if finite else float("nan")), grad_norm, n_trained, n_real


class _StopSignal:
    """SIGINT/SIGTERM: finish the current step, checkpoint, exit. A second signal exits at once."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            raise SystemExit(128 + signum)
        self.received = signum
        tqdm.write(f"\n{signal.Signals(signum).name} received: finishing this step and saving a checkpoint "
                   "(signal again to exit at once)")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def fit(run: Run, log=tqdm.write) -> dict:
    """Train to the end (or to early stopping); return the final summary."""
    config, state = run.config, run.state
    metrics = (run.output_dir / "metrics.jsonl").open("a")
    accum = config.grad_accum_steps
    bar = tqdm(total=run.total_steps, initial=state.step, desc="Training", unit="step", dynamic_ncols=True)
    started = last = run.window_start = time.perf_counter()
    stop_reason = None

    def record(entry: dict) -> None:
        metrics.write(json.dumps(entry) + "\n")
        metrics.flush()

    try:
        with _StopSignal() as stop:
            while state.epoch < config.epochs and state.step < run.total_steps and stop_reason is None:
                batches = train_batches(run, state.epoch)
                while state.batch_in_epoch < len(batches) and stop_reason is None:
                    group = batches[state.batch_in_epoch: state.batch_in_epoch + accum]
                    loss, grad_norm, n_trained, n_real = train_step(run, group)
                    state.step += 1
                    state.batch_in_epoch += len(group)
                    state.tokens_seen += n_real
                    stop_reason = _after_step(run, loss, grad_norm, n_trained, n_real, record, log)
                    now = time.perf_counter()
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{run.scheduler.get_last_lr()[0]:.2e}",
                                    tok_s=f"{n_real / max(now - last, 1e-9):.0f}")
                    last = now
                    if stop_reason is None and state.step >= run.total_steps and state.batch_in_epoch < len(batches):
                        stop_reason = "max_steps"
                    if stop.received and stop_reason is None:
                        path = _save(run, run.output_dir / f"checkpoint-{state.step}")
                        raise TrainingStopped(f"stopped by {signal.Signals(stop.received).name} after step "
                                              f"{state.step}; checkpoint saved to {path}", path,
                                              128 + stop.received)
                if stop_reason is None:
                    state.epoch += 1
                    state.batch_in_epoch = 0
                    stop_reason = _evaluate(run, record, log, end_of_epoch=True)
                    _save(run, run.output_dir / f"epoch_{state.epoch}")
            if stop_reason == "max_steps":
                if not (config.eval_steps and state.step % config.eval_steps == 0):  # not just evaluated
                    _evaluate(run, record, log, end_of_epoch=False)
                if not (config.save_steps and state.step % config.save_steps == 0):  # not just saved
                    _save(run, run.output_dir / f"checkpoint-{state.step}")
    finally:
        bar.close()
        metrics.close()
    if not run.eval_idx.size:
        ckpt.save_model_dir(run.output_dir / "best_model", run.model, run.tokenizer)
    summary = {"steps": state.step, "epochs_completed": state.epoch, "best_eval_loss": state.best_loss,
               "best_step": state.best_step, "bad_steps_skipped": state.bad_steps_total,
               "stopped": stop_reason or "completed", "seconds": round(time.perf_counter() - started, 1)}
    (run.output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _after_step(run: Run, loss: float, grad_norm: float, n_trained: int, n_real: int, record, log) -> str | None:
    """Bookkeeping after an optimizer step: bad-number guard, logging, evaluation, checkpoints."""
    config, state = run.config, run.state
    lr = run.scheduler.get_last_lr()[0]
    if math.isnan(loss):
        state.bad_steps_in_row += 1
        state.bad_steps_total += 1
        record({"type": "skipped", "step": state.step, "reason": "non-finite loss or gradient norm", "lr": lr})
        log(f"step {state.step}: non-finite loss or gradient norm, update skipped "
            f"({state.bad_steps_in_row} in a row, {state.bad_steps_total} in total)")
        if state.bad_steps_in_row >= config.max_bad_steps:
            raise TrainingStopped(f"{state.bad_steps_in_row} non-finite losses or gradients in a row, the last at step "
                                  f"{state.step} (learning rate {lr:.3g}); the learning rate is a likely cause: "
                                  "lower --lr or raise --warmup_ratio")
    else:
        state.bad_steps_in_row = 0
        state.window_loss += loss * n_trained
        state.window_tokens += n_trained
    state.window_seen += n_real
    if state.step % config.log_steps == 0 or state.step == run.total_steps:
        _log_train(run, lr, grad_norm, record, log)
    stop_reason = None
    if config.eval_steps and state.step % config.eval_steps == 0 and run.eval_idx.size:
        stop_reason = _evaluate(run, record, log, end_of_epoch=False)
    if config.save_steps and state.step % config.save_steps == 0:
        _save(run, run.output_dir / f"checkpoint-{state.step}")
    return stop_reason


def _log_train(run: Run, lr: float, grad_norm: float, record, log) -> None:
    state = run.state
    now = time.perf_counter()
    elapsed = now - run.window_start
    run.window_start = now
    loss = state.window_loss / state.window_tokens if state.window_tokens else float("nan")
    entry = {"type": "train", "step": state.step, "epoch": state.epoch + 1, "loss": loss, "lr": lr,
             "grad_norm": grad_norm, "tokens_per_sec": state.window_seen / elapsed if elapsed > 0 else None}
    record(entry)
    speed = f" | {entry['tokens_per_sec']:.0f} tok/s" if entry["tokens_per_sec"] else ""
    log(f"step {state.step}/{run.total_steps} | epoch {state.epoch + 1} | loss {loss:.4f} | lr {lr:.2e} | "
        f"grad norm {grad_norm:.3f}{speed}")
    state.window_loss, state.window_tokens, state.window_seen = 0.0, 0, 0


def _evaluate(run: Run, record, log, end_of_epoch: bool) -> str | None:
    """Validate, keep best_model/ up to date, and apply early stopping."""
    config, state = run.config, run.state
    if not run.eval_idx.size:
        return None
    result = validate(run)
    record({"type": "eval", "step": state.step, "epoch": state.epoch if end_of_epoch else state.epoch + 1,
            **result})
    improved = state.best_loss is None or result["eval_loss"] < state.best_loss - config.early_stopping_threshold
    log(f"validation at step {state.step}: loss {result['eval_loss']:.4f}, perplexity {result['eval_ppl']:.2f}"
        + (" (best so far)" if improved else ""))
    if improved:
        state.best_loss, state.best_step = result["eval_loss"], state.step
        state.evals_without_improvement = 0
        ckpt.save_model_dir(run.output_dir / "best_model", run.model, run.tokenizer, extra_files={
            ckpt.CONFIG_FILE: json.dumps(config.to_dict(), indent=2),
            "best.json": json.dumps({"step": state.step, **result}, indent=2)})
        return None
    state.evals_without_improvement += 1
    if config.early_stopping_patience and state.evals_without_improvement >= config.early_stopping_patience:
        log(f"Early stopping: {state.evals_without_improvement} evaluations without improvement; "
            f"best_model/ is from step {state.best_step} (loss {state.best_loss:.4f})")
        return "early_stopping"
    return None


def _save(run: Run, path: Path) -> Path:
    ckpt.save_checkpoint(path, run.model, run.tokenizer, run.config, run.state, run.fingerprint, run.optimizer,
                         run.scheduler, run.scaler, get_rng_state())
    if run.config.save_total_limit:
        protected = {p for p in (run.resumed_from,) if p is not None}
        if run.state.best_step is not None:
            protected.add(run.output_dir / f"checkpoint-{run.state.best_step}")
        ckpt.rotate_checkpoints(run.output_dir, run.config.save_total_limit, protected)
    return path
