"""Build a run from its config, one concern at a time: output directory, data, model, optimizer, state.

`setup` checks what can be checked before anything loads (device, data file, output and cache directories,
the lock, resume checkpoint), then loads the model (and checks the adapters' target modules against it), the
tokenised data, prepares the model (core/model/prepare.py), with --lr auto searches for the rate
(core/train/lr_search.py), builds the optimizer and restores a checkpoint's state when resuming. The result,
`Run`, is what `core.trainer.fit` trains.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import get_scheduler
from transformers.utils import logging as hf_logging

from core.config import AUTO, TrainConfig, default_batch_tokens
from core.data.batching import BatchSize, epoch_batches
from core.data.files import data_inputs, source_sha256
from core.data.statistics import data_statistics, format_statistics
from core.data.store_reader import is_store_path, pin
from core.data.tokenized import TokenizedData, split_records
from core.errors import CheckpointError, ConfigError
from core.model.load import default_cache_dir, load_model_and_tokenizer
from core.model.prepare import Prepared, decoder_layers, prepare_model, set_stop_tokens
from core.outputs import check_cache_dir, local_inputs
from core.run_files import CONFIG_FILE
from core.train import checkpoint as ckpt
from core.train import distributed, trackers
from core.train.checkpoint import Restored, TrainState
from core.train.checkpoint_writer import BackgroundWriter
from core.train.disk_space import disk_shortfall
from core.train.distributed import Dist
from core.train.fingerprint import check_resumable, run_fingerprint
from core.train.lr_search import plan_search, search_lr
from core.train.objectives import Objective, objective_for
from core.train.output_dir import (
    check_output_dir,
    claim_output_dir,
    lock_output_dir,
    mark_output_dir,
    start_afresh,
    truncate_logs,
)
from core.train.samples import SamplePrompts, sample_plan
from core.utils import (
    pick_device,
    pick_precision,
    recover_interrupted_swap,
    retain_freed_memory,
    set_rng_state,
    set_seed,
)


@dataclass
class Splits:
    sequences: TokenizedData
    lengths: np.ndarray        # tokens per unit (a sequence, or a pair: see core/train/objectives/)
    train_idx: np.ndarray      # units
    eval_idx: np.ndarray
    statistics: dict           # what `inspect` prints; also written to data_summary.json
    prompts: SamplePrompts     # validation prompts whose replies samples.jsonl follows (core/train/samples.py)


@dataclass
class Optimization:
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    total_steps: int


@dataclass
class Run:
    config: TrainConfig
    prepared: Prepared
    tokenizer: object
    data: Splits
    optim: Optimization
    fingerprint: dict
    batching: BatchSize
    objective: Objective
    dist: Dist = field(default_factory=Dist)
    state: TrainState = field(default_factory=TrainState)
    resumed_from: Path | None = None
    unread: list = field(default_factory=list)  # steps whose figures are still on the device (core/trainer.py)
    writer: BackgroundWriter | None = None      # writes checkpoint-N/ while training goes on (set by `fit`)
    saving: Path | None = None                  # the checkpoint being written, whose "saved" event is due
    lr_search: dict | None = None               # --lr auto's curve and choice (core/train/lr_search.py)
    on_event: Callable[..., None] = lambda name, run, **details: None

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)


# Setup: one function per concern -----------------------------------------------------------------

def setup(config: TrainConfig, log=print) -> Run:
    """Check the inputs, claim the output directory, then load data, model and optimizer; restore when resuming."""
    hf_logging.disable_progress_bar()  # our own bar is the one to watch
    trackers.check_available(config.report_to)
    device = pick_device(config.device)
    amp_dtype = pick_precision(device, config.precision)
    given_tokens, config.batch_tokens = config.batch_tokens, default_batch_tokens(config.batch_tokens, device.type,
                                                                                   config.max_length)
    dist = distributed.init_distributed(config.distributed, device)
    device, log = distributed.local_device(dist, device), log if dist.is_main else (lambda *_: None)
    pin_store_snapshot(config, dist)
    data_hash = source_sha256(config.data_path)
    fingerprint = run_fingerprint(data_hash, config, dist.world_size)
    objective = objective_for(config)
    objective.check_data(config)
    out = Path(config.output_dir)
    restored = setup_output_dir(config, out, fingerprint, dist, log)
    set_seed(config.seed)
    source = restored.path if restored and not config.lora else config.model_name  # LoRA checkpoints: adapters
    model, tokenizer = load_model_and_tokenizer(str(source), config.cache_dir, config.trust_remote_code,
                                                load_in_4bit=config.load_in_4bit, device=device)
    if config.lora:
        check_target_modules(model, config.lora_target_modules)
    with distributed.main_first(dist):  # rank 0 tokenises into the cache; the others then read it
        splits = setup_data(config, objective, tokenizer, data_hash, log)
    if dist.is_main and not (dist.active and dist.strategy == "fsdp"):  # sharded weights cannot generate alone
        splits.prompts = objective.validation_prompts(config, splits.sequences)
        log(sample_plan(config, splits.prompts))
    if device.type == "cpu" and not retain_freed_memory():
        log("Note: the C library (not glibc?) refused to keep freed memory for reuse, so every step faults its "
            "activations in afresh: slower on the CPU, not wrong")
    adapter_from = restored.path if restored and config.lora else None
    prepared = prepare_model(model, hardware=config, adapter=config, max_length=config.max_length, device=device,
                             amp_dtype=amp_dtype, log=log, adapter_from=adapter_from)
    prepared.loss_module, wrapped = distributed.wrap(prepared.loss_module, dist, decoder_layers(prepared.model),
                                                     amp_dtype)
    if wrapped:
        log(f"Processes: {wrapped}")
    set_stop_tokens(model, tokenizer, splits.sequences.summary["format"]["end_of_turn_ids"])
    batching = BatchSize(config.batch_size, config.batch_tokens, dist.world_size, padded=not prepared.packed,
                         group_batches=0 if prepared.packed else config.length_group_batches)
    steps = epoch_steps(config, splits, batching)
    total_steps = min(sum(steps), config.max_steps) if config.max_steps else sum(steps)

    def trial_run(lr: float, trial_steps: int) -> Run:
        trial = dataclasses.replace(config, lr=lr, warmup_ratio=0.0)  # see core/train/lr_search.py
        optimization = setup_optimization(model, trial, trial_steps, device, amp_dtype, dist)
        return Run(trial, prepared, tokenizer, splits, optimization, fingerprint, batching, objective, dist)
    searched = choose_lr(config, restored, total_steps, steps[0], trial_run, log) if config.lr == AUTO else None
    optim = setup_optimization(model, config, total_steps, device, amp_dtype, dist)
    if config.lora_default_lr():
        log(f"Learning rate: {config.lr:g}, the LoRA default (no --lr given): adapters start at zero and move the "
            "model only through their low-rank product, so a full fine-tune's 2e-5 barely moves them")
    per_process = f"up to {config.batch_tokens} tokens" if config.batch_tokens else \
        f"{config.batch_size} {objective.unit}"
    if given_tokens < 0 < config.batch_tokens:
        per_process += " (the CUDA default; --batch_tokens 0 for --batch_size)"
    log(f"Batches: {per_process} per process x {dist.world_size} process(es) x {config.grad_accum_steps} "
        f"accumulated per optimizer step; {optim.total_steps} steps")
    run = Run(config, prepared, tokenizer, splits, optim, fingerprint, batching, objective, dist, lr_search=searched)
    if restored is not None:
        restore(run, restored, log)
    objective.prepare(run, log)
    if dist.is_main:
        mark_output_dir(out, fingerprint, config, splits.statistics)
        warn_if_disk_short(run, steps, log)
    return run


def pin_store_snapshot(config: TrainConfig, dist: Dist) -> None:
    """A store --data_path: the rows this run reads, pinned once by rank 0 (core/data/store_reader.py) and kept as
    the run's data_path in train_config.json; a resumed run reads the snapshot of the run it resumes."""
    if is_store_path(config.data_path):
        pinned = pin(config.data_path, config.objective, resumed_data_path(config)) if dist.is_main else None
        config.data_path = distributed.from_main(dist, pinned)


