"""What DPO and KTO share: preference data, batches of whole sequences whose boundaries the host knows, each
sequence's log-probability summed over its reply's tokens, and the reference model's.

A micro-batch is a list of sequences (a pair's chosen and rejected reply side by side, each with the
pair's prompt), laid into one packed row (the packed attention keeps them apart) or padded rows. The
trained tokens are the reply's through its end-of-turn token, masked exactly as for SFT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from core.config import FormatOptions, option_group
from core.data.batching import collate, pack
from core.data.files import iter_raw_records
from core.data.preference import SFT, count_usable, parse_judged, refuse_pairs_cut_alike, tokenize_preferences
from core.data.tokenized import split_records
from core.model.load import default_cache_dir
from core.train.objectives import Batch, Best, Objective
from core.train.objectives.reference import cached_reference, reference_model
from core.train.objectives.sft import move, to_device
from core.train.samples import SamplePrompts


@dataclass
class Sequences:
    """Sequences as one model input, and which of them each trained token belongs to."""
    inputs: dict
    labels: torch.Tensor
    segments: torch.Tensor
    count: int


def trained_counts(data, sequences: np.ndarray) -> np.ndarray:
    """Trained tokens of each sequence (its first token predicts nothing), from the host arrays."""
    return np.array([np.count_nonzero(data.trained[data.offsets[i] + 1:data.offsets[i + 1]]) for i in sequences],
                    dtype=np.int64)


def model_input(run, data, sequences: np.ndarray) -> Sequences:
    inputs, labels = pack(data, sequences) if run.prepared.packed else collate(data, sequences,
                                                                                 run.tokenizer.pad_token_id)
    device = run.prepared.device
    segments = np.repeat(np.arange(len(sequences)), trained_counts(data, sequences))
    return Sequences(to_device(inputs, device), move(labels, device), move(torch.from_numpy(segments), device),
                     len(sequences))


def summed_log_probs(run, sequences: Sequences) -> torch.Tensor:
    """Each sequence's log-probability, summed over its trained (reply) tokens."""
    tokens = run.prepared.token_log_probs(sequences.inputs, sequences.labels)
    return tokens.new_zeros(sequences.count).index_add_(0, sequences.segments, tokens)


class PreferenceObjective(Objective):
    """Data, reference and batches for objectives over judged replies; DPO and KTO add their losses."""

    best = Best("eval_loss", lower_is_better=True)  # the objective itself, as SFT: a held-out measure of fit

    def __init__(self, config):
        self.beta = config.beta
        self.reference: dict[str, np.ndarray] = {}  # a full fine-tune's cached reference log-probabilities

    # Data ----------------------------------------------------------------------------------------

    def check_data(self, config) -> None:
        count_usable(config.data_path, self.name, option_group(FormatOptions, config))

    def load_data(self, config, tokenizer, data_hash: str, progress: bool = True):
        return tokenize_preferences(config.data_path, tokenizer, option_group(FormatOptions, config), config.max_length,
                                    default_cache_dir(config.cache_dir), data_hash=data_hash)

    def check_loaded(self, config, data) -> None:
        refuse_pairs_cut_alike(data, self.name, config.max_length, config.data_path)

    def validation_prompts(self, config, data) -> SamplePrompts:
        """The first held-out judged records, each as its context and its good reply (or, labelled bad, none)."""
        if not config.sample_prompts or not config.eval_split:
            return SamplePrompts()
        held_out = split_records(len(data.hashes), config.eval_split, config.seed)
        options, prompts = option_group(FormatOptions, config), []
        for index, (where, raw) in enumerate(iter_raw_records(config.data_path)):
            judged = parse_judged(where, raw, options) if held_out[index] else None
            if judged is None or judged.kind == SFT:
                continue
            conversation, good = judged.replies[0]
            prompt, reply = conversation.before_last_reply()
            prompts.append({"messages": prompt, "reference": reply if good else ""})
            if len(prompts) == config.sample_prompts:
                break
        return SamplePrompts(prompts)

    # The reference model -------------------------------------------------------------------------

    def reference_sets(self, run) -> dict[str, object]:
        """The named sets of sequences (tokenised data) whose reference log-probabilities a full fine-tune caches."""
        return {"sequences": run.data.sequences}

    def prepare(self, run, log) -> None:
        if run.config.lora:
            return
        sets = self.reference_sets(run)
        arrays = {name: [np.asarray(d.ids), np.asarray(d.trained), np.asarray(d.offsets)] for name, d in sets.items()}
        self.reference = cached_reference(run, arrays, lambda name: self.reference_pass(run, sets[name]), log)

    def reference_pass(self, run, data) -> np.ndarray:
        """Every sequence's summed log-probability under the model as it is now (before training)."""
        model, out = run.prepared.model, np.zeros(len(data), dtype=np.float64)
        per_batch = max(2, run.config.batch_size * 2)
        model.eval()
        with torch.no_grad(), tqdm(total=len(data), desc="reference log-probabilities (the model before training)",
                                   unit=" replies", mininterval=1.0, disable=not run.dist.is_main) as bar:
            for start in range(0, len(data), per_batch):
                sequences = np.arange(start, min(start + per_batch, len(data)))
                out[sequences] = summed_log_probs(run, model_input(run, data, sequences)).double().cpu().numpy()
                bar.update(len(sequences))
        model.train()
        return out

    def reference_log_probs(self, run, sequences: Sequences, name: str, indices: np.ndarray) -> torch.Tensor:
        """The reference's log-probability of each sequence: cached (full fine-tune) or with adapters off (LoRA)."""
        if name in self.reference:
            return move(torch.from_numpy(self.reference[name][indices]), run.prepared.device)
        with torch.no_grad(), reference_model(run.prepared.model):
            return summed_log_probs(run, sequences)

    # Batches -------------------------------------------------------------------------------------

    def sequences_batch(self, run, indices: np.ndarray, count: int) -> Batch:
        data = run.data.sequences
        sequences = model_input(run, data, indices)
        return Batch(sequences.inputs, sequences.labels, count, int(data.lengths[indices].sum()),
                     {"sequences": sequences, "indices": indices})

    def log_ratios(self, run, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy log-probabilities, policy minus reference) of the batch's sequences."""
        sequences, indices = batch.extra["sequences"], batch.extra["indices"]
        reference = self.reference_log_probs(run, sequences, "sequences", indices)
        policy = summed_log_probs(run, sequences)
        return policy, policy - reference.to(policy.dtype)

    def eval_result(self, loss_sum: float, sums: list[float], count: float) -> dict:
        return {"eval_loss": loss_sum / max(count, 1),
                **{f"eval_{name}": value / max(count, 1) for name, value in zip(self.metric_names, sums)},
                f"eval_{self.unit}": int(count)}
