"""Group relative policy optimisation (Shao et al. 2024) over practice calls against a simulated rep.

A unit is a scenario (a record of the data: persona, the rep's turns). For each micro-batch of scenarios,
`before_step` rolls out `--generations` calls of up to `--bot_turns` bot turns against the simulated rep
(core/train/rollouts.py), all with the weights of the step's start, scores each call with the reward table
(core/train/objectives/rewards.py), and turns the rewards into group-relative advantages: within each
scenario's group of calls, (reward - group mean) / (group standard deviation + 1e-4). `loss` then takes, for
every bot token of a call (its turns laid out by the chat template exactly as training lays them out; the
rep's turns are context, as TRL's `tool_mask` makes them),

    -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon) * A) + beta * ratio * KL,
    KL = exp(ref - logp) - (ref - logp) - 1     (the k3 estimate of KL(policy || reference)),

where ratio is the policy over the rollout policy (one update per rollout, so 1, with the gradient of
logp), averages it over the call's bot tokens, and sums over calls; the loop divides by the step's calls.
The KL term is weighted by the ratio (its value 1, its gradient
that of the unbiased reverse KL: DeepSeek-V3.2). This is TRL's GRPOTrainer loss with loss_type="grpo",
scale_rewards="group", importance_sampling_level="token", use_bias_correction_kl=True, num_iterations=1
(tests/test_grpo.py). The reference is the model with its LoRA adapters off (--lora is
required: no second copy of the model is kept). best_model/ is picked by the mean reward of held-out
scenarios' calls (eval_reward, higher is better); each evaluation also writes three of its calls to
sample_calls.jsonl, and reports the role kept by a judge fitted on the held-out turns alone (held_out_role)
beside the reward's judge, fitted on the training turns, so a reward that the judge alone believes shows.

Rollouts are sampled from the policy as it is (temperature --rollout_temperature, no top-p, no
repetition penalty), each scenario's group of calls batched together from a seed derived from the step and
the scenario: a resumed run rolls out the calls an uninterrupted one would, and how the scenarios are split
into micro-batches (--grad_accum_steps) or across processes changes none of them, so with the divisor (the
step's calls, counted on the host) accumulation and several processes give the update of one large batch.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from core.config import FormatOptions, option_group
from core.data.call_rewards import COMPONENTS, LengthRange
from core.data.chat_format import ChatEncoder
from core.data.conversations import load_conversations
from core.data.roleplay_metrics import RoleJudge, word_count
from core.data.tokenized import TokenizedData, split_records
from core.errors import ConfigError, DataError
from core.model.generation import Sampling
from core.model.load import load_model_and_tokenizer
from core.run_files import SAMPLE_CALLS_FILE
from core.train.objectives import Batch, Best
from core.train.objectives.preference import model_input
from core.train.objectives.reference import reference_model
from core.train.objectives.rewards import RewardFailure, RewardTable, load_reward_funcs, parse_weights
from core.train.objectives.sft import SFT, move
from core.train.rollouts import PromptedRep, ReplayedRep, as_conversation, roll_out, scenarios_from, seed_for

SAMPLE_CALLS = 3


def group_advantages(rewards: torch.Tensor, generations: int) -> torch.Tensor:
    """Each call's reward against its group's (the calls of one scenario, consecutive): TRL's scale_rewards="group"."""
    grouped = rewards.view(-1, generations)
    mean, std = grouped.mean(dim=1, keepdim=True), grouped.std(dim=1, keepdim=True)  # std: Bessel-corrected
    return ((grouped - mean) / (std + 1e-4)).reshape(-1)


def per_token_kl(policy: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The k3 estimate of KL(policy || reference) at each token (Schulman 2020), never negative."""
    delta = reference - policy
    return torch.exp(delta) - delta - 1


def token_terms(policy: torch.Tensor, reference: torch.Tensor, advantages: torch.Tensor, beta: float,
                epsilon: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, KL, clipped) at each token, given its log-probabilities now and under the reference, and its call's
    advantage. The rollout policy is the policy before this update: the ratio is 1, its gradient logp's."""
    ratio = torch.exp(policy - policy.detach())
    clipped_ratio = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    kl = per_token_kl(policy, reference)
    loss = -torch.min(ratio * advantages, clipped_ratio * advantages) + beta * kl * ratio  # ratio: unbiased KL gradient
    clipped = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + epsilon) & (advantages > 0))
    return loss, kl, clipped


def per_call_mean(values: torch.Tensor, owner: torch.Tensor, calls: int) -> torch.Tensor:
    """The mean of each call's token values (0 for a call without bot tokens)."""
    sums = values.new_zeros(calls).index_add_(0, owner, values)
    counts = values.new_zeros(calls).index_add_(0, owner, torch.ones_like(values))
    return sums / counts.clamp(min=1)


