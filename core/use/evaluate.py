"""`train.py evaluate`: a model's replies, loss and perplexity on every record of a data file, and the mean.

The loss is taken exactly where training takes it (the same chat template and trained-token masks,
through `core.data.tokenized`), per trained token; the reply is generated for the conversation up to the
record's last trained reply, which is the reference. Two checkpoints evaluated on the same file can
be compared line by line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.config import option
from core.data.batching import collate
from core.data.files import data_files, data_inputs
from core.data.tokenized import tokenize_file
from core.dataset import data_options, load_conversations
from core.errors import ConfigError
from core.labels import perplexity, trained_tokens
from core.model.generation import Sampling, generate_reply
from core.model.load import default_cache_dir
from core.outputs import check_cache_dir, check_output, local_inputs
from core.use.chat import load_for_chat
from core.utils import atomic_file, stage


@dataclass
class EvaluateConfig:
    model: str = option("", "the model to evaluate: a checkpoint directory, hub id, .gguf file or 'smollm2'; required")
    data_path: str = option("", "the records to evaluate on: a .jsonl or .json file (optionally .gz), a directory of them or a glob; required")
    output: str = option("evaluation.jsonl", "where each record's reply, loss and perplexity go (JSONL); the mean goes to the same name with .summary.json")
    max_length: int = option(512, "longest sequence in tokens, as in training")
    system_prompt: str = option("", "default system prompt (persona) for records that have none, as in training")
    train_on: str = option("all_assistant", "which assistant turns the loss is taken on", ("all_assistant", "last_assistant"))
    merge_consecutive: bool = option(False, "merge consecutive messages of one role instead of rejecting the record")
    allow_extra_keys: bool = option(False, "accept record and message keys the formats do not define")
    special_tokens: str = option("refuse", "special-token text in a message: refuse, or train (here: score) it as plain text, as in training", ("refuse", "text"))
    replies: bool = option(True, "generate each record's reply (greedy); off: losses only, much faster")
    max_new_tokens: int = option(64, "longest generated reply in tokens")
    device: str = option("auto", "cuda, mps or cpu", ("auto", "cuda", "mps", "cpu"))
    cache_dir: str = option("", "tokenised-data and converted-model cache (default: ~/.cache/roleplay-tuner)")
    trust_remote_code: bool = option(False, "allow model repositories to run their own Python code")

    def validate(self) -> None:
        if not self.model or not self.data_path:
            raise ConfigError("--model and --data_path are required")
        for name in ("max_length", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        output = Path(self.output)
        if output.is_dir():
            raise ConfigError(f"--output {output} is a directory; pass a file name")


@torch.no_grad()
def record_losses(model, data) -> tuple[np.ndarray, np.ndarray]:
    """(summed loss, trained tokens) per record, each sequence through the stock model on its own."""
    from core.model.patches.selective_head import summed_loss_full_logits
    n_records = int(np.max(data.records)) + 1 if len(data) else 0
    losses, tokens = np.zeros(n_records), np.zeros(n_records, dtype=np.int64)
    for index in range(len(data)):
        inputs, labels = collate(data, np.array([index]), 0)
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        record = int(data.records[index])
        losses[record] += float(summed_loss_full_logits(model, inputs, labels.to(model.device)))
        tokens[record] += trained_tokens(labels)
    return losses, tokens


def is_evaluation(path: Path) -> bool:
    """An earlier evaluation's output: its first line is a record's result (or its summary's keys)."""
    try:
        with path.open(encoding="utf-8") as handle:
            first = json.loads(handle.readline() if path.suffix != ".json" else handle.read())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(first, dict) and ({"where", "loss"} <= first.keys() or {"mean_loss", "records"} <= first.keys())


def check_paths(config: EvaluateConfig) -> None:
    """Before the model loads: the data files can be read, and the outputs harm nothing evaluate did not write."""
    data_files(config.data_path)
    inputs = data_inputs(config.data_path) + local_inputs("--model", config.model)
    output = Path(config.output)
    for path in (output, output.with_suffix(".summary.json")):
        check_output("--output", path, inputs, is_evaluation, "an earlier evaluation's output")
    check_cache_dir(default_cache_dir(config.cache_dir), inputs)


def evaluate(config: EvaluateConfig) -> int:
    check_paths(config)
    output = Path(config.output)
    with stage(f"evaluating {config.model}", f"{output} was not written (an earlier one is intact)"):
        return write_evaluation(config, output)


def write_evaluation(config: EvaluateConfig, output: Path) -> int:
    model, tokenizer = load_for_chat(config.model, config.device, config.cache_dir, config.trust_remote_code)
    options = data_options(config)
    data = tokenize_file(config.data_path, tokenizer, options, config.max_length, default_cache_dir(config.cache_dir))
    losses, tokens = record_losses(model, data)
    greedy = Sampling(max_new_tokens=config.max_new_tokens, greedy=True)
    with atomic_file(output) as records, atomic_file(output.with_suffix(".summary.json")) as summary_file:
        with records.open("w", encoding="utf-8") as handle:
            for index, conversation in enumerate(load_conversations(config.data_path, options)):
                prompt, reference = conversation.before_last_reply()
                loss = losses[index] / max(tokens[index], 1)
                entry = {"where": conversation.where, "prompt": prompt[-1]["content"] if prompt else "",
                         "reference": reference, "loss": loss, "perplexity": perplexity(loss),
                         "trained_tokens": int(tokens[index])}
                if config.replies:
                    entry["reply"] = generate_reply(model, tokenizer, prompt, greedy)
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        mean = float(losses.sum() / max(tokens.sum(), 1))
        summary = {"model": config.model, "data_path": config.data_path, "records": len(losses),
                   "trained_tokens": int(tokens.sum()), "mean_loss": mean, "perplexity": perplexity(mean)}
        summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{config.model} on {config.data_path}: {len(losses)} records, mean loss {mean:.4f} per trained token "
          f"(perplexity {summary['perplexity']:.2f}); each record in {output}")
    return 0
