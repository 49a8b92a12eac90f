"""CPU timing of the packed-attention backends that train here, against the code before them (the CPU default's source).

  python bench/attention_cpu.py [--model smollm2|smollm2-2layer] [--repeats 3]

Forward + selective loss + backward of one packed row of 8 and of 20 sequences (lengths 64..400, seeded)
through SmolLM2-135M (or a random 2-layer model of its width, whose layers weigh attention against the MLP
the same way) with the CPU's lean layers, per backend: `before` is the per-sequence path as it was
(lengths read from the device in every layer, a [T, T] mask built by transformers and ignored), `eager`
the same loop on the host's lengths, `sdpa` one call per layer with a block-diagonal mask. Prints one
JSON line per (backend, sequences): the median seconds over the repeats after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def before_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, cu_seq_lens_q=None,
                     **kwargs):
    """The per-sequence path as it was before the backends: its lengths read back from the device per layer."""
    lengths = cu_seq_lens_q.diff().tolist()
    gqa = query.shape[1] != key.shape[1]
    parts = [torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                                              enable_gqa=gqa).transpose(1, 2)
             for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))]
    return torch.cat(parts, dim=1), None


def packed_batch(n: int, vocab: int, seed: int) -> tuple[dict, torch.Tensor]:
    """A packed row as core.data.batching.pack makes it, from random sequences with a trained second half."""
    from core.data.batching import pack
    rng = np.random.default_rng(seed)
    lengths = rng.integers(64, 400, size=n)

    class Sequences:
        def sequence(self, i):
            ids = rng.integers(0, vocab, size=lengths[i])
            trained = np.arange(lengths[i]) >= lengths[i] // 2
            return ids, trained
    return pack(Sequences(), np.arange(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("smollm2", "smollm2-2layer"), default="smollm2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sequences", default="8,20")
    args = parser.parse_args()
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from core.data.batching import LENGTHS
    from core.model.load import converted_gguf_dir, default_cache_dir, resolve_model_path
    from core.model.patches import packed_attention
    from core.model.patches.lean_layers import make_lean
    from core.model.patches.selective_head import summed_loss

    if args.model == "smollm2":
        model_dir = converted_gguf_dir(Path(resolve_model_path("smollm2")), default_cache_dir(""))
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                             num_hidden_layers=2, num_attention_heads=9, num_key_value_heads=3,
                                             tie_word_embeddings=True))
    make_lean(model)
    model.train()
    AttentionInterface.register("packed_before", before_attention)
    AttentionMaskInterface.register("packed_before", sdpa_mask)
    for n in map(int, args.sequences.split(",")):
        inputs, labels = packed_batch(n, model.config.vocab_size, seed=n)
        for name in ("before", "eager", "sdpa"):
            if name == "before":
                model.set_attn_implementation("packed_before")
                step = {k: v for k, v in inputs.items() if k != LENGTHS}
            else:
                chosen = packed_attention.backend(name)
                model.set_attn_implementation(packed_attention.register(chosen))
                step = packed_attention.step_inputs(chosen, inputs)
            times = []
            for i in range(args.repeats + 1):
                started = time.perf_counter()
                summed_loss(model, step, labels).backward()
                model.zero_grad(set_to_none=True)
                if i:
                    times.append(time.perf_counter() - started)
            print(json.dumps({"backend": name, "sequences": n, "tokens": int(inputs["input_ids"].shape[1]),
                              "median_s": round(statistics.median(times), 3),
                              "all_s": [round(t, 3) for t in times]}), flush=True)


if __name__ == "__main__":
    main()
