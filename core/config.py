"""Every hyper-parameter, in option groups (one dataclass each) that `TrainConfig` combines into one flat
command line and YAML schema; the other commands reuse the groups they need, and functions take the
group they read.

Precedence: dataclass defaults < `--config file.yaml` < flags on the command line. Each option says
whether it changes the run (`changes_run`): those make up the run's fingerprint, which a resumed run
must match and which decides whether an output directory holds this run or another one.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from core.errors import ConfigError, first_line

# Adapters start at zero and change the model only through their low-rank product: at a full fine-tune's
# rate (2e-5) they barely move. 2e-4 is the rate PEFT's and TRL's LoRA recipes use.
LORA_LR = 2e-4
MAX_BETA = 10.0  # --beta: DPO and KTO use 0.01 to 0.5; at 10 a margin of a few nats already saturates the loss
AUTO = "auto"  # --lr auto: the rate is chosen by a short search before training (core/train/lr_search.py)


def option(default: Any, help: str, choices: tuple | None = None, changes_run: bool = False,
           at_least: float | None = None, words: tuple[str, ...] = ()) -> Any:
    """A config field; `changes_run` marks options whose change would make a resumed run differ; `words` are
    values it takes besides those of its type (--lr auto)."""
    return field(default=default, metadata={"help": help, "choices": choices, "changes_run": changes_run,
                                            "at_least": at_least, "words": words})


def check_options(config: Any) -> None:
    """The checks every option declares: finite numbers, one of its choices, its lower bound."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{f.name} must be a finite number, got {value}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"--{f.name} must be one of {', '.join(choices)}, got {value!r}")
        at_least = f.metadata.get("at_least")
        if at_least is not None and value not in f.metadata.get("words", ()) and value < at_least:
            bound = "must not be negative" if at_least == 0 else f"must be at least {at_least}"
            raise ConfigError(f"--{f.name} {bound}, got {value}")



CUDA_BATCH_TOKENS = 16384  # --batch_tokens on CUDA when none is given


def default_batch_tokens(requested: int, device_type: str, max_length: int) -> int:
    """--batch_tokens as a run uses it: -1 (not given) is CUDA_BATCH_TOKENS on CUDA (at least --max_length), else 0."""
    if requested >= 0:
        return requested
    return max(CUDA_BATCH_TOKENS, max_length) if device_type == "cuda" else 0


@dataclass
class DataOptions:
    """The training data and its validation split."""

    data_path: str = option("", "training data: a .jsonl or .json file (optionally .gz), a directory of them or a glob pattern, of input/output, messages or ShareGPT records; required")
    eval_split: float = option(0.1, "fraction of records held out for validation (0: none)", changes_run=True)


@dataclass
class FormatOptions:
    """How records become token sequences with trained-token masks: training, `inspect` and `evaluate` alike."""

    max_length: int = option(512, "longest sequence in tokens; longer conversations lose their oldest turns", changes_run=True, at_least=1)
    train_on: str = option("all_assistant", "which assistant turns carry loss", ("all_assistant", "last_assistant"), changes_run=True)
    system_prompt: str = option("", "default system prompt (persona) for records that have none", changes_run=True)
    merge_consecutive: bool = option(False, "merge consecutive messages of one role instead of rejecting the record", changes_run=True)
    allow_extra_keys: bool = option(False, "accept record and message keys the formats do not define (metadata such as 'id'); by default they are refused, so that a misspelt key is not silently ignored")
    special_tokens: str = option("refuse", "text in a message that spells one of the tokenizer's special tokens (<|im_end|>, <tool_call>): refuse names the record; text trains it as plain text, never as the control token", ("refuse", "text"), changes_run=True)
    train_role: str = option("bot", "whose turns are trained: bot (the prospect, the assistant turns); rep (the sales rep's turns, briefed from the persona, with the roles swapped): a rep simulator for --objective grpo's --rep_model", ("bot", "rep"), changes_run=True)


@dataclass
class ModelOptions:
    """The model to fine-tune."""

    model_name: str = option("Qwen/Qwen2.5-0.5B-Instruct", "hub id, local Hugging Face directory, local .gguf file, or 'smollm2' for the offline SmolLM2-135M-Instruct", changes_run=True)


