"""Generate a reply exactly as the model was trained: its own chat template with the generation prompt,
stopping at the end-of-turn token it learned. Sampled by default, so two practice calls with the same
opener play out differently; `Sampling(greedy=True)` gives the one most likely reply.

Replies are decoded with the KV cache (one new token per forward pass) and, for several conversations
at once, in left-padded batches (`generate_replies`): samples, `evaluate` and the demo use it. The
model may be the training model: the patches of `core.model.prepare` are inert in generation (the
lean layers compute the stock outputs, packed attention falls back to stock SDPA without sequence
boundaries, the trimmed last layer runs its stock forward without trained rows); tests/model/test_generation.py
checks that a prepared model generates the stock model's tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TextIteratorStreamer,
    TopPLogitsWarper,
)

from core.data.chat_format import ChatEncoder


@dataclass
class Sampling:
    """Decoding settings; the defaults vary replies without letting a small model loop on a sentence."""
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    no_repeat_ngram_size: int = 4    # no 4-token phrase twice in one reply: the usual shape of a loop
    max_new_tokens: int = 128
    greedy: bool = False

    def generate_kwargs(self, prompt_length: int, greedy_rows: int = 0) -> dict:
        """`greedy_rows`: the batch's first rows decode greedily within a sampled batch (see GreedyRows)."""
        processors = [NoRepeatInReply(self.no_repeat_ngram_size, prompt_length)] if self.no_repeat_ngram_size else []
        if greedy_rows:
            processors.append(GreedyRows(greedy_rows))
        common = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if processors:
            common["logits_processor"] = LogitsProcessorList(processors)
        if self.greedy:
            return {**common, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {**common, "do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": None}


class NoRepeatInReply(LogitsProcessor):
    """Forbid the token that would repeat an n-token phrase of the reply so far.

    Unlike transformers' `no_repeat_ngram_size`, which also counts the prompt, this looks only at the
    reply: the persona's own phrases and the chat template's markers stay free to use.
    """

    def __init__(self, size: int, prompt_length: int):
        self.size, self.prompt_length = size, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, ids in enumerate(input_ids[:, self.prompt_length:].tolist()):
            if len(ids) < self.size:
                continue
            prefix = ids[len(ids) - self.size + 1:]
            banned = [ids[i + self.size - 1] for i in range(len(ids) - self.size + 1)
                      if ids[i:i + self.size - 1] == prefix]
            scores[row, banned] = -float("inf")
        return scores


class GreedyRows(LogitsProcessor):
    """Keep only the most likely token of the first `rows` rows, so that sampling them is greedy decoding.

    The samples of a run hold a greedy and a sampled reply to each prompt: with this, both are one batch
    (one forward pass per token for the two), which on a CPU costs little more than either alone.
    """

    def __init__(self, rows: int):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = scores[:self.rows]
        best = rows.argmax(dim=-1, keepdim=True)
        kept = rows.gather(-1, best)
        rows.fill_(-float("inf")).scatter_(-1, best, kept)
        return scores


def processed_scores(scores: torch.Tensor, histories: list[list[int]], prompt_lengths: list[int],
                     sampling: Sampling) -> torch.Tensor:
    """What `model.generate` does to each row's scores under `sampling.generate_kwargs`, in its order, for rows
    that share `sampling` (each with its own token history and prompt length): the repetition penalty, then
    NoRepeatInReply, then (sampling) temperature and top-p. Every step is row by row, so a row's scores are
    those it would have alone; the engine (core/model/engine.py) decodes with this, so its tokens are generate's."""
    if sampling.repetition_penalty != 1.0:
        width = max(map(len, histories))  # rows padded with their own first token: a repeat changes nothing
        ids = torch.tensor([h[:1] * (width - len(h)) + h for h in histories], device=scores.device)
        scores = RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty)(ids, scores)
    if sampling.no_repeat_ngram_size:
        for row, (history, prompt_length) in enumerate(zip(histories, prompt_lengths)):
            NoRepeatInReply(sampling.no_repeat_ngram_size, prompt_length)(torch.tensor([history]), scores[row:row + 1])
    if not sampling.greedy:
        if sampling.temperature != 1.0:
            scores = TemperatureLogitsWarper(sampling.temperature)(None, scores)
        if sampling.top_p < 1.0:
            scores = TopPLogitsWarper(sampling.top_p)(None, scores)
    return scores