class GRPO(SFT):
    """SFT's data (the conversations, tokenised for statistics and samples), read as scenarios."""

    name = "grpo"
    unit = "scenarios"
    best = Best("eval_reward", lower_is_better=False)

    def __init__(self, config):
        self.generations, self.bot_turns = config.generations, config.bot_turns
        self.beta, self.epsilon = config.beta, config.epsilon
        self.funcs = load_reward_funcs(config.reward_funcs)
        self.weights = parse_weights(config.reward_weights, COMPONENTS + tuple(f.__name__ for f in self.funcs))
        self.metric_names = ("reward", *self.weights, "held_out_role", "kl", "reply_words", "clip_fraction")
        self.scenarios, self.table, self.held_out_judge = [], None, None
        self.rep, self.encoder, self.log, self.output_dir, self.is_main = None, None, print, None, False
        self.step, self.eval_samples = 0, []
        self.sampling = Sampling(temperature=config.rollout_temperature, top_p=1.0, repetition_penalty=1.0,
                                 no_repeat_ngram_size=0, max_new_tokens=config.rollout_max_new_tokens)

    # Data ----------------------------------------------------------------------------------------

    def check_data(self, config) -> None:
        """Before the model loads: the reference needs adapters, and every record must be a scenario."""
        if not config.lora:
            raise ConfigError("--objective grpo needs --lora: its KL penalty's reference is the model with its "
                              "adapters off, so no second copy of the model is kept")
        if config.train_role != "bot":
            raise ConfigError("--objective grpo trains the bot (the prospect): drop --train_role rep, which trains a "
                              "rep model to pass as --rep_model")
        if self.generations < 2:
            raise ConfigError(f"--generations {self.generations}: GRPO compares each call with the others of its "
                              "scenario's group, so it needs at least 2")
        scenarios_from(load_conversations(config.data_path, option_group(FormatOptions, config)))

    def load_data(self, config, tokenizer, data_hash: str, progress: bool = True):
        data = super().load_data(config, tokenizer, data_hash, progress)
        conversations = list(load_conversations(config.data_path, option_group(FormatOptions, config)))
        if len(conversations) != len(data.hashes):
            raise DataError(f"{config.data_path}: {len(conversations)} conversations but {len(data.hashes)} "
                            "tokenised records; every record must be a conversation for --objective grpo")
        self.scenarios = scenarios_from(conversations)
        held_out = split_records(len(conversations), config.eval_split, config.seed)
        train = [c.as_chat() for c, h in zip(conversations, held_out) if not h]
        self.table = RewardTable(fit_judge(train), LengthRange.of([m["content"] for c in train for m in c
                                                                   if m["role"] == "assistant"]),
                                 self.weights, self.funcs)
        held = [c.as_chat() for c, h in zip(conversations, held_out) if h]
        self.held_out_judge = fit_judge(held) if held else self.table.judge
        return data

    # Before training -----------------------------------------------------------------------------

    def prepare(self, run, log) -> None:
        config = run.config
        self.log, self.output_dir, self.is_main = log, run.output_dir, run.dist.is_main
        self.encoder = ChatEncoder(run.tokenizer, config.max_length, "text")
        if config.rep_model:
            model, tokenizer = load_model_and_tokenizer(config.rep_model, config.cache_dir, config.trust_remote_code,
                                                        device=run.prepared.device)
            model.eval()
            rep_sampling = Sampling(temperature=config.rep_temperature, max_new_tokens=config.rollout_max_new_tokens)
            self.rep = PromptedRep(model, tokenizer, rep_sampling)
            log(f"Simulated rep: {config.rep_model}, prompted with a brief from each persona")
        else:
            self.rep = ReplayedRep()
            log("Simulated rep: each scenario's own rep turns, replayed in order")
        log(f"GRPO: {self.generations} calls per scenario, up to {self.bot_turns} bot turns each; reward = "
            + " + ".join(f"{w:g} x {n}" for n, w in self.weights.items()))

    # A step --------------------------------------------------------------------------------------

    def batch(self, run, units: np.ndarray) -> Batch:
        """The scenarios alone: their calls are rolled out in `before_step`, with the weights the step starts from."""
        return Batch({}, torch.zeros(0, dtype=torch.long), len(units) * self.generations, 0, {"units": units})

    def before_step(self, run, batches: list[Batch], counted: list[bool]) -> None:
        training = run.prepared.model.training
        self.step = run.state.step
        for index, batch in enumerate(batches):
            units = [int(u) for u in batch.extra["units"]]
            scenarios = [self.scenarios[int(run.data.sequences.records[u])] for u in units]
            calls = [call for unit, scenario in zip(units, scenarios) for call in roll_out(
                run.prepared.model, run.tokenizer, [scenario], self.generations, self.bot_turns, self.rep,
                self.sampling, seed_for(run.config.seed, "train", run.state.step, unit) if training else
                seed_for(run.config.seed, "eval", unit), self.generations)]
            batch.extra.update(self.scored(run, calls, training))
            if not training and counted[index] and len(self.eval_samples) < SAMPLE_CALLS:
                self.eval_samples += [{"persona": c.scenario.system, "messages": c.messages[1:], "reward": r}
                                      for c, r in zip(calls, batch.extra["rewards"].tolist())]
                self.eval_samples = self.eval_samples[:SAMPLE_CALLS]

    def scored(self, run, calls, training: bool) -> dict:
        """The calls' rewards, advantages, token sequences and reference log-probabilities."""
        try:
            rewards, components = self.table.score(calls)
            failure = None
        except RewardFailure as err:
            if not training:
                raise DataError(f"validation at step {self.step}: {err}") from None
            self.log(f"step {self.step + 1}: {err}; the step's update is skipped")
            rewards, components, failure = np.full(len(calls), math.nan), np.full((len(calls), len(self.weights)),
                                                                                  math.nan), str(err)
        encoded = self.encoder.encode_many([as_conversation(c.messages) for c in calls])
        ids, trained, offsets, owners = [], [], [0], []
        for call, record in enumerate(encoded):
            for sequence in record.sequences:
                ids.append(np.asarray(sequence.input_ids, dtype=np.int32))
                trained.append(np.asarray(sequence.trained, dtype=bool))
                offsets.append(offsets[-1] + len(sequence.input_ids))
                owners.append(call)
        data = TokenizedData(np.concatenate(ids), np.concatenate(trained), np.asarray(offsets, dtype=np.int64),
                             np.asarray(owners), np.asarray(owners), {}, "")
        sequences = model_input(run, data, np.arange(len(owners)))
        device = run.prepared.device
        owner = move(torch.from_numpy(np.asarray(owners, dtype=np.int64)), device)[sequences.segments]
        with torch.no_grad(), reference_model(run.prepared.model):
            reference = run.prepared.token_log_probs(sequences.inputs, sequences.labels)
        advantages = group_advantages(torch.from_numpy(rewards), self.generations)
        held_out_role = [np.mean([self.held_out_judge.is_bot(r) for r in c.bot_replies]) if c.bot_replies else 0.0
                         for c in calls]
        words = [np.mean([word_count(r) for r in c.bot_replies]) if c.bot_replies else 0.0 for c in calls]
        host = np.column_stack([rewards, components, held_out_role]).sum(axis=0)
        return {"sequences": sequences, "owner": owner, "reference": reference.detach(), "calls": len(calls),
                "advantages": move(advantages.to(torch.float32), device), "rewards": rewards,
                "host_sums": host, "words": float(np.sum(words)), "failure": failure}

    def loss(self, run, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        extra = batch.extra
        sequences, owner, calls = extra["sequences"], extra["owner"], extra["calls"]
        policy = run.prepared.token_log_probs(sequences.inputs, sequences.labels)
        losses, kl, clipped = token_terms(policy, extra["reference"].to(policy.dtype), extra["advantages"][owner],
                                          self.beta, self.epsilon)
        loss = per_call_mean(losses, owner, calls).sum()
        if extra["failure"]:
            loss = loss * math.nan  # skipped and counted by the loop, as any non-finite loss
        with torch.no_grad():
            tail = torch.stack([per_call_mean(kl.double(), owner, calls).sum(), kl.new_tensor(extra["words"]).double(),
                                per_call_mean(clipped.double(), owner, calls).sum()])
            sums = torch.cat([move(torch.from_numpy(extra["host_sums"]), policy.device), tail.to(policy.device)])
        return loss, sums

    # Validation ----------------------------------------------------------------------------------

    def eval_result(self, loss_sum: float, sums: list[float], count: float) -> dict:
        result = {"eval_loss": loss_sum / max(count, 1),
                  **{f"eval_{name}": value / max(count, 1) for name, value in zip(self.metric_names, sums)},
                  "eval_calls": int(count)}
        if self.is_main and self.output_dir is not None and self.eval_samples:
            with (self.output_dir / SAMPLE_CALLS_FILE).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": self.step, "calls": self.eval_samples}, ensure_ascii=False) + "\n")
        self.eval_samples = []
        return result

    def describe_eval(self, result: dict) -> str:
        parts = ", ".join(f"{name} {result[f'eval_{name}']:.3f}" for name in self.weights)
        return (f"reward {result['eval_reward']:.3f} ({parts}), held-out role {result['eval_held_out_role']:.3f}, "
                f"KL {result['eval_kl']:.4f}")


def fit_judge(conversations: list[list[dict]]) -> RoleJudge:
    """The role judge on these conversations' turns: the bot's (assistant) against the rep's (user)."""
    return RoleJudge.fit([m["content"] for c in conversations for m in c if m["role"] == "assistant"],
                         [m["content"] for c in conversations for m in c if m["role"] == "user"])