@dataclass
class LoadOptions:
    """Where models run and what loading them may do: every command that loads a model takes these."""

    device: str = option("auto", "cuda, mps or cpu (auto: the first available in that order)", ("auto", "cuda", "mps", "cpu"))
    cache_dir: str = option("", "tokenised-data and converted-model cache (default: ~/.cache/roleplay-tuner)")
    trust_remote_code: bool = option(False, "allow model repositories to run their own Python code")


@dataclass
class ScheduleOptions:
    """Batches, steps and the optimizer."""

    epochs: int = option(3, "passes over the training split", changes_run=True, at_least=1)
    batch_size: int = option(4, "sequences per micro-batch, per process", changes_run=True, at_least=1)
    batch_tokens: int = option(-1, f"fill each micro-batch (per process) with whole sequences up to this many tokens, in place of --batch_size (padded rows count their padding); at least --max_length (0: off; -1: {CUDA_BATCH_TOKENS} on CUDA, where a step needs many tokens to keep the GPU busy, off elsewhere)", changes_run=True, at_least=-1)
    grad_accum_steps: int = option(1, "micro-batches per optimizer step; the loss is normalised by the trained tokens of all of them", changes_run=True, at_least=1)
    max_steps: int = option(0, "stop after this many optimizer steps (0: run all epochs)", changes_run=True, at_least=0)
    lr: float | str = option(2e-5, "peak learning rate (AdamW); with --lora and no --lr: 2e-4 (LORA_LR); auto: chosen before training by short seeded runs at a few rates around that default, judged by the validation loss, costing at most 15% of the run's optimizer steps", changes_run=True, words=(AUTO,))
    lr_scheduler: str = option("cosine", "decay after warmup", ("cosine", "linear", "constant"), changes_run=True)
    warmup_ratio: float = option(0.03, "fraction of optimizer steps spent warming up linearly", changes_run=True)
    weight_decay: float = option(0.0, "AdamW weight decay (not applied to biases and norms)", changes_run=True, at_least=0)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: off)", changes_run=True, at_least=0)
    seed: int = option(42, "seed for the split, the sample order and initialisation", changes_run=True, at_least=0)
    length_group_batches: int = option(64, "padded batches only: batches per length-sorted group (larger pads less, smaller shuffles more)", changes_run=True, at_least=1)


@dataclass
class CheckpointOptions:
    """Where the run writes, how often it validates, logs and saves, when it stops early, and resuming."""

    output_dir: str = option("./checkpoints", "where checkpoints, best_model/, config and metrics go")
    overwrite_output_dir: bool = option(False, "start afresh in an --output_dir that holds an earlier run (its checkpoints and logs are deleted)")
    eval_steps: int = option(0, "also evaluate every N optimizer steps (0: only at the end of each epoch)", changes_run=True, at_least=0)
    log_steps: int = option(100, "write a log line every N optimizer steps", at_least=1)
    save_steps: int = option(500, "write checkpoint-N/ every N optimizer steps (0: never, except the one a SIGINT/SIGTERM stop writes to resume from)", at_least=0)
    save_total_limit: int = option(0, "keep only the K newest checkpoint-N/ (0: keep all)", at_least=0)
    early_stopping_patience: int = option(0, "stop after N evaluations without improvement (0: off)", changes_run=True, at_least=0)
    early_stopping_threshold: float = option(0.0, "smallest drop in validation loss that counts as an improvement", changes_run=True, at_least=0)
    max_bad_steps: int = option(5, "stop after this many non-finite losses or gradients in a row", at_least=0)
    resume_from_checkpoint: str = option("", "checkpoint directory to resume from, or 'auto' for the newest intact one")
    force_resume: bool = option(False, "resume even if the data or hyper-parameters differ from the checkpoint's")
    report: bool = option(True, "write report.html (curves, data, metrics, base against fine-tuned replies) when the run ends or is stopped")
    report_to: str = option("none", "also send the metrics to a tracker", ("none", "tensorboard", "wandb", "trackio"))


@dataclass
class SampleOptions:
    """Replies to validation prompts, generated at every evaluation (samples.jsonl)."""

    sample_prompts: int = option(1, "validation prompts whose replies (greedy and sampled) are generated at every evaluation and appended to samples.jsonl (0: none)", at_least=0)
    sample_max_new_tokens: int = option(32, "longest sampled reply in tokens (the repository's replies: 35 at the 90th percentile)", at_least=1)


