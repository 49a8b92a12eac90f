"""GRPO (--objective grpo) on the tiny Qwen2 with LoRA: its loss and gradients equal TRL's GRPOTrainer on the same
calls and rewards, the advantages and KL equal hand-computed values, a verifiable reward rises, a stopped run
resumes to the same figures, the rep simulator sees the call as training renders it, and bad input is refused.

TRL (trl==1.16.0, the `dev` extra) is the reference, with loss_type="grpo", beta=0.1, epsilon=0.2,
scale_rewards="group", importance_sampling_level="token", use_bias_correction_kl=True (TRL's defaults there),
temperature=1.0, num_iterations=1, and a LoRA
adapter whose reference is the model with adapters off. Each call's completion is everything after the
rep's opening; TRL's `tool_mask` marks the rep's later turns (and the template's markers) as untrained.
"""

import copy
import json
import math
import os
import signal

import numpy as np
import pytest
import torch
from conftest import assert_error, cli, make_config, write_jsonl
from test_preference import assert_close_gradients, grads, perturb, stock_model

from core.dataset import rep_view
from core.errors import TrainingStopped
from core.train.objectives.grpo import group_advantages, per_token_kl, token_terms
from core.train.rollouts import Call, PromptedRep, Scenario
from core.train.run_setup import setup
from core.trainer import fit

TOLERANCE = 1e-5
QUIET = {"log": lambda *_: None}
LORA = dict(lora=True, lora_r=4, lora_alpha=8.0, lora_dropout=0.0)
TOY_REWARD = '''
def reply_words(prompts, completions, **kwargs):
    return [sum(len(m["content"].split()) for m in c if m["role"] == "assistant") for c in completions]
'''


PEOPLE = [("Ada Park", "CFO", "Birch Labs", 40), ("Tom Reyes", "IT lead", "Kestrel Auto", 60),
          ("Mia Chen", "office manager", "Dune Law", 25), ("Raj Patel", "controller", "Fenwick Freight", 15),
          ("Lena Ortiz", "ops director", "Hollow Clinic", 30), ("Sam Boyd", "owner", "Pike Bakery", 12)]


def conversations(tmp_path, n: int = 6, name: str = "calls.jsonl"):
    """Short scenarios (persona, rep and prospect turns) in the shape of data/roleplay_conversations.jsonl."""
    records = [{"messages": [
        {"role": "system", "content": f"You are {who}, {job} at {company}, {size} people. Budget frozen until Q4."},
        {"role": "user", "content": f"Hi {who.split()[0]}, Nate from Lumen. Got a minute?"},
        {"role": "assistant", "content": "Barely. What is it?"},
        {"role": "user", "content": "How do you run payroll today?"},
        {"role": "assistant", "content": f"By hand, for {size} people. It works."}]}
        for who, job, company, size in PEOPLE[:n]]
    return write_jsonl(tmp_path / name, records)


def toy_reward(tmp_path):
    path = tmp_path / "toy_rewards.py"
    path.write_text(TOY_REWARD)
    return f"{path}:reply_words"


def grpo_config(tmp_path, model_dir, cache_dir, **overrides):
    options = dict(data_path=str(conversations(tmp_path)), objective="grpo", generations=4, bot_turns=2,
                   rollout_max_new_tokens=6, batch_size=1, eval_split=0.0, beta=0.1, **LORA)
    return make_config(tmp_path, model_dir, cache_dir, **{**options, **overrides})


# The loss against TRL -------------------------------------------------------------------------------

def trl_inputs(run, batch) -> dict:
    """Our rolled-out calls as TRL's batch: one prompt (the scenario up to the rep's opening), the rest as
    right-padded completions, the untrained tokens of each completion zero in `tool_mask`."""
    sequences = batch.extra["sequences"]
    ids, labels = sequences.inputs["input_ids"], sequences.labels
    rows = []
    if ids.shape[0] == 1:  # packed: split the row at the sequence boundaries
        bounds = sequences.inputs["cu_seq_lens_q"].tolist()
        rows = [(ids[0, a:b], labels[0, a:b]) for a, b in zip(bounds, bounds[1:])]
    else:
        rows = list(zip(ids, labels))
    starts = [int(torch.nonzero(label != -100)[0]) for _, label in rows]  # the first trained token
    assert len(set(starts)) == 1 and all(torch.equal(rows[0][0][:starts[0]], r[0][:starts[0]]) for r in rows)
    start, width = starts[0], max(len(r[0]) for r in rows) - starts[0]
    completion = torch.zeros(len(rows), width, dtype=torch.long)
    mask, tool = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    for i, (row, label) in enumerate(rows):
        n = len(row) - start
        completion[i, :n], mask[i, :n], tool[i, :n] = row[start:], 1, (label[start:] != -100).long()
    prompt = rows[0][0][:start].repeat(len(rows), 1)
    return {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
            "completion_mask": mask, "tool_mask": tool}


