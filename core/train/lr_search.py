"""--lr auto: choose the peak learning rate before training, by short seeded runs judged on the validation split.

Each candidate rate, log-spaced around the rate --lr would default to (LORA_LR with --lora), trains from the
run's initial weights on the first batches of the first epoch (the same batches for every rate), with the
run's decay compressed into those steps but no warmup (a trial of a few steps would spend its first at rate 0),
and is then judged by the validation loss. The rate with
the lowest loss wins (ties: the lower rate). The trials' optimizer steps together stay within SEARCH_SHARE of
the run's, plus one validation pass per rate. After each trial the trainable weights and every RNG are put
back exactly, and the run's optimizer is built afterwards at the chosen rate, so the run then trains as it
would with --lr set to that rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from core.config import LORA_LR, TrainConfig
from core.errors import ConfigError
from core.train.step import step_groups, train_batches, train_step, validate
from core.utils import get_rng_state, set_rng_state

SEARCH_SHARE = 0.15                             # the most of the run's optimizer steps the search may take
FACTORS = (10 ** -0.5, 1.0, 10 ** 0.5, 10.0)    # candidates: the default rate times these (half-decades)


@dataclass
class SearchPlan:
    rates: list[float]
    steps: int          # optimizer steps per rate
    run_steps: int      # the run's optimizer steps

    @property
    def search_steps(self) -> int:
        return self.steps * len(self.rates)

    def describe(self) -> str:
        bound, rates = math.floor(SEARCH_SHARE * self.run_steps), ", ".join(f"{r:.3g}" for r in self.rates)
        return (f"Learning rate: --lr auto will try {len(self.rates)} rates ({rates}) "
                f"for {self.steps} optimizer steps each from the same initial weights and judge them by the "
                f"validation loss: {self.search_steps} steps, {self.search_steps / self.run_steps:.1%} of the run's "
                f"{self.run_steps} (bound: {SEARCH_SHARE:.0%}, {bound} steps), plus {len(self.rates)} validation "
                "passes")


def plan_search(config: TrainConfig, run_steps: int, first_epoch_steps: int) -> SearchPlan:
    """The candidate rates and the steps each gets within the bound; refused when the run is too short for one each."""
    center = LORA_LR if config.lora else TrainConfig.lr
    rates = [center * factor for factor in FACTORS]
    steps = min(math.floor(SEARCH_SHARE * run_steps / len(rates)), first_epoch_steps)
    if steps < 1:
        raise ConfigError(f"--lr auto: this run has {run_steps} optimizer steps, too few for {len(rates)} trial rates "
                          f"of at least one step each within {SEARCH_SHARE:.0%} of them (it needs "
                          f"{math.ceil(len(rates) / SEARCH_SHARE)}); give --lr a number or train longer")
    return SearchPlan(rates, steps, run_steps)


def search_lr(plan: SearchPlan, trial_run: Callable[[float, int], object], log) -> dict:
    """Train each rate for `plan.steps` on a run from `trial_run(rate, steps)` and validate it; restore the weights
    and RNGs after each. Returns the metrics.jsonl entry: the curve, the chosen rate and the cost."""
    started = time.perf_counter()
    rng, losses, initial = get_rng_state(), [], None
    for rate in plan.rates:
        run = trial_run(rate, plan.steps)
        trainable = [p for p in run.prepared.model.parameters() if p.requires_grad]
        if initial is None:
            initial = [p.detach().to("cpu", copy=True) for p in trainable]
        for group in step_groups(run, train_batches(run, 0)):  # the trial's optimizer steps: plan.steps
            train_step(run, group)
        loss = validate(run)[run.objective.best.metric]
        losses.append(loss if math.isfinite(loss) else math.inf)
        log(f"  --lr auto: rate {rate:.3g} -> validation loss {loss:.4f} after {plan.steps} steps")
        with torch.no_grad():
            for param, saved in zip(trainable, initial):
                param.copy_(saved)
        set_rng_state(rng)
    best = min(range(len(losses)), key=lambda i: (losses[i], plan.rates[i]))
    if not math.isfinite(losses[best]):
        raise ConfigError(f"--lr auto: every trial rate ({', '.join(f'{r:.3g}' for r in plan.rates)}) gave a "
                          "non-finite validation loss; give --lr a number")
    seconds = time.perf_counter() - started
    log(f"Learning rate: {plan.rates[best]:.3g}, chosen by --lr auto (validation loss {losses[best]:.4f}) in "
        f"{seconds:.1f} s")
    return {"type": "lr_search", "step": 0, "chosen_lr": plan.rates[best], "rates": plan.rates,
            "eval_losses": [loss if math.isfinite(loss) else None for loss in losses], "steps_per_rate": plan.steps,
            "search_steps": plan.search_steps, "run_steps": plan.run_steps, "bound": SEARCH_SHARE,
            "seconds": round(seconds, 2)}
