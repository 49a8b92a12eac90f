"""`train.py evaluate`: a model's loss, replies and roleplay metrics on every record of a data file, or its
self-play over held-out multi-turn conversations (`--conversations`).

The loss pass is validation's: the model prepared as for training (`prepare_model`: packed attention,
lean layers, selective head), the records' sequences in `eval_batches` order, packed into rows by
`core.data.batching.pack`, losses taken at the trained tokens only (`selective_head.token_losses`,
the terms whose sum `summed_loss` returns), so the mean equals the validation loss a training run
reports on the same records. Replies are generated in batches with the KV cache, for the conversation
up to the record's last trained reply (the reference), read from the tokenised cache. Both passes show
a progress line (records per second, time left). Output files are written under a temporary name and
renamed when complete, so an interrupted evaluate leaves no half-written file.

`--conversations FILE` replays each conversation's user turns: the bot answers each in its own running
context (its earlier replies, not the reference ones), and the metrics are reported per turn number,
so drift over a long call shows; and per conversation (scenario): role inversion, persona facts named and
contradicted, repetition, mean reply length, beside the reward --objective grpo gives the call.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.config import AdapterOptions, FormatOptions, HardwareOptions, LoadOptions, check_options, option, option_group
from core.data.batching import BatchSize, collate, eval_batches, pack
from core.data.call_rewards import LengthRange, call_components, per_turn_rates
from core.data.conversations import load_conversations
from core.data.files import data_files, data_inputs
from core.data.roleplay_metrics import METRIC_NOTES, ROLE_JUDGE_METHOD, reply_metrics, role_judge, summarise
from core.data.tokenized import tokenize_file
from core.errors import ConfigError, DataError
from core.labels import perplexity
from core.model.generation import Sampling, generate_replies
from core.model.load import default_cache_dir
from core.model.patches.selective_head import token_losses
from core.model.prepare import prepare_model
from core.outputs import check_cache_dir, check_output, local_inputs
from core.use import backend
from core.use.backend import load_for_chat
from core.utils import atomic_file, autocast, pick_precision, stage


@dataclass
class EvaluateConfig(LoadOptions, FormatOptions):
    """`evaluate` reads records as training does (FormatOptions) and loads the model as every command does."""

    model: str = option("", "the model to evaluate: a checkpoint directory, hub id, .gguf file or 'smollm2'; required")
    data_path: str = option("", "the records to evaluate on: a .jsonl or .json file (optionally .gz), a directory of them or a glob; required unless --conversations")
    conversations: str = option("", "self-play instead: a file of multi-turn conversations whose user turns the bot answers in its own running context; metrics per turn number")
    backend_url: str = option("", "with --conversations: the bot's replies from this OpenAI-compatible server (serve, vLLM, llama-server, Ollama; its base URL, such as http://127.0.0.1:8000/v1) instead of loading --model")
    output: str = option("evaluation.jsonl", "where each record's reply, loss, perplexity and metrics go (JSONL); the means go to the same name with .summary.json")
    replies: bool = option(True, "generate each record's reply (greedy) and its roleplay metrics; off: losses only, much faster")
    max_new_tokens: int = option(64, "longest generated reply in tokens", at_least=1)
    batch_size: int = option(8, "sequences per loss batch (packed into one row) and replies generated at once", at_least=1)

    def validate(self) -> None:
        if self.backend_url and not self.conversations:
            raise ConfigError("--backend_url works with --conversations (self-play); the losses of --data_path need "
                              "the model loaded here: pass --model instead")
        if self.backend_url and not self.model:
            self.model = self.backend_url  # what the summary names
        if not self.model or not (self.data_path or self.conversations):
            raise ConfigError("--model and --data_path (or --conversations) are required")
        if self.data_path and self.conversations:
            raise ConfigError("--data_path (loss and a reply per record) and --conversations (self-play) are two "
                              "evaluations: pass one of them, and run evaluate once for each")
        check_options(self)
        output = Path(self.output)
        if output.is_dir():
            raise ConfigError(f"--output {output} is a directory; pass a file name")


def progress(total: int, what: str, unit: str = " records") -> tqdm:
    """A progress line from the first record: done/total, records per second, time left."""
    return tqdm(total=total, desc=what, unit=unit, mininterval=0.5, smoothing=0.1, dynamic_ncols=True)


@contextmanager
def written_whole(path: Path):
    """A text file written under a hidden temporary name beside `path`, renamed only when the block completes."""
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        yield handle


def write_whole(path: Path, text: str) -> None:
    with written_whole(path) as handle:
        handle.write(text)


@torch.no_grad()
def record_losses(model, data, batch_size: int, max_length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(summed loss, trained tokens) per record, by validation's batches on the model prepared as for training."""
    device = model.device
    prepared = prepare_model(model, HardwareOptions(), AdapterOptions(), max_length, device,
                             pick_precision(device), log=lambda *_: None)
    model.eval()
    n_records = int(np.max(data.records)) + 1 if len(data) else 0
    losses, tokens = np.zeros(n_records), np.zeros(n_records, dtype=np.int64)
    records = np.asarray(data.records)
    with progress(len(data), "loss", " sequences") as bar:
        for batch in eval_batches(np.arange(len(data)), data.lengths, BatchSize(batch_size)):
            inputs, labels = pack(data, batch) if prepared.packed else collate(data, batch, pad_id)
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            with autocast(device, prepared.amp_dtype):
                index, token_loss = token_losses(model, inputs, labels.to(device), HardwareOptions.head_chunk_rows)
            index = index.cpu().numpy()
            row = (np.searchsorted(inputs["cu_seq_lens_q"].cpu().numpy(), index, side="right") - 1
                   if prepared.packed else index // labels.shape[1])
            owner = records[batch[row]]
            np.add.at(losses, owner, token_loss.double().cpu().numpy())
            np.add.at(tokens, owner, 1)
            bar.update(len(batch))
    return losses, tokens


def generate_all(model, tokenizer, conversations: list[list[dict]], sampling: Sampling, batch_size: int,
                 what: str) -> list[str]:
    replies = []
    with progress(len(conversations), what) as bar:
        for start in range(0, len(conversations), batch_size):
            replies += generate_replies(model, tokenizer, conversations[start:start + batch_size], sampling,
                                        batch_size=batch_size)
            bar.update(len(conversations[start:start + batch_size]))
    return replies


def metrics_lines(metrics: dict) -> list[str]:
    return [f"  {name.replace('_', ' '):<30} {metrics[name]:.3f}   {note}" for name, note in METRIC_NOTES.items()
            if name in metrics]


def is_evaluation(path: Path) -> bool:
    """An earlier evaluation's output: its first line is a record's result (or its summary's keys)."""
    try:
        with path.open(encoding="utf-8") as handle:
            first = json.loads(handle.readline() if path.suffix != ".json" else handle.read())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(first, dict) and ({"where", "loss"} <= first.keys() or {"mean_loss", "records"} <= first.keys())


def check_paths(config: EvaluateConfig) -> None:
    """Before the model loads: the data files can be read, and the outputs harm nothing evaluate did not write."""
    inputs = local_inputs("--model", config.model)
    if config.data_path:
        data_files(config.data_path)
        inputs += data_inputs(config.data_path)
    if config.conversations:
        data_files(config.conversations)
        inputs += data_inputs(config.conversations, "--conversations")
    output = Path(config.output)
    for path in (output, output.with_suffix(".summary.json")):
        check_output("--output", path, inputs, is_evaluation, "an earlier evaluation's output")
    check_cache_dir(default_cache_dir(config.cache_dir), inputs)


def evaluate(config: EvaluateConfig) -> int:
    check_paths(config)
    output = Path(config.output)
    with stage(f"evaluating {config.model}", f"{output} was not written (an earlier one is intact)"):
        return write_evaluation(config)


def write_evaluation(config: EvaluateConfig) -> int:
    if config.conversations:
        return self_play(config, playable(config), backend.open_backend(config.model, config.backend_url, config))
    model, tokenizer = load_for_chat(config.model, config)
    options = option_group(FormatOptions, config)
    data = tokenize_file(config.data_path, tokenizer, options, config.max_length, default_cache_dir(config.cache_dir))
    records = data.prompts(range(len(data.hashes)))
    greedy = Sampling(max_new_tokens=config.max_new_tokens, greedy=True)
    replies = generate_all(model, tokenizer, [r["messages"] for r in records], greedy, config.batch_size,
                           "replies") if config.replies else []
    losses, tokens = record_losses(model, data, config.batch_size, config.max_length,
                                   tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    judge = role_judge(records) if config.replies else None
    rows = [reply_metrics(reply, r["reference"], r["messages"], judge) for reply, r in zip(replies, records)]
    output = Path(config.output)
    with written_whole(output) as handle:
        for index, record in enumerate(records):
            loss = losses[index] / max(tokens[index], 1)
            entry = {"where": record["where"], "prompt": record["messages"][-1]["content"] if record["messages"] else "",
                     "reference": record["reference"], "loss": loss, "perplexity": perplexity(loss),
                     "trained_tokens": int(tokens[index])}
            if config.replies:
                entry.update(reply=replies[index], metrics=rows[index])
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
    mean = float(losses.sum() / max(tokens.sum(), 1))
    summary = {"model": config.model, "data_path": config.data_path, "records": len(losses),
               "trained_tokens": int(tokens.sum()), "mean_loss": mean, "perplexity": perplexity(mean)}
    if config.replies:
        summary.update(roleplay=summarise(rows, replies), role_judge=judge.to_dict(), metric_notes=METRIC_NOTES)
    write_whole(output.with_suffix(".summary.json"), json.dumps(summary, indent=2) + "\n")
    print(f"{config.model} on {config.data_path}: {len(losses)} records, mean loss {mean:.4f} per trained token "
          f"(perplexity {summary['perplexity']:.2f}); each record in {output}")
    if config.replies:
        print(judge_line(judge))
        print("\n".join(metrics_lines(summary["roleplay"])))
    return 0


def judge_line(judge) -> str:
    accuracy = f"{judge.accuracy:.1%} on {judge.held_out_turns} held-out turns" if judge.accuracy is not None \
        else "not measured (the data lacks one side's turns)"
    return f"Role judge ({ROLE_JUDGE_METHOD}): accuracy {accuracy}"


def playable(config: EvaluateConfig) -> list[list[dict]]:
    """The conversations of --conversations, read before the model loads; refused when no user turn is there for
    the bot to answer (a file of the bot's turns alone would play nothing)."""
    conversations = [c.as_chat() for c in load_conversations(config.conversations, option_group(FormatOptions, config))]
    if not any(m["role"] == "user" for chat in conversations for m in chat):
        raise DataError(f"--conversations {config.conversations}: none of its {len(conversations)} conversations has "
                        "a user turn for the bot to answer, so there is nothing to play; give conversations with "
                        "the rep's (user) turns")
    return conversations


def self_play(config: EvaluateConfig, conversations: list[list[dict]], replier: backend.Backend) -> int:
    """Answer every user turn of each conversation in the bot's own running context; metrics per turn number."""
    records = []
    for chat in conversations:
        last = max(i for i, m in enumerate(chat) if m["role"] == "assistant")
        records.append({"messages": chat[:last], "reference": chat[last]["content"]})
    judge = role_judge(records)
    sampling = Sampling(max_new_tokens=config.max_new_tokens, greedy=True)
    running = [[m for m in chat[:1] if m["role"] == "system"] for chat in conversations]
    turns = [[] for _ in conversations]
    user_turns = [[(i, m) for i, m in enumerate(chat) if m["role"] == "user"] for chat in conversations]
    with progress(sum(map(len, user_turns)), "self-play", " turns") as bar:
        for number in range(max(map(len, user_turns), default=0)):
            active = [c for c in range(len(conversations)) if number < len(user_turns[c])]
            for c in active:
                running[c].append(user_turns[c][number][1])
            for start in range(0, len(active), config.batch_size):
                chunk = active[start:start + config.batch_size]
                for c, reply in zip(chunk, backend.replies(replier, [running[c] for c in chunk], sampling,
                                                           config.batch_size)):
                    at = user_turns[c][number][0]
                    reference = next((m["content"] for m in conversations[c][at + 1:at + 2]
                                      if m["role"] == "assistant"), "")
                    earlier = [t["reply"] for t in turns[c]]
                    turns[c].append({"turn": number + 1, "user": running[c][-1]["content"], "reply": reply,
                                     "reference": reference,
                                     "metrics": reply_metrics(reply, reference, running[c], judge, earlier)})
                    running[c].append({"role": "assistant", "content": reply})
                bar.update(len(chunk))
    output = Path(config.output)
    with written_whole(output) as handle:
        for chat, played in zip(conversations, turns):
            handle.write(json.dumps({"system": chat[0]["content"] if chat[0]["role"] == "system" else "",
                                     "turns": played}, ensure_ascii=False) + "\n")
    per_turn = {}
    for number in range(max(map(len, turns), default=0)):
        at = [t[number] for t in turns if len(t) > number]
        per_turn[number + 1] = summarise([t["metrics"] for t in at], [t["reply"] for t in at])
    scenarios = per_scenario(conversations, turns, judge)
    summary = {"model": config.model, "conversations": config.conversations, "role_judge": judge.to_dict(),
               "overall": summarise([t["metrics"] for c in turns for t in c], [t["reply"] for c in turns for t in c]),
               "per_turn": per_turn, "per_scenario": scenarios, "metric_notes": METRIC_NOTES}
    write_whole(output.with_suffix(".summary.json"), json.dumps(summary, indent=2) + "\n")
    print(f"{config.model}: self-play over {len(conversations)} conversations of {config.conversations}; each "
          f"conversation's turns in {output}")
    print(judge_line(judge))
    print(turn_table(per_turn))
    print(scenario_table(scenarios))
    return 0


def per_scenario(conversations: list[list[dict]], turns: list[list[dict]], judge) -> list[dict]:
    """Each conversation (scenario) as one practice call: the rates of its bot turns and, beside them, the reward
    --objective grpo would give it with its default weights (core/data/call_rewards.py), so reward hacking shows."""
    references = [m["content"] for chat in conversations for m in chat if m["role"] == "assistant"]
    length = LengthRange.of(references)
    rows = []
    for chat, played in zip(conversations, turns):
        system = chat[0]["content"] if chat and chat[0]["role"] == "system" else ""
        replies = [t["reply"] for t in played]
        components = call_components(replies, system, judge, length)
        rows.append({"persona": system[:80], **per_turn_rates(replies, system, judge),
                     "reward": sum(components.values()), "components": components})
    return rows


SCENARIO_COLUMNS = (("role_inversion", "inversion"), ("persona_named", "named"),
                    ("persona_contradicted", "contradicts"), ("repetition", "repeats"), ("mean_words", "words"),
                    ("reward", "reward"))


def scenario_table(rows: list[dict]) -> str:
    """One row per scenario: role inversion, persona facts named and contradicted, repetition, length, reward."""
    lines = ["scenario " + " ".join(f"{label:>11}" for _, label in SCENARIO_COLUMNS)]
    for number, row in enumerate(rows, start=1):
        lines.append(f"{number:>8} " + " ".join(f"{row[name]:>11.3g}" for name, _ in SCENARIO_COLUMNS))
    return "\n".join(lines)


TURN_COLUMNS = (("replies", "replies"), ("role_consistency", "role"), ("repeated_sentence_share", "rep.within"),
                ("repeated_from_earlier_share", "rep.earlier"), ("distinct_2", "distinct2"),
                ("length_ratio", "len/ref"), ("persona_mention_share", "persona"),
                ("persona_contradiction_share", "contradicts"))


def turn_table(per_turn: dict) -> str:
    """One row per turn number: how the bot's replies at that depth of the call measure up."""
    lines = ["turn " + " ".join(f"{label:>11}" for _, label in TURN_COLUMNS)]
    for number, metrics in per_turn.items():
        cells = [f"{metrics[name]:>11.3g}" if isinstance(metrics.get(name), float) else f"{metrics.get(name, ''):>11}"
                 for name, _ in TURN_COLUMNS]
        lines.append(f"{number:>4} " + " ".join(cells))
    return "\n".join(lines)
