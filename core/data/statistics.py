"""What tokenised data holds: the statistics a run logs and `inspect` prints, and sequences rendered with
their trained tokens marked.
"""

from __future__ import annotations

import numpy as np

from core.config import TrainConfig
from core.data.tokenized import TokenizedData, split_records

TRAINED_ON, TRAINED_OFF = "\033[30;42m", "\033[0m"  # black on green on a terminal
PLAIN_ON, PLAIN_OFF = "[[", "]]"                   # markers when piped


def template_system_prompt(tokenizer) -> str:
    """The system prompt the chat template writes into a conversation that has none ("" if it adds none).

    Found by rendering one user message with and without a sentinel system message: whatever the
    template writes where the sentinel would be is its default (SmolLM2: "You are a helpful AI
    assistant named SmolLM, trained by Hugging Face"; Qwen2.5: "You are Qwen, created by Alibaba Cloud...").
    """
    system, user = "SYSTEM-SENTINEL-7f3a", "USER-SENTINEL-7f3a"
    try:
        with_system = tokenizer.apply_chat_template([{"role": "system", "content": system},
                                                     {"role": "user", "content": user}], tokenize=False)
        without = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False)
    except Exception:  # a template without system messages (or a broken one) adds none; formatting reports errors
        return ""
    if system not in with_system or user not in with_system:
        return ""
    before = with_system[:with_system.index(system)]
    between = with_system[with_system.index(system) + len(system):with_system.index(user)]
    if not without.startswith(before) or between not in without[len(before):]:
        return ""
    return without[len(before):without.index(between, len(before))].strip()


def data_statistics(data: TokenizedData, eval_split: float, seed: int, tokenizer=None) -> dict:
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
        "special_text_messages": fmt["special_text"],
        "duplicate_records": int(len(hashes) - len(first)),
        "records_in_both_splits": int(np.isin(hashes, in_both).sum()),
        "train_records": int((~is_eval).sum()),
        "eval_records": int(is_eval.sum()),
        "merged_records": summary["load"]["merged_records"],
        "system_added": summary["load"]["system_added"],
        **template_default(summary, tokenizer),
        **({"preferences": summary["preferences"]} if "preferences" in summary else {}),
    }


def template_default(summary: dict, tokenizer) -> dict:
    """How many records get the template's own system prompt (those without one), and its text."""
    text = template_system_prompt(tokenizer) if tokenizer is not None else ""
    without = summary["load"]["records"] - summary["messages_by_role"].get("system", 0)
    return {"template_system_prompt": text, "template_system_added": without if text else 0}


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
        f"default system prompt added to {stats['system_added']}; special-token text in messages: "
        + (f"trained as plain text in {stats['special_text_messages']} messages (--special_tokens text)"
           if config.special_tokens == "text" else "refused (--special_tokens refuse)"),
    ] + preference_lines(stats, config) + template_lines(stats) + (
        [f"WARNING: {stats['replies_cut']} replies alone exceed --max_length and were cut; their end-of-turn "
         "token is not trained. Raise --max_length to keep them whole"] if stats["replies_cut"] else []))


def template_lines(stats: dict) -> list[str]:
    """A system prompt the chat template inserts by itself into records without one: said, since it is trained."""
    if not stats.get("template_system_added"):
        return []
    return [f"The chat template adds its own system prompt to the {stats['template_system_added']} records without "
            f"one: {stats['template_system_prompt']!r}; the model learns to answer under it. Give the records a "
            "persona (a 'system' message or --system_prompt) to train the bot you will practise with"]


def preference_lines(stats: dict, config: TrainConfig) -> list[str]:
    """Preference data: what each objective can use of it."""
    p = stats.get("preferences")
    if p is None:
        return []
    unused = (f"; {p['sft_records']} SFT records are not used by --objective {config.objective}"
              if p["sft_records"] else "")
    identical = p.get("identical_pairs", 0)
    return [f"Judgements: {p['pairs']} pairs (dpo, kto), {p['labelled']} labelled replies (kto); "
            f"{p['good_replies']} good and {p['bad_replies']} bad replies in all{unused}"] + (
        [f"WARNING: {identical} of {p['pairs']} pairs have the same chosen and rejected sequence once cut to "
         f"--max_length {config.max_length} (the replies differ only beyond it): they carry no preference. Raise "
         "--max_length to keep them apart"] if identical else [])


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
