"""Generated tokens per second: SmolLM2-135M-Instruct on this machine's CPU, greedy, one reply and a batch of 8.

Decoding as samples, `evaluate`, chat and web do it (core/model/generation.py: chat template, KV cache,
left-padded batches, the default repetition guards). Each case runs `--repeats` times after one warm-up;
the table gives the median. Tokens are the reply tokens each row really generated (up to and including
its end-of-turn token), so a row that stops early does not count its padding.

    python bench/bench_generation.py                 # ~1 min on 2 idle cores
    python bench/bench_generation.py --threads 1     # one thread: steadier on a machine shared with others
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from core.config import LoadOptions
from core.model.generation import Sampling, left_padded, pad_id
from core.use.backend import load_for_chat

OPENERS = ["Hi, this is Nate from Tidewater. Do you have a minute to talk about payroll?",
           "I saw your team is hiring. How do you handle onboarding today?",
           "What would it take for you to switch vendors this quarter?",
           "Can I send you a short case study from a firm your size?",
           "How much time does your bookkeeper spend on payroll each week?",
           "Is the budget decided by you or by your board?",
           "What did you think of the demo last week?",
           "If price were not an issue, would this solve your problem?"]
PERSONA = ("You are Frank Marquez, operations director at Oakline Foundation, a 22-person nonprofit. Your budget "
           "is frozen until Q4. Stay in character as the prospect.")


def generated_tokens(output: torch.Tensor, width: int, stop: set[int]) -> int:
    total = 0
    for row in output[:, width:].tolist():
        ends = [i for i, t in enumerate(row) if t in stop]
        total += ends[0] + 1 if ends else len(row)
    return total


@torch.no_grad()
def time_case(model, tokenizer, batch: int, max_new_tokens: int, repeats: int) -> tuple[float, int, float]:
    """(median tokens/s, tokens per run, median seconds per run)."""
    chats = [[{"role": "system", "content": PERSONA}, {"role": "user", "content": OPENERS[i % len(OPENERS)]}]
             for i in range(batch)]
    sampling = Sampling(max_new_tokens=max_new_tokens, greedy=True)
    stop = model.generation_config.eos_token_id
    stop = {stop} if isinstance(stop, int) else set(stop)
    inputs = left_padded(tokenizer, chats, model.device)
    width = inputs["input_ids"].shape[1]
    rates, seconds, tokens = [], [], 0
    for attempt in range(repeats + 1):
        started = time.perf_counter()
        output = model.generate(**inputs, **sampling.generate_kwargs(width), use_cache=True,
                                pad_token_id=pad_id(tokenizer))
        elapsed = time.perf_counter() - started
        tokens = generated_tokens(output, width, stop)
        if attempt:  # the first run warms up
            rates.append(tokens / elapsed)
            seconds.append(elapsed)
    return statistics.median(rates), tokens, statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_for_chat("smollm2", LoadOptions(device="cpu"))
    print(f"SmolLM2-135M-Instruct fp32 on the CPU, {torch.get_num_threads()} torch thread(s), load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; greedy, up to {args.max_new_tokens} new tokens, "
          f"median of {args.repeats}")
    print(f"{'replies':>8} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    for batch in (1, 8):
        rate, tokens, seconds = time_case(model, tokenizer, batch, args.max_new_tokens, args.repeats)
        print(f"{batch:>8} {tokens:>7} {seconds:>8.2f} {rate:>9.1f}")


if __name__ == "__main__":
    main()
