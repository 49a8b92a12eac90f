"""What a packed-attention backend is, and what every backend reads from a packed row's boundaries.

The backends (eager in packed_attention.py, attention_sdpa.py, attention_flex.py, attention_varlen.py) import
this module; packed_attention.py's `BACKENDS` table imports them, so no backend imports the table back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Backend:
    name: str                                   # its --attn_implementation value
    attend: Callable                            # a transformers attention function
    step_argument: Callable[[dict], object]     # packed inputs -> the 4D object passed as `attention_mask`
    host_keys: tuple[str, ...] = ()             # batch keys the attention function reads from its kwargs
    kernel: str = ""                            # what runs, for the `Model:` line

    @property
    def registered_name(self) -> str:
        return registered_name(self.name)


def registered_name(backend_name: str) -> str:
    """The name transformers knows a backend by (`model.config._attn_implementation`)."""
    return f"packed_{backend_name}"


def boundaries(inputs: dict) -> torch.Tensor:
    """The packed row's `cu_seq_lens_q` shaped [1, 1, 1, sequences + 1]: a 4D tensor transformers leaves alone."""
    return inputs["cu_seq_lens_q"].view(1, 1, 1, -1)


def sequence_ids(inputs: dict) -> torch.Tensor:
    """Which sequence each position of the row belongs to, computed on the device without a host read."""
    cu = inputs["cu_seq_lens_q"]
    positions = torch.arange(inputs["input_ids"].shape[1], device=cu.device, dtype=cu.dtype)
    return torch.searchsorted(cu[1:], positions, right=True)
