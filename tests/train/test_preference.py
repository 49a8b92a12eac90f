"""Preference tuning on the tiny Qwen2 in fp32: DPO's loss and gradients equal TRL's DPOTrainer on the same model
and pairs (packed and padded, full fine-tune and LoRA), KTO's equal its formula, and the data formats.

TRL (trl==1.16.0, the `dev` extra) is the reference: its trainer is built on a stock transformers model
(SDPA, TRL's own fused head) and fed our own token ids through its collator, so the comparison covers
the masking, the per-sequence sums, the reference and the loss, not the tokenisation.
"""

import copy
import json
import re

import numpy as np
import pytest
import torch
from conftest import ROOT, cli, make_config, make_run, write_jsonl
from transformers import AutoModelForCausalLM

TOLERANCE = 1e-5


def pair_records(n: int = 8) -> list[dict]:
    """Pairs built from the sample data: the prospect's reply is chosen, a rep's line (role inversion) rejected."""
    lines = (ROOT / "data" / "training.jsonl").read_text().splitlines()[:n]
    records = [json.loads(line) for line in lines]
    return [{"messages": [{"role": "user", "content": r["input"]}], "chosen": r["output"],
             "rejected": records[(i + 1) % n]["input"]} for i, r in enumerate(records)]


def perturb(model, seed: int, names=None) -> None:
    """Move the weights (or only those named) off their initial values, the same way on any copy of the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if names is None or any(n in name for n in names):
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


def grads(model) -> dict:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_close_gradients(ours: dict, theirs: dict) -> None:
    assert ours and set(ours) == set(theirs)
    for name, grad in theirs.items():
        assert (ours[name] - grad).norm() <= TOLERANCE * grad.norm() + 1e-9, name


def stock_model(model_dir):
    """The plain transformers model (SDPA attention, the model's own head) that TRL trains."""
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")


def trl_examples(data, sequences: list[tuple[int, int]]) -> list[dict]:
    """Our tokenised pairs as TRL's pre-tokenised examples: the untrained prefix is the prompt."""
    examples = []
    for chosen, rejected in sequences:
        (c_ids, c_mask), (r_ids, r_mask) = data.sequence(chosen), data.sequence(rejected)
        c_start, r_start = int(np.argmax(c_mask)), int(np.argmax(r_mask))
        assert c_start == r_start and list(c_ids[:c_start]) == list(r_ids[:r_start])  # one prompt, shared
        assert c_mask[c_start:].all() and r_mask[r_start:].all()  # the reply alone is trained, to its end
        examples.append({"prompt_ids": [int(t) for t in c_ids[:c_start]],
                         "chosen_ids": [int(t) for t in c_ids[c_start:]],
                         "rejected_ids": [int(t) for t in r_ids[r_start:]]})
    return examples


def trl_dpo_trainer(tmp_path, model, ref_model, tokenizer, beta: float, peft_config=None):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    placeholder = Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi"}],
                                      "chosen": [{"role": "assistant", "content": "Hello."}],
                                      "rejected": [{"role": "assistant", "content": "Go away."}]}])
    # bf16=False: TRL's configs default to bf16 autocast, which its trainer applies to the reference model's forward
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, report_to="none", use_cpu=True, max_length=None,
                     per_device_train_batch_size=4, precompute_ref_log_probs=False, bf16=False)
    return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=placeholder,
                      processing_class=tokenizer, peft_config=peft_config)


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dpo_loss_and_gradients_equal_trl(tmp_path, tiny_qwen_1k_dir, cache_dir, packing, lora):
    data_path = write_jsonl(tmp_path / "pairs.jsonl", pair_records())
    adapter = dict(lora=True, lora_r=4, lora_alpha=8.0, lora_dropout=0.0) if lora else {}
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, data_path=str(data_path), objective="dpo", beta=0.1,
                   eval_split=0.0, packing=packing, precision="fp32", **adapter)
    assert run.prepared.packed == packing
    model = run.prepared.model
    perturb(model, seed=1, names=["lora_B"] if lora else None)  # the policy leaves the reference
    units = np.arange(4)
    batch = run.objective.batch(run, units)
    loss, sums = run.objective.loss(run, batch)
    (loss / len(units)).backward()
    ours = grads(model)

    stock = stock_model(tiny_qwen_1k_dir)
    if lora:  # TRL attaches a new adapter (its reference: adapters off), then takes ours
        from peft import get_peft_model_state_dict, set_peft_model_state_dict
        config = copy.deepcopy(model.peft_config["default"])
        trainer = trl_dpo_trainer(tmp_path, stock, None, run.tokenizer, 0.1, config)
        policy = trainer.model
        assert "ref" not in policy.peft_config
        set_peft_model_state_dict(policy, get_peft_model_state_dict(model))
    else:
        policy = copy.deepcopy(stock)
        perturb(policy, seed=1)
        trainer = trl_dpo_trainer(tmp_path, policy, stock, run.tokenizer, beta=0.1)
    pairs = [(int(run.data.sequences.pairs[u]), int(run.data.sequences.pairs[u]) + 1) for u in units]
    inputs = trainer.data_collator(trl_examples(run.data.sequences, pairs))
    trainer.model.train()  # as ours (no dropout in this model; LoRA dropout 0)
    theirs_loss = trainer.compute_loss(trainer.model, inputs)
    theirs_loss.backward()
    assert abs(loss.item() / len(units) - theirs_loss.item()) <= TOLERANCE * abs(theirs_loss.item())
    assert abs(loss.item() / len(units) - np.log(2)) > 1e-3  # the policy did leave the reference
    metrics = trainer._metrics["train"]
    assert sums[0].item() / len(units) == pytest.approx(metrics["rewards/accuracies"][-1], abs=1e-6)
    assert sums[1].item() / len(units) == pytest.approx(metrics["rewards/margins"][-1], abs=1e-5)
    assert sums[2].item() / len(units) == pytest.approx(metrics["logps/chosen"][-1], rel=1e-5)
    assert_close_gradients(ours, grads(policy))