@dataclass
class HardwareOptions:
    """Precision, parallelism and the speed-ups of `prepare_model`."""

    precision: str = option("auto", "auto: bf16 autocast on GPUs that support it, fp16 on older GPUs, fp32 on CPU", ("auto", "fp32", "bf16", "fp16"), changes_run=True)
    distributed: str = option("ddp", "with several processes (torchrun, accelerate launch): data parallel (ddp) or fully sharded (fsdp, for models that do not fit one device)", ("ddp", "fsdp"), changes_run=True)
    packing: bool = option(True, "lay each micro-batch's sequences end to end in one row (no padding, attention kept within each sequence); off: right-padded batches of similar lengths", changes_run=True)
    attn_implementation: str = option("auto", "attention over packed rows: varlen (FlashAttention-2 or torch's varlen kernel, CUDA), flex (flex attention with a block mask, CUDA), sdpa (one SDPA call per layer with a block-diagonal mask), eager (SDPA per sequence); auto: varlen on CUDA (flex without a varlen kernel), sdpa with --compile, otherwise the CPU's fastest", ("auto", "varlen", "flex", "sdpa", "eager"))
    liger: str = option("auto", "Liger's Triton kernels (RMSNorm, SwiGLU, RoPE, and fused linear cross-entropy in the selective head; pip install -r requirements-gpu.txt): auto: on with CUDA when liger_kernel imports; on: required (an error where it cannot run)", ("auto", "on", "off"))
    head_chunk_rows: int = option(2048, "trained positions whose logits are computed at once by the selective loss (lower: less memory, more kernel launches)", at_least=1)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass to save memory")
    compile: bool = option(False, "torch.compile the transformer body")


@dataclass
class AdapterOptions:
    """LoRA and QLoRA through PEFT."""

    lora: bool = option(False, "train LoRA adapters (PEFT) instead of every weight: far less memory; best_model/ holds the merged model", changes_run=True)
    lora_r: int = option(16, "LoRA rank", changes_run=True, at_least=1)
    lora_alpha: float = option(32.0, "LoRA scaling numerator (the update is scaled by alpha / r)", changes_run=True)
    lora_dropout: float = option(0.05, "dropout on the LoRA branch", changes_run=True)
    lora_target_modules: str = option("all-linear", "modules that get adapters: all-linear (every linear projection of the decoder layers) or a comma-separated list of names such as q_proj,v_proj", changes_run=True)
    load_in_4bit: bool = option(False, "QLoRA: load the base model in 4-bit NF4 through bitsandbytes (CUDA only; with --lora)", changes_run=True)
    merge_lora: bool = option(True, "also write best_model/ as the merged model (a plain Hugging Face directory); off: the adapter only")


@dataclass
class ObjectiveOptions:
    """What training optimises: supervised replies (sft), or preferences between replies (dpo, kto)."""

    objective: str = option("sft", "sft: learn the replies in the data; dpo: prefer each pair's chosen reply to its rejected one (Rafailov et al. 2023); kto: make replies labelled good likelier and bad ones less likely (Ethayarajh et al. 2024); grpo: practise calls against a simulated rep, rewarded by the roleplay metrics (Shao et al. 2024; docs/grpo.md)", ("sft", "dpo", "kto", "grpo"), changes_run=True)
    beta: float = option(0.1, "dpo, kto and grpo: how far the tuned model may move from the reference model (higher: closer to it; grpo: the KL penalty's weight)", changes_run=True)
    desirable_weight: float = option(1.0, "kto: weight of the loss on replies labelled good", changes_run=True, at_least=0)
    undesirable_weight: float = option(1.0, "kto: weight of the loss on replies labelled bad", changes_run=True, at_least=0)

