"""Supervised fine-tuning: the summed cross-entropy of the trained tokens, divided by their number."""

from __future__ import annotations

from contextlib import closing

import numpy as np
import torch

from core.config import FormatOptions, option_group
from core.data.batching import collate, pack
from core.data.files import iter_raw_records
from core.data.tokenized import tokenize_file
from core.dataset import parse_record
from core.labels import perplexity
from core.model.load import default_cache_dir
from core.train.objectives import Batch, Best, Objective
from core.train.samples import SamplePrompts, validation_prompts


def host_trained_tokens(data, sequences: np.ndarray) -> int:
    """Tokens that carry loss, from the host arrays: each sequence's first token predicts nothing."""
    return sum(int(np.count_nonzero(data.trained[data.offsets[i] + 1:data.offsets[i + 1]])) for i in sequences)


def to_device(inputs: dict, device) -> dict:
    return {k: move(v, device) if hasattr(v, "to") else v for k, v in inputs.items()}


def move(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`: on CUDA copied from pinned memory without blocking the host (to the CPU itself
    nothing is copied at all)."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=device.type in ("cuda", "cpu"))


class SFT(Objective):
    name = "sft"
    unit = "sequences"
    best = Best("eval_loss", lower_is_better=True)

    def unit_lengths(self, data) -> np.ndarray:
        return data.lengths

    def unit_records(self, data) -> np.ndarray:
        return np.asarray(data.records)

    def batch(self, run, units: np.ndarray) -> Batch:
        data = run.data.sequences
        inputs, labels = pack(data, units) if run.prepared.packed else collate(data, units, run.tokenizer.pad_token_id)
        device = run.prepared.device
        return Batch(to_device(inputs, device), move(labels, device), host_trained_tokens(data, units),
                     int(data.lengths[units].sum()))

    def loss(self, run, batch: Batch):
        return run.prepared.loss_sum(batch.inputs, batch.labels), None

    def eval_result(self, loss_sum: float, sums: list[float], count: float) -> dict:
        loss = loss_sum / max(count, 1)
        return {"eval_loss": loss, "eval_ppl": perplexity(loss), "eval_tokens": int(count)}

    def describe_eval(self, result: dict) -> str:
        return f"loss {result['eval_loss']:.4f}, perplexity {result['eval_ppl']:.2f}"

    def check_data(self, config) -> None:
        """The first record, before the model loads: a preference file given without --objective dpo|kto (or
        any other fault of that record) is named now; the rest are checked as they are tokenised."""
        records = iter_raw_records(config.data_path)
        with closing(records):
            first = next(records, None)
        if first is not None:
            parse_record(*first, option_group(FormatOptions, config))

    def load_data(self, config, tokenizer, data_hash: str, progress: bool = True):
        return tokenize_file(config.data_path, tokenizer, option_group(FormatOptions, config), config.max_length,
                             default_cache_dir(config.cache_dir), progress=progress, data_hash=data_hash)

    def validation_prompts(self, config, data) -> SamplePrompts:
        return validation_prompts(config, data)
