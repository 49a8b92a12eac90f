"""Kahneman-Tversky optimisation (Ethayarajh et al. 2024, eq. 7; TRL's `kto` loss) on replies labelled good or bad:

    good: desirable_weight   * (1 - sigmoid(beta * (log-ratio - KL)))
    bad:  undesirable_weight * (1 - sigmoid(beta * (KL - log-ratio)))

where a reply's log-ratio is log pi(reply) - log ref(reply), summed over its tokens, and KL is the
estimate of KL(pi || ref) the paper and TRL take from mismatched pairs: each prompt with another
record's reply, log pi - log ref averaged, detached and clamped at 0. The step's loss is the mean over
its replies. TRL estimates KL per micro-batch and process; here it is one estimate over the whole
optimizer step (all micro-batches, all processes), so that accumulation and several processes give
the update of one large batch. Each reply's mismatched partner is fixed (the reply half the data set
further on), so a full fine-tune caches the reference for those sequences too.
"""

from __future__ import annotations

import numpy as np
import torch

from core.data.tokenized import TokenizedData
from core.train import distributed
from core.train.objectives import Batch
from core.train.objectives.preference import PreferenceObjective, model_input, summed_log_probs

SUMS = ("reward_accuracy", "kl", "rewards_chosen", "rewards_rejected", "logps_chosen", "logps_rejected", "good",
        "bad")


def mismatched(data, max_length: int) -> TokenizedData:
    """Sequence i's prompt with the reply of sequence (i + n/2) mod n: the sequences KL is estimated on."""
    n = len(data)
    ids, trained, offsets = [], [], [0]
    for i in range(n):
        prompt_ids, prompt_mask = data.sequence(i)
        reply_ids, reply_mask = data.sequence((i + n // 2) % n)
        start, reply_start = int(np.argmax(prompt_mask)), int(np.argmax(reply_mask))
        sequence = np.concatenate([prompt_ids[:start], reply_ids[reply_start:]])[:max_length]
        mask = np.concatenate([np.zeros(start, bool), np.asarray(reply_mask[reply_start:], bool)])[:max_length]
        ids.append(sequence.astype(np.int32))
        trained.append(mask)
        offsets.append(offsets[-1] + len(sequence))
    return TokenizedData(np.concatenate(ids), np.concatenate(trained), np.asarray(offsets, dtype=np.int64),
                         np.asarray(data.records), np.asarray(data.hashes), {}, data.data_hash)


class KTO(PreferenceObjective):
    name = "kto"
    unit = "replies"
    metric_names = SUMS

    def __init__(self, config):
        super().__init__(config)
        self.weights = (config.desirable_weight, config.undesirable_weight)
        self.kl = 0.0
        self.kl_data: TokenizedData | None = None

    def unit_lengths(self, data) -> np.ndarray:
        return data.lengths

    def unit_records(self, data) -> np.ndarray:
        return np.asarray(data.records)

    def reference_sets(self, run) -> dict:
        return {"sequences": run.data.sequences, "kl": self.mismatched(run)}

    def mismatched(self, run) -> TokenizedData:
        if self.kl_data is None:
            self.kl_data = mismatched(run.data.sequences, run.config.max_length)
        return self.kl_data

    def batch(self, run, units: np.ndarray) -> Batch:
        return self.sequences_batch(run, units, len(units))

    @torch.no_grad()
    def before_step(self, run, batches: list[Batch], counted: list[bool]) -> None:
        """The step's KL estimate, over this rank's micro-batches and then over all ranks."""
        total, count = 0.0, 0
        for batch, counts in zip(batches, counted):
            indices = batch.extra["indices"]
            sequences = model_input(run, self.mismatched(run), indices)
            policy = summed_log_probs(run, sequences)
            reference = self.reference_log_probs(run, sequences, "kl", indices).to(policy.dtype)
            difference = float((policy - reference).sum())
            if counts:
                total, count = total + difference, count + len(indices)
        total, count = distributed.sum_across(run.dist, [total, count], run.prepared.device)
        self.kl = max(total / max(count, 1), 0.0)

    def loss(self, run, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        policy, ratios = self.log_ratios(run, batch)
        good = torch.from_numpy(np.asarray(run.data.sequences.desirable)[batch.extra["indices"]]).to(ratios.device)
        desirable, undesirable = self.weights
        losses = torch.where(good, desirable * (1 - torch.sigmoid(self.beta * (ratios - self.kl))),
                             undesirable * (1 - torch.sigmoid(self.beta * (self.kl - ratios))))
        with torch.no_grad():
            rewards, bad = self.beta * ratios, ~good
            right = torch.where(good, rewards > 0, rewards < 0)  # the reward's sign agrees with the label
            sums = torch.stack([t.double() for t in (
                right.sum(), ratios.new_tensor(self.kl * len(ratios)), rewards[good].sum(), rewards[bad].sum(),
                policy[good].sum(), policy[bad].sum(), good.sum(), bad.sum())])
        return losses.sum(), sums

    def metrics(self, sums: list[float], count: float, prefix: str = "") -> dict:
        s = dict(zip(SUMS, sums))
        good, bad = max(s["good"], 1), max(s["bad"], 1)
        chosen, rejected = s["rewards_chosen"] / good, s["rewards_rejected"] / bad
        return {f"{prefix}reward_accuracy": s["reward_accuracy"] / max(count, 1),
                f"{prefix}reward_margin": chosen - rejected, f"{prefix}logps_chosen": s["logps_chosen"] / good,
                f"{prefix}logps_rejected": s["logps_rejected"] / bad, f"{prefix}rewards_chosen": chosen,
                f"{prefix}rewards_rejected": rejected, f"{prefix}kl": s["kl"] / max(count, 1)}

    def train_metrics(self, sums: list[float], count: float) -> dict:
        return self.metrics(sums, count) if sums else {}

    def eval_result(self, loss_sum: float, sums: list[float], count: float) -> dict:
        return {"eval_loss": loss_sum / max(count, 1), **self.metrics(sums, count, "eval_"),
                "eval_replies": int(count)}

    def describe_eval(self, result: dict) -> str:
        return (f"loss {result['eval_loss']:.4f}, reward accuracy {result['eval_reward_accuracy']:.3f}, "
                f"KL {result['eval_kl']:.4f}")