@dataclass
class GrpoOptions:
    """--objective grpo: calls rolled out against a simulated rep and their reward (docs/grpo.md)."""

    generations: int = option(4, "grpo: calls rolled out per scenario, whose rewards are compared within the group (at least 2)", changes_run=True, at_least=1)
    bot_turns: int = option(2, "grpo: most bot turns per call (the rep opens, then bot and rep take turns)", changes_run=True, at_least=1)
    rollout_max_new_tokens: int = option(32, "grpo: longest bot or rep turn in tokens", changes_run=True, at_least=1)
    rollout_temperature: float = option(1.0, "grpo: the bot's sampling temperature in rollouts", changes_run=True)
    rep_model: str = option("", "grpo: the simulated rep: empty replays the scenario's own rep turns in order; a model directory or hub id (for example one trained with --train_role rep) plays the rep from a brief built from the persona", changes_run=True)
    rep_temperature: float = option(0.7, "grpo: the rep model's sampling temperature", changes_run=True)
    reward_weights: str = option("", "grpo: weights of the reward's components, name=number separated by commas (role, persona_named, persona_kept, no_repetition, length, and custom ones); unnamed components weigh 1", changes_run=True)
    reward_funcs: str = option("", "grpo: extra reward components, module:function separated by commas; each is called as TRL's reward_funcs are, f(prompts, completions, **kwargs) -> one number per call", changes_run=True)
    epsilon: float = option(0.2, "grpo: the clipping range of the policy ratio", changes_run=True)


GROUPS = tuple(group for group in (DataOptions, FormatOptions, ModelOptions, LoadOptions, ScheduleOptions, CheckpointOptions, SampleOptions, HardwareOptions, AdapterOptions, ObjectiveOptions, GrpoOptions,))