def resumed_data_path(config: TrainConfig) -> str | None:
    """The data_path in the train_config.json of the checkpoint this run will resume from, if any."""
    if not config.resume_from_checkpoint:
        return None
    if config.resume_from_checkpoint == "auto":
        found = ckpt.complete_checkpoints(Path(config.output_dir))
        path = found[-1][1] if found else None
    else:
        path = Path(config.resume_from_checkpoint)
    try:
        return json.loads((path / CONFIG_FILE).read_text()).get("data_path") if path else None
    except (OSError, ValueError, AttributeError):
        return None  # the resume itself says what is wrong with the checkpoint


def setup_output_dir(config: TrainConfig, out: Path, fingerprint: dict, dist: Dist, log) -> Restored | None:
    """Check the output and cache paths, lock and claim the directory (rank 0), and find the checkpoint to
    resume from (checked against this run). With 'auto' and no checkpoint yet, the run starts afresh."""
    if dist.is_main:
        inputs = data_inputs(config.data_path) + local_inputs("--model_name", config.model_name)
        check_output_dir(out, inputs)
        check_cache_dir(default_cache_dir(config.cache_dir), inputs)
        lock_output_dir(out)
        recover_interrupted_swap(out / "best_model")
    restored = ckpt.find_resume(config.resume_from_checkpoint, out, log)
    if restored is not None:
        check_resumable(restored.path, restored.fingerprint, fingerprint, config.force_resume, log)
    if dist.is_main:
        if config.resume_from_checkpoint == "auto" and restored is None and not config.overwrite_output_dir:
            start_afresh(out, fingerprint, log)
        claim_output_dir(out, fingerprint, restored is not None, config.overwrite_output_dir, log)
    distributed.barrier(dist)
    return restored


