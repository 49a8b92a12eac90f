"""The last decoder layer's MLP runs only at the positions whose loss is taken.

Every layer but the last must run at every position, since later positions attend to earlier ones.
The last layer's attention must too (its keys and values come from every position), but after it
each position is on its own: its residual stream, post-attention norm and MLP feed only its own
output, which the selective loss (`selective_head.py`) throws away unless the position predicts a
trained token. Running that tail on the trained rows alone saves about half of the last layer's work on
typical SFT data (the MLP is three quarters of a layer, and about three quarters of the positions
are prompt): about 1.5% of a step for SmolLM2-135M, whose 30 layers are nearly all of its work.

`trim_last_layer(model)` gives the last layer a forward that takes `trained_rows` (flat indices into
the batch's `[batch * length]` positions, as `selective_head.trained_positions` returns them) and returns
the hidden states of those rows only, as a `[1, rows, hidden]` batch; without `trained_rows` it is
the stock forward. The keyword travels to it through the model's forward like transformers'
FlashAttention keywords; layers and attention functions that do not know it ignore it.
"""

from __future__ import annotations

import types

import torch

ROWS = "trained_rows"
# Pre-norm decoder layers computing h = x + attn(norm1(x)); out = h + mlp(norm2(h)), nothing else.
PRE_NORM_LAYERS = {"LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer", "MistralDecoderLayer"}


def last_decoder_layer(model) -> torch.nn.Module | None:
    """The decoder's last layer, or None where the model has no `layers` list of the configured depth."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    n_layers = model.config.get_text_config().num_hidden_layers
    return layers[n_layers - 1] if layers is not None and len(layers) >= n_layers > 0 else None


def _forward_on_trained_rows(self, hidden_states: torch.Tensor, trained_rows: torch.Tensor | None = None,
                             **kwargs) -> torch.Tensor:
    if trained_rows is None:
        return type(self).forward(self, hidden_states, **kwargs)
    attended, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
    rows = (hidden_states + attended).reshape(-1, hidden_states.shape[-1]).index_select(0, trained_rows)
    return (rows + self.mlp(self.post_attention_layernorm(rows)))[None]


def trim_last_layer(model) -> bool:
    """Let the last decoder layer run its MLP on trained rows only; False if its layer type is not recognised."""
    layer = last_decoder_layer(model)
    if layer is None or type(layer).__name__ not in PRE_NORM_LAYERS:
        return False
    layer.forward = types.MethodType(_forward_on_trained_rows, layer)
    return True


def is_trimmed(model) -> bool:
    layer = last_decoder_layer(model)
    return layer is not None and getattr(layer.forward, "__func__", None) is _forward_on_trained_rows
