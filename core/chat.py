"""Chat with a model exactly as it was trained: the tokenizer's own template, generation prompt on."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 80) -> str:
    """Greedy reply to a conversation (a list of {"role", "content"}); stops at the end-of-turn token."""
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