def trl_grpo_trainer(tmp_path, model, tokenizer, peft_config):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    placeholder = Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi"}]}] * 4)
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, epsilon=0.2, loss_type="grpo", scale_rewards="group",
                      num_generations=4, per_device_train_batch_size=4, report_to="none", use_cpu=True, bf16=False,
                      temperature=1.0)
    return GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                       train_dataset=placeholder, processing_class=tokenizer, peft_config=peft_config)


@pytest.mark.slow(seconds=10)
def test_grpo_loss_and_gradients_equal_trl(tmp_path, tiny_qwen_1k_dir, cache_dir, packing=True):
    run = setup(grpo_config(tmp_path, tiny_qwen_1k_dir, cache_dir, packing=packing, precision="fp32",
                            reward_funcs=toy_reward(tmp_path)), **QUIET)
    model = run.prepared.model
    perturb(model, seed=1, names=["lora_B"])  # the policy leaves the reference: KL is not zero
    batch = run.objective.batch(run, np.array([0]))
    run.objective.before_step(run, [batch], [True])
    batch.extra["rewards_advantages"] = batch.extra["advantages"].clone()
    assert batch.extra["advantages"].abs().sum() > 0  # the toy reward told the calls apart
    loss, _ = run.objective.loss(run, batch)
    # Gradients are compared under advantages that do not sum to zero: a group's own advantages cancel most of
    # each gradient, leaving float32 rounding of the parts' size.
    advantages = torch.tensor([1.0, 0.5, -0.2, 0.3])
    batch.extra["advantages"] = advantages.clone()
    moved, sums = run.objective.loss(run, batch)
    (moved / batch.count).backward()
    ours = grads(model)

    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    trainer = trl_grpo_trainer(tmp_path, stock_model(tiny_qwen_1k_dir), run.tokenizer,
                               copy.deepcopy(model.peft_config["default"]))
    set_peft_model_state_dict(trainer.model, get_peft_model_state_dict(model))
    inputs = trl_inputs(run, batch)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad(), trainer.model.disable_adapter():
        inputs["ref_per_token_logps"], _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, attention, inputs["completion_ids"].shape[1])
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # what TRL's loop sets: one micro-batch per optimizer step
    theirs = trainer.compute_loss(trainer.model, {**inputs, "advantages": batch.extra["rewards_advantages"]})
    # the group's advantages cancel (they sum to zero) down to float32 rounding of their size, 1
    assert abs(loss.item() / batch.count - theirs.item()) <= 1e-6 and abs(theirs.item()) > 1e-5
    theirs_moved = trainer.compute_loss(trainer.model, {**inputs, "advantages": advantages.clone()})
    theirs_moved.backward()
    assert abs(moved.item() / batch.count - theirs_moved.item()) <= TOLERANCE * abs(theirs_moved.item())
    assert_close_gradients(ours, grads(trainer.model))
    assert sums[run.objective.metric_names.index("kl")].item() > 0  # the policy left the reference


# Advantages and KL by hand -------------------------------------------------------------------------

def test_group_advantages_and_kl_equal_hand_computed_values():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0], dtype=torch.float64)
    std = math.sqrt((1.5 ** 2 + 0.5 ** 2 + 0.5 ** 2 + 1.5 ** 2) / 3)  # Bessel-corrected, as TRL's nanstd
    expected = [(r - 2.5) / (std + 1e-4) for r in (1, 2, 3, 4)] + [0.0] * 4  # a tied group teaches nothing
    assert group_advantages(rewards, 4).tolist() == pytest.approx(expected, abs=1e-12)

    policy = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64)).requires_grad_()
    reference = torch.log(torch.tensor([0.25, 0.5], dtype=torch.float64))
    kl = 0.5 - math.log(0.5) - 1  # exp(ref - logp) - (ref - logp) - 1
    assert per_token_kl(policy, reference).tolist() == pytest.approx([kl, 0.0], abs=1e-12)
    advantages = torch.tensor([0.8, -0.8], dtype=torch.float64)
    loss, token_kl, clipped = token_terms(policy, reference, advantages, beta=0.1, epsilon=0.2)
    assert loss.tolist() == pytest.approx([-0.8 + 0.1 * kl, 0.8], abs=1e-12)  # ratio 1: -A + beta * KL
    assert not clipped.any()
    loss.sum().backward()  # d/dlogp: -A (the ratio's gradient) + beta * (1 - exp(ref - logp)) + beta * KL (the ratio's)
    assert policy.grad.tolist() == pytest.approx([-0.8 + 0.1 * 0.5 + 0.1 * kl, 0.8], abs=1e-12)


