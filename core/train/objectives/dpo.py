"""Direct preference optimisation (Rafailov et al. 2023), TRL's sigmoid loss:

    loss = -log sigmoid(beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))))

per pair, each log-probability summed over the reply's tokens; the step's loss is the mean over its
pairs (on all ranks). A reply's implicit reward is beta times its log-ratio; the reward accuracy is the
share of pairs whose chosen reply earns the higher reward (TRL's `rewards/accuracies`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.train.objectives import Batch
from core.train.objectives.preference import PreferenceObjective

METRICS = ("reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected", "rewards_chosen",
           "rewards_rejected")


class DPO(PreferenceObjective):
    name = "dpo"
    unit = "pairs"
    metric_names = METRICS

    def unit_lengths(self, data) -> np.ndarray:
        return data.lengths[data.pairs] + data.lengths[data.pairs + 1]

    def unit_records(self, data) -> np.ndarray:
        return np.asarray(data.records)[data.pairs]

    def batch(self, run, units: np.ndarray) -> Batch:
        """Each pair's chosen then rejected sequence, side by side."""
        first = run.data.sequences.pairs[units]
        return self.sequences_batch(run, np.column_stack([first, first + 1]).ravel(), len(units))

    def loss(self, run, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        policy, ratios = self.log_ratios(run, batch)
        chosen, rejected = ratios[0::2], ratios[1::2]
        losses = -F.logsigmoid(self.beta * (chosen - rejected))
        with torch.no_grad():
            rewards_chosen, rewards_rejected = self.beta * chosen, self.beta * rejected
            sums = torch.stack([(rewards_chosen > rewards_rejected).float().sum(),
                                (rewards_chosen - rewards_rejected).sum(), policy[0::2].sum(), policy[1::2].sum(),
                                rewards_chosen.sum(), rewards_rejected.sum()]).double()
        return losses.sum(), sums

    def describe_eval(self, result: dict) -> str:
        return (f"loss {result['eval_loss']:.4f}, reward accuracy {result['eval_reward_accuracy']:.3f}, "
                f"margin {result['eval_reward_margin']:.3f}")