def lift_replies(run, lr: float) -> None:
    """One step of gradient ascent on the replies' log-probabilities: the policy now prefers them to the reference."""
    batch = run.objective.batch(run, np.arange(len(run.data.sequences)))
    run.prepared.token_log_probs(batch.inputs, batch.labels).sum().backward()
    with torch.no_grad():
        for param in run.prepared.model.parameters():
            if param.grad is not None:
                param.add_(lr * param.grad / param.grad.norm())
                param.grad = None


def kto_records() -> list[dict]:
    """Labelled replies (good: the prospect's own, bad: a rep's line) and a pair, which KTO reads as one of each."""
    pairs = pair_records(6)
    labelled = [{"messages": p["messages"], "completion": p["chosen" if i % 2 else "rejected"], "label": bool(i % 2)}
                for i, p in enumerate(pairs[:4])]
    return labelled + pairs[4:]


def trl_kto_trainer(tmp_path, model, ref_model, tokenizer, peft_config=None):
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer
    placeholder = Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi"}],
                                      "completion": [{"role": "assistant", "content": "Hello."}], "label": True}])
    args = KTOConfig(output_dir=str(tmp_path / "trl-kto"), beta=0.1, desirable_weight=1.0, undesirable_weight=1.5,
                     report_to="none", use_cpu=True, max_length=None, per_device_train_batch_size=8,
                     precompute_ref_log_probs=False, bf16=False)
    return KTOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=placeholder,
                      processing_class=tokenizer, peft_config=peft_config)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_kto_loss_and_gradients_equal_trl(tmp_path, tiny_qwen_1k_dir, cache_dir, lora):
    """One micro-batch on one process, where TRL's per-batch KL estimate and ours (per optimizer step) coincide;
    TRL's collator is given our mismatched partners as its KL completions."""
    data_path = write_jsonl(tmp_path / "labels.jsonl", kto_records())
    adapter = dict(lora=True, lora_r=4, lora_alpha=8.0, lora_dropout=0.0) if lora else {}
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, data_path=str(data_path), objective="kto", beta=0.1,
                   desirable_weight=1.0, undesirable_weight=1.5, eval_split=0.0, precision="fp32", **adapter)
    data, model = run.data.sequences, run.prepared.model
    assert len(data) == 8 and data.desirable.tolist() == [False, True, False, True, True, False, True, False]
    perturb(model, seed=1, names=["lora_B"] if lora else None)
    lift_replies(run, lr=0.05 if lora else 0.005)  # so that KL(policy || reference) > 0 and is not clamped
    units = np.arange(len(data))
    batch = run.objective.batch(run, units)
    run.objective.before_step(run, [batch], [True])
    loss, sums = run.objective.loss(run, batch)
    (loss / len(units)).backward()
    assert run.objective.kl > 0  # the policy moved, so the clamp at 0 is not what makes the two agree

    stock = stock_model(tiny_qwen_1k_dir)
    if lora:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict
        trainer = trl_kto_trainer(tmp_path, stock, None, run.tokenizer, copy.deepcopy(model.peft_config["default"]))
        policy = trainer.model
        set_peft_model_state_dict(policy, get_peft_model_state_dict(model))
    else:
        policy = copy.deepcopy(stock)
        policy.load_state_dict(model.state_dict())
        trainer = trl_kto_trainer(tmp_path, policy, stock, run.tokenizer)
    examples = []
    for i in units:
        ids, mask = data.sequence(int(i))
        start = int(np.argmax(mask))
        partner_ids, partner_mask = data.sequence(int((i + len(data) // 2) % len(data)))
        examples.append({"prompt_ids": [int(t) for t in ids[:start]], "completion_ids": [int(t) for t in ids[start:]],
                         "label": bool(data.desirable[i]),
                         "KL_completion_ids": [int(t) for t in partner_ids[int(np.argmax(partner_mask)):]]})
    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, trainer.data_collator(examples))
    theirs.backward()
    assert abs(loss.item() / len(units) - theirs.item()) <= TOLERANCE * abs(theirs.item())
    # The KL estimate is a small mean of differences of large log-probabilities: summation order (threads) moves
    # its last digits, so it is compared to 5e-5 absolute (its loss and gradients above to 1e-5 relative).
    assert run.objective.kl == pytest.approx(trainer._metrics["train"]["kl"][-1], rel=1e-4, abs=5e-5)
    assert_close_gradients(grads(model), grads(policy))


RESUMABLE = dict(objective="dpo", epochs=2, batch_size=2, grad_accum_steps=2, lr=2e-3, log_steps=1, eval_steps=3,
                 save_steps=4, eval_split=0.2, warmup_ratio=0.2)


def test_dpo_resumes_after_sigterm_bit_identically(tmp_path, tiny_qwen_1k_dir, cache_dir):
    """A full fine-tune: the resumed model is no longer the reference, so the run must read the cached one."""
    import os
    import signal

    from test_resume import assert_same_outputs, run_to_end

    from core.errors import TrainingStopped
    from core.run_files import REFERENCE_FILE
    from core.train.run_setup import setup
    from core.trainer import fit

    records = pair_records(20)
    for name in ("reference", "resumed"):
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / "data.jsonl", records)
    reference = make_config(tmp_path / "reference", tiny_qwen_1k_dir, cache_dir, **RESUMABLE)
    run_to_end(reference)
    metrics = [json.loads(line) for line in (tmp_path / "reference" / "out" / "metrics.jsonl").read_text().splitlines()]
    assert {"reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected"} <= set(metrics[0])
    assert any(m["type"] == "eval" and "eval_reward_accuracy" in m for m in metrics)

    def stop_in_step_6(name, run, index=None, **details):
        if name == "micro_batch" and run.state.step + 1 == 6 and index == 1:
            os.kill(os.getpid(), signal.SIGTERM)
    interrupted = make_config(tmp_path / "resumed", tiny_qwen_1k_dir, cache_dir, **RESUMABLE)
    with pytest.raises(TrainingStopped):
        run_to_end(interrupted, stop_in_step_6)
    assert (tmp_path / "resumed" / "out" / REFERENCE_FILE).is_file()
    run = setup(make_config(tmp_path / "resumed", tiny_qwen_1k_dir, cache_dir, **RESUMABLE,
                            resume_from_checkpoint="auto"), log=lambda *_: None)
    assert run.state.step == 6  # the interrupted step completes, then checkpoint-6 is written
    fit(run, log=lambda *_: None)
    assert_same_outputs(tmp_path / "resumed" / "out", tmp_path / "reference" / "out")


@pytest.mark.slow(seconds=23)
def test_dpo_two_processes_equal_one_with_twice_the_batch(tmp_path, tiny_qwen_dir, cache_dir):
    from test_distributed import assert_same_run, launch, options
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(13))
    extra = ["--objective", "dpo", "--grad_accum_steps", "2", "--eval_split", "0.3"]
    one = tmp_path / "one"
    code, output = cli(*options(data, tiny_qwen_dir, cache_dir, one, 4, *extra))
    assert code == 0, output[-3000:]
    result = launch("torchrun", options(data, tiny_qwen_dir, cache_dir, tmp_path / "two", 2, *extra))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert_same_run(tmp_path / "two", one)
    two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ones = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(two, ones):
        for key in ("reward_accuracy", "reward_margin", "eval_reward_accuracy", "eval_reward_margin"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (key, a, b)


def test_a_dpo_run_logs_its_metrics_and_its_report_shows_them(tmp_path, tiny_qwen_1k_dir, cache_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(12))
    out = tmp_path / "out"
    code, output = cli("--objective", "dpo", "--data_path", data, "--model_name", tiny_qwen_1k_dir, "--cache_dir",
                       cache_dir, "--output_dir", out, "--batch_size", "2", "--epochs", "1", "--eval_steps", "2",
                       "--save_steps", "0", "--log_steps", "1", "--sample_prompts", "2", "--sample_max_new_tokens",
                       "4", "--eval_split", "0.25", "--lr", "1e-3")
    assert code == 0, output[-3000:]
    first_line = r"step 1/\d+ \| epoch 1 \| loss 0\.69\d\d \| reward accuracy 0\.000 \| reward margin 0\.000"
    assert re.search(first_line, output)
    assert "Batches: 2 pairs per process" in output and re.search(r"validation at step 2: loss \d\.\d+, reward", output)
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in entries if e["type"] == "eval"]
    assert evals and all(e["eval_pairs"] == 3 and 0 <= e["eval_reward_accuracy"] <= 1 for e in evals)
    best = json.loads((out / "best_model" / "best.json").read_text())
    assert best["eval_loss"] == min(e["eval_loss"] for e in evals)  # the objective's metric picks best_model/
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0] + [e["step"] for e in evals]
    chosen = {r["chosen"] for r in pair_records(12)}
    assert all(x["reference"] in chosen for x in samples[0]["samples"])  # the held-out pairs' chosen replies
    page = (out / "report.html").read_text()
    assert "<img alt='preference_curves' src='data:image/png;base64," in page
    assert page.count("<tr class='prompt'>") == 2