# Learning and resuming -----------------------------------------------------------------------------

def trained_rewards(out) -> list[float]:
    return [e["reward"] for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if e["type"] == "train"]


UP_SHARE = '''
from transformers import AutoTokenizer
TOKENIZER = AutoTokenizer.from_pretrained({model!r})
UP = set({up!r})

def up_share(prompts, completions, **kwargs):
    shares = []
    for call in completions:
        ids = [t for m in call if m["role"] == "assistant" for t in TOKENIZER(m["content"])["input_ids"]]
        shares.append(sum(t in UP for t in ids) / max(len(ids), 1))
    return shares
'''


@pytest.fixture(scope="module")
def learnable_tiny_dir(tmp_path_factory):
    """The tiny Qwen2 on the 1k tokenizer, its weights drawn wider (std 0.2, not 0.02): with the default's
    embeddings, logits span a few tenths whatever the hidden state, so no adapter could make a reply likelier."""
    from conftest import built_once, small_vocab_qwen_tokenizer
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    def build(directory):
        tokenizer = small_vocab_qwen_tokenizer()
        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             tie_word_embeddings=True, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=None, initializer_range=0.2)
        model = Qwen2ForCausalLM(config)
        model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return built_once(tmp_path_factory, "tiny-qwen-1k-learnable", build)


@pytest.mark.slow(seconds=12)
def test_a_verifiable_reward_rises(tmp_path, learnable_tiny_dir, cache_dir):
    """The reward: the share of the bot's tokens whose embedding has a positive first coordinate (half the
    vocabulary, which one direction of the hidden state makes likelier), alone in the reward. GRPO raises it
    within ten steps."""
    from transformers import AutoModelForCausalLM
    embeddings = AutoModelForCausalLM.from_pretrained(learnable_tiny_dir).get_input_embeddings().weight.detach()
    up = sorted(int(i) for i in torch.nonzero(embeddings[:, 0] > 0)[:, 0])
    module = tmp_path / "up_share.py"
    module.write_text(UP_SHARE.format(model=str(learnable_tiny_dir), up=up))
    zero = ",".join(f"{name}=0" for name in ("role", "persona_named", "persona_kept", "no_repetition", "length"))
    two = conversations(tmp_path, 2, "two.jsonl")
    config = grpo_config(tmp_path, learnable_tiny_dir, cache_dir, data_path=str(two),
                         reward_funcs=f"{module}:up_share", reward_weights=zero, generations=16, bot_turns=1,
                         rollout_max_new_tokens=6, batch_size=2, epochs=10, max_steps=10, log_steps=1, lr=3e-2,
                         lr_scheduler="constant", warmup_ratio=0.0, beta=0.001, lora_r=8)
    fit(setup(config, **QUIET), **QUIET)
    rewards = trained_rewards(tmp_path / "out")
    assert len(rewards) == 10 and 0.4 < np.mean(rewards[:3]) < 0.6  # about half of the tokens at first
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.04, rewards


def interrupt_during_step(step: int):
    def on_event(name, run, index=None, **details):
        if name == "micro_batch" and run.state.step + 1 == step:
            os.kill(os.getpid(), signal.SIGTERM)
    return on_event


