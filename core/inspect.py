"""`train.py inspect`: validate a data file, print its statistics and show which tokens are trained.

It reads the same options as training (so `--config run.yaml` inspects exactly what that run would
train), tokenises through the same cache, and needs only the tokenizer, not the model weights.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from core.config import TrainConfig, option
from core.dataset import DataOptions
from core.models import default_cache_dir, load_tokenizer
from core.tokenized import TokenizedData, split_records, tokenize_file

TRAINED_ON, TRAINED_OFF = "\033[30;42m", "\033[0m"  # black on green on a terminal
PLAIN_ON, PLAIN_OFF = "[[", "]]"                   # markers when piped


@dataclass
class InspectConfig(TrainConfig):
    examples: int = option(3, "how many records to render token by token")
    color: str = option("auto", "mark trained tokens with colour (auto: only on a terminal)", ("auto", "always", "never"))


def data_statistics(data: TokenizedData, eval_split: float, seed: int) -> dict:
    """Every number `inspect` prints, as a dict (tests check them against a hand-counted file)."""
    summary, lengths = data.summary, data.lengths
    trained_per_seq = np.add.reduceat(np.asarray(data.trained, dtype=np.int64), data.offsets[:-1]) \
        if len(data) else np.zeros(0, dtype=np.int64)
    hashes = np.asarray(data.hashes)
    is_eval = split_records(len(hashes), eval_split, seed)
    _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    repeated = hashes[first[counts > 1]]
    in_both = [h for h in repeated if len(set(is_eval[hashes == h].tolist())) == 2]
    fmt = summary["format"]
    return {
        "records": summary["load"]["records"],
        "formats": summary["load"]["formats"],
        "multi_turn_records": summary["multi_turn_records"],
        "messages_by_role": summary["messages_by_role"],
        "sequences": len(data),
        "split_by_template": fmt["split_by_template"],
        "tokens": int(lengths.sum()),
        "trained_tokens": int(trained_per_seq.sum()),
        "untrained_tokens": int(lengths.sum() - trained_per_seq.sum()),
        "length_percentiles": {f"p{p}": int(np.percentile(lengths, p, method="lower")) if len(lengths) else 0
                               for p in (0, 50, 90, 99, 100)},
        "over_max_length": fmt["shortened"],
        "dropped_tokens": fmt["dropped_tokens"],
        "replies_cut": fmt["replies_cut"],
        "duplicate_records": int(len(hashes) - len(first)),
        "records_in_both_splits": int(np.isin(hashes, in_both).sum()),
        "train_records": int((~is_eval).sum()),
        "eval_records": int(is_eval.sum()),
        "merged_records": summary["load"]["merged_records"],
        "system_added": summary["load"]["system_added"],
    }


def format_statistics(stats: dict, config: TrainConfig) -> str:
    p = stats["length_percentiles"]
    formats = ", ".join(f"{k} {n}" for k, n in sorted(stats["formats"].items()))
    roles = ", ".join(f"{k} {n}" for k, n in sorted(stats["messages_by_role"].items()))
    share = 100.0 * stats["trained_tokens"] / max(stats["tokens"], 1)
    return "\n".join([
        f"File: {config.data_path}",
        f"Records: {stats['records']} ({formats}); multi-turn conversations: {stats['multi_turn_records']}",
        f"Messages: {roles}",
        f"Sequences: {stats['sequences']} (records split into one sequence per turn by the template: "
        f"{stats['split_by_template']})",
        f"Tokens: {stats['tokens']} total, {stats['trained_tokens']} trained ({share:.1f}%), "
        f"{stats['untrained_tokens']} untrained",
        f"Sequence length: min {p['p0']}, median {p['p50']}, p90 {p['p90']}, p99 {p['p99']}, max {p['p100']}",
        f"Over --max_length {config.max_length}: {stats['over_max_length']} shortened "
        f"({stats['dropped_tokens']} tokens dropped), {stats['replies_cut']} replies cut",
        f"Duplicates: {stats['duplicate_records']} records repeat an earlier one; "
        f"{stats['records_in_both_splits']} records appear in both the train and validation splits",
        f"Split (--eval_split {config.eval_split}, --seed {config.seed}): {stats['train_records']} train records, "
        f"{stats['eval_records']} validation",
        f"Options applied: merged consecutive roles in {stats['merged_records']} records, "
        f"default system prompt added to {stats['system_added']}",
    ])


def render_sequence(tokenizer, ids, trained, color: bool) -> str:
    """The sequence as text, with each run of trained tokens marked."""
    on, off = (TRAINED_ON, TRAINED_OFF) if color else (PLAIN_ON, PLAIN_OFF)
    out, start = [], 0
    ids, trained = list(map(int, ids)), list(map(bool, trained))
    for i in range(1, len(ids) + 1):
        if i == len(ids) or trained[i] != trained[start]:
            text = tokenizer.decode(ids[start:i])
            out.append(f"{on}{text}{off}" if trained[start] else text)
            start = i
    return "".join(out)


def inspect(config: InspectConfig) -> int:
    tokenizer = load_tokenizer(config.model_name, config.cache_dir, config.trust_remote_code)
    options = DataOptions(config.system_prompt, config.merge_consecutive, config.train_on)
    data = tokenize_file(config.data_path, tokenizer, options, config.max_length, default_cache_dir(config.cache_dir),
                         progress=sys.stderr.isatty())
    print(format_statistics(data_statistics(data, config.eval_split, config.seed), config))
    color = config.color == "always" or (config.color == "auto" and sys.stdout.isatty())
    legend = "highlighted" if color else f"between {PLAIN_ON} and {PLAIN_OFF}"
    for i in range(min(config.examples, len(data))):
        ids, trained = data.sequence(i)
        print(f"\n--- sequence {i} ({len(ids)} tokens, {int(np.sum(trained))} trained, {legend}) ---")
        print(render_sequence(tokenizer, ids, trained, color))
    return 0
