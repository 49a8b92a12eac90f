"""`train.py inspect`: a data file as a run would train it, before any training: its statistics and a few
sequences with their trained tokens marked."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from core.config import TrainConfig, option
from core.data.files import data_inputs, source_sha256
from core.data.statistics import PLAIN_OFF, PLAIN_ON, data_statistics, format_statistics, render_sequence
from core.data.store_reader import describe_store, is_store_path, pin
from core.model.load import default_cache_dir, load_tokenizer
from core.outputs import check_cache_dir, local_inputs


@dataclass
class InspectConfig(TrainConfig):
    examples: int = option(3, "how many records to render token by token")
    color: str = option("auto", "mark trained tokens with colour (auto: only on a terminal)",
                        ("auto", "always", "never"))


def inspect(config: InspectConfig, objective) -> int:
    """Validate the data file, print its statistics and render a few sequences with trained tokens marked.

    It reads the same options as training (so `--config run.yaml` inspects exactly what that run
    would train), tokenises through the same cache, and needs only the tokenizer, not the weights. `objective`
    (core/train/objectives/, picked by the command line from --objective) decides how records are read: SFT
    conversations or judged replies.
    """
    if is_store_path(config.data_path):  # a store: what it holds, and the snapshot a run would read now
        config = config.restated(data_path=pin(config.data_path, config.objective))
        print(describe_store(config.data_path))
    objective.check_data(config)
    check_cache_dir(default_cache_dir(config.cache_dir),
                    data_inputs(config.data_path) + local_inputs("--model_name", config.model_name))
    tokenizer = load_tokenizer(config.model_name, config.cache_dir, config.trust_remote_code)
    data = objective.load_data(config, tokenizer, source_sha256(config.data_path), sys.stderr.isatty())
    print(format_statistics(data_statistics(data, config.eval_split, config.seed, tokenizer), config))
    color = config.color == "always" or (config.color == "auto" and sys.stdout.isatty())
    legend = "highlighted" if color else f"between {PLAIN_ON} and {PLAIN_OFF}"
    for i in range(min(config.examples, len(data))):
        ids, trained = data.sequence(i)
        judged = {True: " good", False: " bad"}.get(bool(data.desirable[i])) if hasattr(data, "desirable") else ""
        print(f"\n--- sequence {i}{judged} ({len(ids)} tokens, {int(np.sum(trained))} trained, {legend}) ---")
        print(render_sequence(tokenizer, ids, trained, color))
    return 0