@pytest.mark.slow(seconds=12)
def test_sigterm_then_resume_rolls_out_the_same_calls(tmp_path, tiny_qwen_1k_dir, cache_dir):
    from safetensors.torch import load_file
    shape = dict(generations=2, bot_turns=2, rollout_max_new_tokens=4, batch_size=1, max_steps=3, log_steps=1,
                 eval_split=0.34, eval_steps=2, save_steps=0, reward_funcs=toy_reward(tmp_path))
    reference = tmp_path / "reference"
    fit(setup(grpo_config(tmp_path, tiny_qwen_1k_dir, cache_dir, output_dir=str(reference), **shape), **QUIET), **QUIET)
    run = setup(grpo_config(tmp_path, tiny_qwen_1k_dir, cache_dir, **shape), **QUIET)
    run.on_event = interrupt_during_step(2)
    with pytest.raises(TrainingStopped) as stopped:
        fit(run, **QUIET)
    assert stopped.value.checkpoint.name == "checkpoint-2"
    resumed = setup(grpo_config(tmp_path, tiny_qwen_1k_dir, cache_dir, resume_from_checkpoint="auto", **shape), **QUIET)
    fit(resumed, **QUIET)

    def figures(out):
        return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_sec"}
                for line in (out / "metrics.jsonl").read_text().splitlines()]
    ours = figures(tmp_path / "out")
    assert ours == figures(reference) and {"reward", "kl", "clip_fraction", "reply_words", "role"} <= ours[0].keys()
    assert any(e["type"] == "eval" and "eval_held_out_role" in e for e in ours)
    mine = load_file(tmp_path / "out" / "best_model" / "model.safetensors")
    theirs = load_file(reference / "best_model" / "model.safetensors")
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    best = json.loads((reference / "best_model" / "best.json").read_text())
    evals = [e for e in ours if e["type"] == "eval"]
    assert best["eval_reward"] == max(e["eval_reward"] for e in evals)  # best_model/: the highest held-out reward
    samples = [json.loads(line) for line in (reference / "sample_calls.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [e["step"] for e in evals]
    assert all(len(s["calls"]) == 3 and s["calls"][0]["messages"][0]["role"] == "user" for s in samples)


def test_accumulation_rolls_out_and_updates_as_one_larger_batch(tmp_path, tiny_qwen_1k_dir, cache_dir):
    """Two micro-batches of one scenario each equal one batch of two: the same calls (seeded per scenario), the
    same rewards, and the same update (the divisor is the step's calls)."""
    from safetensors.torch import load_file
    shape = dict(generations=2, bot_turns=1, rollout_max_new_tokens=4, max_steps=2, log_steps=1,
                 reward_funcs=toy_reward(tmp_path), data_path=str(conversations(tmp_path, 4, "four.jsonl")))
    outs = {}
    for name, sizes in {"one": dict(batch_size=2), "accumulated": dict(batch_size=1, grad_accum_steps=2)}.items():
        outs[name] = tmp_path / name
        fit(setup(grpo_config(tmp_path, tiny_qwen_1k_dir, cache_dir, output_dir=str(outs[name]), **shape, **sizes),
                  **QUIET), **QUIET)
    one, accumulated = ([json.loads(line) for line in (outs[n] / "metrics.jsonl").read_text().splitlines()]
                        for n in ("one", "accumulated"))
    assert [e["reward"] for e in one] == [e["reward"] for e in accumulated] and len(one) == 2
    for a, b in zip(one, accumulated):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-7) and a["kl"] == pytest.approx(b["kl"], rel=1e-4)
    mine, theirs = (load_file(outs[n] / "best_model" / "model.safetensors") for n in ("one", "accumulated"))
    assert all(torch.allclose(mine[k], theirs[k], atol=1e-6) for k in theirs)


# The rep simulator ---------------------------------------------------------------------------------

def test_the_rep_sees_the_call_as_train_role_rep_trains_it(tiny_qwen_1k_dir, qwen_1k_tokenizer):
    from transformers import AutoModelForCausalLM

    from core.config import FormatOptions
    from core.data.chat_format import ChatEncoder
    from core.dataset import parse_record
    from core.model.generation import Sampling
    call = [{"role": "system", "content": "You are Ada Park, CFO at Birch Labs, 40 people."},
            {"role": "user", "content": "Hi Ada, Sam from Lumen here."},
            {"role": "assistant", "content": "I have two minutes."},
            {"role": "user", "content": "Then one question: how do you run payroll?"},
            {"role": "assistant", "content": "By hand."}]
    view = rep_view(call)
    assert [m["role"] for m in view] == ["system", "assistant", "user", "assistant", "user"]
    assert "Ada Park" in view[0]["content"] and view[1]["content"] == call[1]["content"]
    # Read by the training pipeline with --train_role rep, the rep's turns are the trained ones, and before each
    # is the exact prompt the rep generates from at practice time.
    conversation, _ = parse_record("call", {"messages": call}, FormatOptions(train_role="rep"))
    assert conversation.as_chat() == view
    encoded = ChatEncoder(qwen_1k_tokenizer, 1024).encode(conversation).sequences
    assert len(encoded) == 1
    ids, trained = encoded[0].input_ids, encoded[0].trained
    starts = [i for i in range(1, len(ids)) if trained[i] and not trained[i - 1]]
    assert len(starts) == 2
    for start, upto in zip(starts, (1, 3)):
        prompt = qwen_1k_tokenizer.apply_chat_template(rep_view(call[:upto + 1])[:-1], add_generation_prompt=True,
                                                       tokenize=True, return_dict=True)["input_ids"]
        assert ids[:start] == list(prompt)
    rep_text = qwen_1k_tokenizer.decode([t for t, keep in zip(ids, trained) if keep])
    assert call[1]["content"] in rep_text and call[3]["content"] in rep_text and "By hand" not in rep_text

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_1k_dir)
    rep = PromptedRep(model, qwen_1k_tokenizer, Sampling(max_new_tokens=5))
    calls = [Call(Scenario(call[0]["content"], (call[1]["content"],), "test"), call[:3]) for _ in range(3)]
    first, again = rep.next_turns(calls, 1, seed=7), rep.next_turns(calls, 1, seed=7)
    assert first == again and len(first) == 3 and len(set(first)) > 1  # seeded, sampled, batched
    assert np.atleast_1d(model.generation_config.eos_token_id).tolist() == [
        qwen_1k_tokenizer.convert_tokens_to_ids("<|im_end|>")]  # the rep stops at its turn's end