@dataclass
class TrainConfig(GrpoOptions, ObjectiveOptions, AdapterOptions, HardwareOptions, SampleOptions, CheckpointOptions, ScheduleOptions, LoadOptions, ModelOptions, FormatOptions, DataOptions):
    """Every option of a training run: the groups combined, so the command line stays flat.

    (Dataclass fields follow the reverse order of the bases, so the groups appear in GROUPS' order.)
    `given`: the options the command line or YAML file set (None when built in code), so that a run can say
    where a value came from. The request is fixed once `validate` has passed: assigning to it raises, and
    what a run resolves from it (the rate --lr auto picks, the batch policy on this device...) is its plan
    (core/train/plan.py).
    """

    given: ClassVar[frozenset[str] | None] = None

    @staticmethod
    def implied(values: dict[str, Any]) -> dict[str, Any]:
        """Defaults that depend on other options given: --lora without --lr trains at LORA_LR."""
        return {"lr": LORA_LR} if values.get("lora") and "lr" not in values else {}

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_validated"):
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}: a validated request is fixed "
                                                  "(what a run resolves from it is its plan, core/train/plan.py)")
        super().__setattr__(name, value)

    def restated(self, **changes: Any) -> TrainConfig:
        """This request with `changes`, as a new validated request (a store URL pinned to the snapshot a run reads):
        the request itself stays as it was."""
        request = dataclasses.replace(self, **changes)
        request.given = self.given
        request.validate()
        return request

    def validate(self) -> None:
        """Check every option before anything loads: ranges, finiteness, and directories that are files."""
        if not self.data_path:
            raise ConfigError("--data_path is required (a .jsonl or .json file of training records, or a directory of them)")
        check_options(self)
        if 0 < self.batch_tokens < self.max_length:
            raise ConfigError(f"--batch_tokens ({self.batch_tokens}) must be at least --max_length ({self.max_length}), "
                              "so that every sequence fits a batch")
        if self.seed >= 2**63:
            raise ConfigError(f"--seed must be below 2**63, got {self.seed}")
        if not 0.0 <= self.eval_split < 1.0:
            raise ConfigError(f"--eval_split must be in [0, 1), got {self.eval_split}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lr == AUTO and not self.eval_split:
            raise ConfigError("--lr auto judges each rate by the validation loss: it needs a validation split "
                              "(--eval_split > 0), or give --lr a number")
        if self.lr == AUTO and self.objective != "sft":
            raise ConfigError(f"--lr auto searches for supervised fine-tuning only; give --lr a number with "
                              f"--objective {self.objective}")
        if self.lr != AUTO and self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ConfigError("--lora_alpha must be positive and --lora_dropout in [0, 1)")
        if self.load_in_4bit and not self.lora:
            raise ConfigError("--load_in_4bit trains adapters on a frozen 4-bit model: add --lora")
        if self.lora and self.distributed == "fsdp":
            raise ConfigError("--lora is not supported with --distributed fsdp (the adapters are small: use ddp)")
        if not 0 < self.beta <= MAX_BETA:
            raise ConfigError(f"--beta must be in (0, {MAX_BETA:g}] (typical: 0.01 to 0.5; higher keeps the model "
                              f"closer to the reference), got {self.beta:g}")
        if self.objective == "kto" and not (self.desirable_weight or self.undesirable_weight):
            raise ConfigError("--desirable_weight and --undesirable_weight are both 0: KTO would learn nothing")
        if self.early_stopping_patience and not self.eval_split:
            raise ConfigError("--early_stopping_patience needs a validation split (--eval_split > 0)")
        self._validate_paths()
        self.__dict__["_validated"] = True

    def _validate_paths(self) -> None:
        for name in ("output_dir", "cache_dir"):
            path = Path(getattr(self, name)) if getattr(self, name) else None
            if path is not None and path.exists() and not path.is_dir():
                raise ConfigError(f"--{name} {path} is a file, not a directory; pass a directory path")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def option_group(group: type, config: Any) -> Any:
    """The option group `group` of a config that combines groups (TrainConfig, EvaluateConfig): for a function that
    reads that group only, and may key a cache by it."""
    return group(**{f.name: getattr(config, f.name) for f in dataclasses.fields(group)})


def run_options(config: TrainConfig) -> dict[str, Any]:
    """The options marked `changes_run`: a run with other values is a different run."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata["changes_run"]}


def help_text(f: dataclasses.Field) -> str:
    """An option's help with its default, unless the help already says it (or that the option is required)."""
    text = f.metadata["help"]
    return text if "(default:" in text or text.endswith("required") else f"{text} (default: {f.default!r})"


def _or_words(kind: type, words: tuple[str, ...]) -> Any:
    """argparse's type for an option that also takes `words`: a word as it is, anything else as `kind`."""
    if not words:
        return kind

    def parse(text: str) -> Any:
        return text if text in words else kind(text)
    parse.__name__ = " or ".join((kind.__name__, *words))  # argparse's "invalid float or auto value: 'x'"
    return parse


def _add_fields(parser: argparse.ArgumentParser, cls: type) -> None:
    for f in dataclasses.fields(cls):
        kind = type(f.default)
        kwargs: dict[str, Any] = {"help": help_text(f).replace("%", "%%"), "default": argparse.SUPPRESS}  # argparse formats %
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _or_words(kind, f.metadata.get("words", ()))
            if f.metadata["choices"]:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(f"--{f.name}", **kwargs)


def load_yaml(path: str, cls: type = TrainConfig) -> dict[str, Any]:
    """Read a YAML config, refusing unknown keys so that a typo is not silently ignored."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8-sig")) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the config file is not UTF-8 text") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({first_line(err)})") from None
    except RecursionError:
        raise ConfigError(f"{path}: the YAML is nested too deeply; a config file is a flat mapping of option: value"
                          ) from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of option: value")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{path}: unknown option {key!r}{hint}")
        expected = type(known[key].default)
        if value in known[key].metadata.get("words", ()):
            continue
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is float and isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string; the user meant the number
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{path}: option {key!r} must be {expected.__name__}, got {value!r}")
        values[key] = value
    return values


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as a ConfigError (one line, exit 2) instead of exiting itself, and reads
    `--lr -1e-5` as a value (argparse's own pattern knows only -1 and -1.5, and took -1e-5 for a flag)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str):
        raise ConfigError(f"{message} (see {self.prog} --help)")


def parse_args(argv: list[str] | None, cls: type = TrainConfig, prog: str = "train.py",
               description: str = "") -> Any:
    """Build a config of type `cls` from defaults, an optional YAML file and command-line flags."""
    parser = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of options; flags on the command line override it")
    _add_fields(parser, cls)
    args = vars(parser.parse_args(argv))
    config_file = args.pop("config", None)
    values = load_yaml(config_file, cls) if config_file else {}
    values.update(args)
    config = cls(**values, **(cls.implied(values) if issubclass(cls, TrainConfig) else {}))
    config.given = frozenset(values)
    config.validate()
    return config