def pick_tokens(scores: torch.Tensor, greedy: bool, generators: list[torch.Generator | None]) -> list[int]:
    """Each row's next token from its processed scores, as generate picks it: argmax, or one multinomial draw
    from the row's own generator (seeded, it draws what the global RNG seeded alike would)."""
    if greedy:
        return torch.argmax(scores, dim=-1).tolist()
    probs = torch.softmax(scores, dim=-1)
    return [int(torch.multinomial(probs[row:row + 1], num_samples=1, generator=generator)[0, 0])
            for row, generator in enumerate(generators)]


def end_of_turn_ids(model, tokenizer) -> set[int]:
    """The tokens generate stops at: the model's generation config's end-of-sequence ids (else the tokenizer's)."""
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    return set(eos) if isinstance(eos, list) else {eos}


def prompt_ids(tokenizer, messages: list[dict], special_tokens: str = "refuse") -> list[int]:
    """The conversation rendered by the chat template with the generation prompt, as token ids; under
    `special_tokens="text"` text that spells a control token stays text (as in training)."""
    if special_tokens == "text":
        return ChatEncoder(tokenizer, 1, "text").chat_prompt_ids(messages)
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


def _inputs(model, tokenizer, messages: list[dict], special_tokens: str = "refuse") -> dict:
    """The prompt as model inputs (one row, no padding)."""
    ids = torch.tensor([prompt_ids(tokenizer, messages, special_tokens)], dtype=torch.long, device=model.device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_padded(tokenizer, conversations: list[list[dict]], device) -> dict:
    """Prompts rendered by the chat template, left-padded to one width so every reply starts at the same column."""
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"] for c in conversations]
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def greedy_and_sampled(model, tokenizer, conversations: list[list[dict]], sampling: Sampling,
                       seed: int) -> tuple[list[str], list[str]]:
    """The greedy and a seeded sampled reply to each conversation, all in one batch: the greedy ones are the
    replies `generate_replies` gives with `greedy=True`, the sampled ones repeat for the same seed and prompts."""
    replies = generate_replies(model, tokenizer, conversations * 2, sampling, seed, len(conversations) * 2,
                               greedy_rows=len(conversations))
    return replies[:len(conversations)], replies[len(conversations):]


@torch.no_grad()
def generate_replies(model, tokenizer, conversations: list[list[dict]], sampling: Sampling | None = None,
                     seed: int | None = None, batch_size: int = 8, greedy_rows: int = 0) -> list[str]:
    """The bot's next reply to each conversation, `batch_size` at a time (left-padded, KV cache on).

    `seed` makes sampling repeatable for the same conversations and batch size; the caller's RNG stays as it was.
    `greedy_rows`: the first rows of each batch decode greedily (`greedy_and_sampled` sends one batch).
    """
    sampling = sampling or Sampling()
    was_training = model.training
    model.eval()
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    replies = []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, len(conversations), batch_size):
            inputs = left_padded(tokenizer, conversations[start:start + batch_size], model.device)
            width = inputs["input_ids"].shape[1]
            output = model.generate(**inputs, **sampling.generate_kwargs(width, greedy_rows), use_cache=True,
                                    pad_token_id=pad_id(tokenizer))
            replies += [text.strip() for text in tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)]
    model.train(was_training)
    return replies


def generate_reply(model, tokenizer, messages: list[dict], sampling: Sampling | None = None,
                   seed: int | None = None) -> str:
    """The bot's next reply to a conversation (a list of {"role", "content"}); `seed` makes sampling repeatable."""
    return generate_replies(model, tokenizer, [messages], sampling, seed)[0]


def stream_reply(model, tokenizer, messages: list[dict], sampling: Sampling | None = None,
                 special_tokens: str = "refuse") -> Iterator[str]:
    """The next reply, piece by piece as it is generated (generation runs in a background thread)."""
    sampling = sampling or Sampling()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    inputs = _inputs(model, tokenizer, messages, special_tokens)
    kwargs = {**inputs, **sampling.generate_kwargs(inputs["input_ids"].shape[1]), "streamer": streamer,
              "use_cache": True, "pad_token_id": pad_id(tokenizer)}
    thread = threading.Thread(target=model.generate, kwargs=kwargs, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
