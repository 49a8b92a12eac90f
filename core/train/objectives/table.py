"""The objectives by `--objective` value. The objectives import the interface (`core.train.objectives`); this
table imports them, so the interface never imports an objective back."""

from __future__ import annotations

from collections.abc import Callable

from core.train.objectives import Objective


def _sft(config) -> Objective:
    from core.train.objectives.sft import SFT
    return SFT()


def _dpo(config) -> Objective:
    from core.train.objectives.dpo import DPO
    return DPO(config)


def _kto(config) -> Objective:
    from core.train.objectives.kto import KTO
    return KTO(config)


def _grpo(config) -> Objective:
    from core.train.objectives.grpo import GRPO
    return GRPO(config)


OBJECTIVES: dict[str, Callable[[object], Objective]] = {"sft": _sft, "dpo": _dpo, "kto": _kto, "grpo": _grpo}


def objective_for(config) -> Objective:
    return OBJECTIVES[config.objective](config)
