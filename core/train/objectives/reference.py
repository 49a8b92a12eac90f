"""The reference model of preference tuning, at no second copy in memory.

With --lora the reference is the model itself with its adapters disabled, evaluated beside each batch.
For a full fine-tune, the reference log-probability of every sequence is computed in one pass before
the first step and cached beside the tokenised data, keyed by the model's weights, the sequences and
the options that change the numbers; the output directory records the key (reference.json), so a
resumed run (whose model is no longer the reference) reads the same values.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager

import numpy as np
import torch

from core.errors import CheckpointError
from core.model.adapters import is_lora
from core.model.load import default_cache_dir
from core.run_files import REFERENCE_FILE
from core.train import distributed


@contextmanager
def reference_model(model):
    """Within the block, `model` computes as the reference (a LoRA model's adapters are off)."""
    if is_lora(model):
        with model.disable_adapter():
            yield
    else:
        yield


def weights_fingerprint(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sequences_fingerprint(arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def cached_reference(run, sets: dict[str, list[np.ndarray]], compute, log) -> dict[str, np.ndarray]:
    """The reference log-probabilities of each named set of sequences: read from the cache, or computed by
    `compute(name)` (every rank takes part), written (rank 0) and recorded in the output directory."""
    record = run.output_dir / REFERENCE_FILE
    if run.resumed_from is not None:
        if not record.is_file():
            raise CheckpointError(f"{record} is missing: the resumed run cannot know its reference model's "
                                  "log-probabilities; start afresh (--overwrite_output_dir)")
        key = json.loads(record.read_text())["key"]
    else:
        key = hashlib.sha256(json.dumps({
            "model": weights_fingerprint(run.prepared.model),
            "data": {name: sequences_fingerprint(arrays) for name, arrays in sets.items()},
            "precision": str(run.prepared.amp_dtype), "packed": run.prepared.packed,
            "selective": run.prepared.selective}, sort_keys=True).encode()).hexdigest()[:24]
    path = default_cache_dir(run.config.cache_dir) / "reference" / f"{key}.npz"
    cached = not distributed.any_across(run.dist, not path.is_file(), run.prepared.device)  # all ranks agree
    if cached:
        with np.load(path) as stored:
            values = {name: stored[name] for name in sets}
        log(f"Reference log-probabilities: read from {path}")
    elif run.resumed_from is not None:
        raise CheckpointError(f"the reference log-probabilities of this run ({path}) are no longer in the cache, "
                              "and a resumed model cannot recompute them; start afresh (--overwrite_output_dir)")
    else:
        replies = sum(len(arrays[-1]) - 1 for arrays in sets.values())
        log(f"Reference log-probabilities: each of the {replies} replies' log-probability under the model as it "
            "is before training (the reference the tuned model is measured against), in one pass without "
            f"gradients; cached in {path}")
        values = {name: compute(name) for name in sets}
        if run.dist.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{key}.partial.npz")
            np.savez(partial, **values)
            partial.replace(path)
    if run.dist.is_main:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"key": key, "cache": str(path)}) + "\n")
    distributed.barrier(run.dist)
    return values