def choose_lr(config: TrainConfig, restored: Restored | None, total_steps: int, first_epoch_steps: int,
              trial_run: Callable[[float, int], Run], log) -> dict | None:
    """--lr auto: set config.lr to the rate a resumed run chose at its start, or search for it now (and return
    the search's metrics.jsonl entry). The optimizer is built after this, at that rate."""
    if restored is not None:
        config.lr = searched_rate(restored.path)
        log(f"Learning rate: {config.lr:.3g}, chosen by --lr auto when this run started ({restored.path.name}/"
            f"{CONFIG_FILE}); not searched again")
        return None
    plan = plan_search(config, total_steps, first_epoch_steps)
    log(plan.describe())
    searched = search_lr(plan, trial_run, log)
    config.lr = searched["chosen_lr"]
    return searched


def searched_rate(checkpoint: Path) -> float:
    """The rate --lr auto chose, as the run's config beside the checkpoint holds it."""
    lr = json.loads((checkpoint / CONFIG_FILE).read_text()).get("lr")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise CheckpointError(f"{checkpoint / CONFIG_FILE}: its 'lr' ({lr!r}) is not the positive rate --lr auto "
                              "chose; pass --lr with the rate to resume at")
    return float(lr)


def check_target_modules(model, value: str) -> None:
    """Every name in --lora_target_modules names modules of this model (PEFT would ignore a typo among good ones,
    or fail with its own error), checked before the data is tokenised."""
    from core.model.adapters import target_modules
    wanted = target_modules(value)
    if wanted == "all-linear":
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in names)]
    if missing or not wanted:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"--lora_target_modules: {', '.join(map(repr, missing)) or 'no name given'} "
                          f"{'names' if len(missing) < 2 else 'name'} no module of {type(model).__name__}; its "
                          f"linear layers are {', '.join(linear)} (or pass all-linear)")


def setup_data(config: TrainConfig, objective: Objective, tokenizer, data_hash: str, log) -> Splits:
    data = objective.load_data(config, tokenizer, data_hash)
    is_eval = split_records(len(data.hashes), config.eval_split, config.seed)[objective.unit_records(data)]
    train_idx, eval_idx = np.flatnonzero(~is_eval), np.flatnonzero(is_eval)
    if len(train_idx) == 0:
        raise ConfigError(f"{config.data_path}: no training sequences left after the validation split "
                          f"(--eval_split {config.eval_split}); lower it or add records")
    if config.early_stopping_patience and len(eval_idx) == 0:
        raise ConfigError(f"--eval_split {config.eval_split} of {data.summary['load']['records']} records holds out "
                          "no validation record, which --early_stopping_patience needs; raise --eval_split")
    statistics = data_statistics(data, config.eval_split, config.seed, tokenizer)
    log(format_statistics(statistics, config))
    return Splits(data, objective.unit_lengths(data), train_idx, eval_idx, statistics, SamplePrompts())


def epoch_steps(config: TrainConfig, splits: Splits, batching: BatchSize) -> list[int]:
    """Optimizer steps in each epoch. Filled to a token budget, an epoch's batch count depends on its order,
    so each epoch's batches are counted (cheap: lengths only)."""
    def steps_in(epoch: int) -> int:
        batches = epoch_batches(splits.train_idx, splits.lengths, batching, config.seed, epoch)
        return math.ceil(len(batches) / config.grad_accum_steps)
    return list(map(steps_in, range(config.epochs))) if batching.tokens else [steps_in(0)] * config.epochs


def warn_if_disk_short(run: Run, steps: list[int], log) -> None:
    """Say at the start, not at the third checkpoint, that the disk cannot hold what this run will keep."""
    config, total = run.config, run.optim.total_steps
    saves = total // config.save_steps if config.save_steps else 0
    kept = min(saves, config.save_total_limit) if config.save_total_limit else saves
    epochs_ended = sum(1 for end in np.cumsum(steps) if end <= total)
    per_checkpoint, best_model = ckpt.checkpoint_bytes(run.prepared.model, lora=config.lora)
    warning = disk_shortfall(run.output_dir, per_checkpoint, best_model, kept, epochs_ended)
    if warning:
        log(warning)


def setup_optimization(model, config: TrainConfig, total_steps: int, device: torch.device, amp_dtype: torch.dtype,
                       dist: Dist) -> Optimization:
    """AdamW without weight decay on biases and norm weights (fused on CUDA and CPU), its schedule and scaler."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type in ("cuda", "cpu") and distributed.fused_optimizer_ok(dist)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, fused=fused, foreach=None if fused else True)
    schedule = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[config.lr_scheduler]
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return Optimization(optimizer, scheduler, scaler, total_steps)


def restore(run: Run, restored: Restored, log) -> None:
    distributed.load_optimizer_state(run.prepared.loss_module, run.optim.optimizer, restored.tensors["optimizer"],
                                     run.dist)
    run.optim.scheduler.load_state_dict(restored.tensors["scheduler"])
    run.optim.scaler.load_state_dict(restored.tensors["scaler"])
    set_rng_state(restored.tensors["rng"])
    run.state, run.resumed_from = restored.state, restored.path
    if run.dist.is_main:
        truncate_logs(run.output_dir, run.state.step, log)
    log(f"Resumed at step {run.state.step}, epoch {run.state.epoch + 1}, batch {run.state.batch_in_epoch}")
