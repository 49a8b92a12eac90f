"""The role judge tells a fine-tune that learnt the prospect's side from one that learnt the rep's.

Two short SmolLM2 runs on the repository's pairs: one as the data is (the bot answers as the prospect),
one with the roles swapped (the bot answers the prospect's lines as the rep). Their greedy replies to
held-out rep messages are scored by the role judge learnt from the repository's data.
"""

import json
import shutil

import pytest
from conftest import ROOT, cli, repository_records, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.data.roleplay_metrics import role_judge
from core.model.generation import Sampling, generate_replies

PAIRS = [json.loads(line) for line in (ROOT / "data" / "training.jsonl").read_text().splitlines()]
TRAIN, HELD_OUT = PAIRS[:16], PAIRS[-8:]  # four steps of four at 5e-4: enough to flip the role


def fine_tune(tmp_path, cache_dir, name: str, records: list[dict]):
    out = tmp_path / name
    code, printed = cli("--data_path", write_jsonl(tmp_path / f"{name}.jsonl", records), "--model_name", "smollm2",
                        "--cache_dir", cache_dir, "--output_dir", out, "--epochs", "1", "--batch_size", "4",
                        "--lr", "5e-4", "--warmup_ratio", "0", "--eval_split", "0", "--save_steps", "0",
                        "--sample_prompts", "0", "--max_length", "128", "--no-report")
    assert code == 0, printed[-2000:]
    best = out / "best_model"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(best), AutoTokenizer.from_pretrained(best)
    shutil.rmtree(out)  # 2 GB with the optimizer state: the second fine-tune should not need twice the disk
    return model, tokenizer


@pytest.mark.slow(seconds=60)
def test_swapped_roles_score_low_and_the_normal_fine_tune_high(tmp_path, smollm2_dir, cache_dir):
    judge = role_judge(repository_records())
    swapped = [{"input": r["output"], "output": r["input"]} for r in TRAIN]
    prompts = [[{"role": "user", "content": r["input"]}] for r in HELD_OUT]
    swapped_prompts = [[{"role": "user", "content": r["output"]}] for r in HELD_OUT]
    greedy = Sampling(max_new_tokens=24, greedy=True)
    shares = {}
    for name, records, chats in (("normal", TRAIN, prompts), ("swapped", swapped, swapped_prompts)):
        model, tokenizer = fine_tune(tmp_path, cache_dir, name, records)
        replies = generate_replies(model, tokenizer, chats, greedy)
        shares[name] = sum(map(judge.is_bot, replies)) / len(replies)
    print(f"share of replies read as the prospect: {shares}")
    assert shares["normal"] >= 0.75 and shares["swapped"] <= 0.25