# Bad input -----------------------------------------------------------------------------------------

def train_cli(tmp_path, model_dir, cache_dir, data, *extra):
    return cli("--objective", "grpo", "--lora", "--data_path", data, "--model_name", model_dir, "--cache_dir",
               cache_dir, "--output_dir", tmp_path / "out", "--max_steps", "1", "--rollout_max_new_tokens", "4",
               *extra)


def test_bad_grpo_input_is_one_error_line_before_any_rollout(tmp_path, tiny_qwen_1k_dir, cache_dir):
    data = conversations(tmp_path, 3)
    no_persona = write_jsonl(tmp_path / "bare.jsonl", [{"messages": json.loads(line)["messages"][1:]} for line in
                                                      data.read_text().splitlines()])
    assert_error(train_cli(tmp_path, tiny_qwen_1k_dir, cache_dir, no_persona), r"bare\.jsonl line 1: no persona")
    assert_error(train_cli(tmp_path, tiny_qwen_1k_dir, cache_dir, data, "--generations", "1"),
                 r"--generations 1: .*at least 2")
    assert_error(train_cli(tmp_path, tiny_qwen_1k_dir, cache_dir, data, "--reward_weights", "role=high"),
                 r"--reward_weights: the weight of role \('high'\) is not a number")
    assert_error(train_cli(tmp_path, tiny_qwen_1k_dir, cache_dir, data, "--reward_funcs", "no_such_module:f"),
                 r"--reward_funcs: cannot import no_such_module")
    assert not (tmp_path / "out").exists()  # nothing written
    assert_error(cli("--objective", "grpo", "--data_path", data, "--model_name", tiny_qwen_1k_dir),
                 r"--objective grpo needs --lora")


FLAKY_REWARD = '''
import math
calls = []

def flaky(prompts, completions, **kwargs):
    calls.append(len(completions))
    if len(calls) == 1:
        raise ValueError("no score today")
    return [math.nan if len(calls) == 2 else 1.0 for _ in completions]
'''


def test_a_failing_custom_reward_skips_and_counts_its_steps(tmp_path, tiny_qwen_1k_dir, cache_dir):
    module = tmp_path / "flaky_reward.py"
    module.write_text(FLAKY_REWARD)
    config = grpo_config(tmp_path, tiny_qwen_1k_dir, cache_dir, reward_funcs=f"{module}:flaky", generations=2,
                         bot_turns=1, rollout_max_new_tokens=3, max_steps=3, log_steps=1)
    lines = []
    summary = fit(setup(config, log=lines.append), log=lines.append)
    assert summary["bad_steps_skipped"] == 2 and summary["stopped"] == "max_steps"
    skipped = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["type"] == "skipped"]
    assert [s["step"] for s in skipped] == [1, 2]
    assert any("reward function flaky raised ValueError: no score today" in line for line in lines)