def role_inversion_pairs(n: int) -> list[dict]:
    """The prospect's reply chosen; rejected, a rep's line given as the prospect's answer (role inversion)."""
    records = [json.loads(line) for line in (ROOT / "data" / "training.jsonl").read_text().splitlines()]
    return [{"messages": [{"role": "user", "content": r["input"]}], "chosen": r["output"],
             "rejected": records[(i + 7) % len(records)]["input"]} for i, r in enumerate(records[:n])]


# Two DPO steps at a high LoRA rate reach the 10 of 12 held-out pairs that three at 1e-3 did; one KTO step shows the
# direction. Each run costs as much again in validation (12 pairs, 24 replies) and loading as in training.
STEPS, LR = {"dpo": "2", "kto": "1"}, {"dpo": "3e-3", "kto": "1e-3"}


@pytest.mark.slow(seconds=88)
def test_dpo_with_lora_teaches_smollm2_to_stay_in_role_and_kto_moves_the_same_way(tmp_path, smollm2_dir, cache_dir):
    pairs = role_inversion_pairs(60)
    labelled = [{"messages": p["messages"], "completion": p[key], "label": key == "chosen"}
                for p in pairs for key in ("chosen", "rejected")]
    data = {"dpo": write_jsonl(tmp_path / "pairs.jsonl", pairs),
            "kto": write_jsonl(tmp_path / "labels.jsonl", labelled)}
    results = {}
    for objective in ("dpo", "kto"):  # KTO's check is only the direction
        out = tmp_path / objective
        code, output = cli("--objective", objective, "--lora", "--data_path", data[objective], "--model_name",
                           smollm2_dir, "--cache_dir", cache_dir, "--output_dir", out, "--max_steps", STEPS[objective],
                           "--batch_size", "8", "--lr", LR[objective], "--eval_split", "0.2", "--warmup_ratio", "0",
                           "--log_steps", "1", "--save_steps", "0", "--sample_prompts", "0", "--max_length", "160",
                           "--no-merge_lora", "--no-report")
        assert code == 0, output[-3000:]
        entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        results[objective] = [e for e in entries if e["type"] == "eval"][-1]
    dpo, kto = results["dpo"], results["kto"]
    assert dpo["eval_pairs"] == 12 and dpo["eval_reward_accuracy"] > 0.8  # held-out pairs, relative to the base
    assert dpo["eval_logps_chosen"] > dpo["eval_logps_rejected"]  # and the tuned model prefers the in-role reply
    assert kto["eval_reward_accuracy"] > 0.5 and kto["eval_reward_margin"] > 0  # chosen up, rejected down
