"""GRPO's reward: a named table of components, each logged on its own, summed with weights given by option.

The built-in components are core/data/call_rewards.py's (role kept, persona facts named and kept, no
repetition, length within the data's range). A user adds one as a Python function in TRL's `reward_funcs`
convention, named `module:function` (or `path/to/file.py:function`) in --reward_funcs:

    def my_reward(prompts, completions, **kwargs) -> list[float | None]

`prompts[i]` is call i's messages before the bot's first turn (persona, rep's opening), `completions[i]` the
rest of the call (bot and rep turns, as messages), `kwargs["persona"]` the personas. It is weighed by its
function's name in --reward_weights. A function that raises or returns a number that is not finite (None
included) fails the step: its update is skipped and counted as a non-finite one (`RewardFailure`).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.call_rewards import COMPONENTS, LengthRange, call_components
from core.data.roleplay_metrics import RoleJudge
from core.errors import ConfigError
from core.train.rollouts import Call


class RewardFailure(Exception):
    """A custom reward function raised or returned a number that is not finite."""


def load_reward_funcs(text: str) -> list:
    """The functions --reward_funcs names, imported now (before any rollout), or a ConfigError saying which."""
    funcs = []
    for spec in filter(None, (s.strip() for s in text.split(","))):
        module_name, _, name = spec.rpartition(":")
        if not module_name or not name:
            raise ConfigError(f"--reward_funcs: {spec!r} is not module:function (or path/to/file.py:function)")
        try:
            if module_name.endswith(".py"):
                where = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
                module = importlib.util.module_from_spec(where)
                where.loader.exec_module(module)
            else:
                module = importlib.import_module(module_name)
        except Exception as err:  # the user's code: any import failure is theirs to fix
            raise ConfigError(f"--reward_funcs: cannot import {module_name} ({type(err).__name__}: {err})") from None
        func = getattr(module, name, None)
        if not callable(func):
            raise ConfigError(f"--reward_funcs: {module_name} has no function {name!r}")
        if func.__name__ in COMPONENTS:
            raise ConfigError(f"--reward_funcs: {name!r} is the name of a built-in component; rename the function")
        funcs.append(func)
    return funcs


def parse_weights(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """{component: weight} from 'name=number,...'; every component not named weighs 1."""
    weights = dict.fromkeys(names, 1.0)
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals or name not in weights:
            raise ConfigError(f"--reward_weights: {item!r} is not name=number with a component's name "
                              f"({', '.join(names)})")
        try:
            weight = float(value)
        except ValueError:
            raise ConfigError(f"--reward_weights: the weight of {name} ({value.strip()!r}) is not a number") from None
        if not math.isfinite(weight):
            raise ConfigError(f"--reward_weights: the weight of {name} must be a finite number, got {value.strip()}")
        weights[name] = weight
    return weights


@dataclass
class RewardTable:
    judge: RoleJudge           # fitted on the training split's turns
    length: LengthRange
    weights: dict[str, float]  # component name -> weight, in the logged order
    funcs: list

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.weights)

    def score(self, calls: list[Call]) -> tuple[np.ndarray, np.ndarray]:
        """(rewards [calls], components [calls, names]); RewardFailure when a custom function fails."""
        table = np.array([[c[name] for name in COMPONENTS] for c in (
            call_components(call.bot_replies, call.scenario.system, self.judge, self.length) for call in calls)],
            dtype=np.float64).reshape(len(calls), len(COMPONENTS))
        columns = [table] + [self.custom(func, calls)[:, None] for func in self.funcs]
        components = np.concatenate(columns, axis=1)
        weights = np.array([self.weights[name] for name in self.names])
        return components @ weights, components

    @staticmethod
    def custom(func, calls: list[Call]) -> np.ndarray:
        prompts = [call.messages[:2] for call in calls]
        completions = [call.messages[2:] for call in calls]
        try:
            values = func(prompts=prompts, completions=completions, persona=[c.scenario.system for c in calls])
            values = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
        except Exception as err:  # the user's code
            raise RewardFailure(f"reward function {func.__name__} raised {type(err).__name__}: {err}") from None
        if values.shape != (len(calls),) or not np.isfinite(values).all():
            raise RewardFailure(f"reward function {func.__name__} returned {values.tolist()[:4]}... for "
                                f"{len(calls)} calls: one finite number per call is needed")
        return values
