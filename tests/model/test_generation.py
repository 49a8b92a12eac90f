"""Generation: batched (left-padded) replies equal one-at-a-time ones, the KV cache is used, and a model
prepared for training (lean layers, packed attention, trimmed last layer) generates the stock model's tokens."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.config import AdapterOptions, HardwareOptions
from core.model.generation import Sampling, generate_replies, generate_reply, greedy_and_sampled
from core.model.prepare import prepare_model

CHATS = [[{"role": "system", "content": "You are Dana, a clinic manager."}, {"role": "user", "content": "Hi Dana?"}],
         [{"role": "user", "content": "Good morning. I'm calling about your scheduling software, do you have a "
                                      "couple of minutes to talk about how you book patients today?"}],
         [{"role": "user", "content": "Price?"}]]
GREEDY = Sampling(max_new_tokens=10, greedy=True)


@pytest.fixture(scope="module")
def tiny(tiny_qwen_1k_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_1k_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_qwen_1k_dir)


def test_a_batch_of_replies_equals_the_replies_one_at_a_time(tiny):
    model, tokenizer = tiny
    one_by_one = [generate_reply(model, tokenizer, chat, GREEDY) for chat in CHATS]
    assert generate_replies(model, tokenizer, CHATS, GREEDY) == one_by_one
    assert generate_replies(model, tokenizer, CHATS, GREEDY, batch_size=2) == one_by_one
    assert len(set(one_by_one)) > 1  # the prompts lead to different replies: rows were not mixed up
    sampled = Sampling(max_new_tokens=10)
    assert generate_replies(model, tokenizer, CHATS, sampled, seed=5) == generate_replies(model, tokenizer, CHATS,
                                                                                          sampled, seed=5)


def test_greedy_and_sampled_replies_in_one_batch_equal_the_greedy_ones_and_repeat_with_the_seed(tiny):
    model, tokenizer = tiny
    sampling = Sampling(max_new_tokens=10)
    greedy, sampled = greedy_and_sampled(model, tokenizer, CHATS, sampling, seed=5)
    assert greedy == generate_replies(model, tokenizer, CHATS, Sampling(max_new_tokens=10, greedy=True))
    assert (greedy, sampled) == greedy_and_sampled(model, tokenizer, CHATS, sampling, seed=5)
    assert sampled != greedy and sampled != greedy_and_sampled(model, tokenizer, CHATS, sampling, seed=6)[1]


def test_each_new_token_is_one_forward_pass_on_the_cache(tiny):
    model, tokenizer = tiny
    widths = []
    hook = model.model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(
        kwargs["input_ids"].shape), with_kwargs=True)
    try:
        generate_replies(model, tokenizer, CHATS, Sampling(max_new_tokens=6, greedy=True))
    finally:
        hook.remove()
    assert widths[0][0] == len(CHATS) and widths[0][1] > 20
    assert all(shape == (len(CHATS), 1) for shape in widths[1:]) and len(widths) > 1


def test_a_model_prepared_for_training_generates_the_stock_models_tokens(tiny_qwen_1k_dir, tiny):
    stock, tokenizer = tiny
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_1k_dir)
    prepared = prepare_model(model, HardwareOptions(), AdapterOptions(), 512, torch.device("cpu"), torch.float32,
                             log=lambda *_: None)
    assert prepared.packed and prepared.selective  # the patches generation must not be changed by
    assert generate_replies(model, tokenizer, CHATS, GREEDY) == generate_replies(stock, tokenizer, CHATS, GREEDY)
    assert model.training  # generation leaves the model in the mode it found it in
