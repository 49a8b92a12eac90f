"""checkpoint-N/ is written in the background by the training loop: steps go on during a slow write, the "saved"
event comes once the directory is complete, and the end of the run waits for the write in flight."""

from __future__ import annotations

import json
import threading

from conftest import make_run

from core.run_files import STATE_FILE
from core.train import checkpoint as ckpt
from core.trainer import fit


def test_a_step_completes_while_a_checkpoint_is_being_written(tmp_path, tiny_qwen_1k_dir, cache_dir, monkeypatch):
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, batch_size=2, max_steps=5, save_steps=2, eval_steps=0,
                   log_steps=1)
    gate, original, out = threading.Event(), ckpt.save_checkpoint, tmp_path / "out"

    def slow_save(target, *args, **kwargs):
        if target.name == "checkpoint-2":
            assert gate.wait(60), "no step completed during the write"
        original(target, *args, **kwargs)
    monkeypatch.setattr(ckpt, "save_checkpoint", slow_save)
    seen = []

    def on_event(name, run, path=None, **details):
        if name == "step" and run.state.step == 3:  # checkpoint-2's write is held: this step ran beside it
            seen.append(("step 3", run.writer.busy, (out / "checkpoint-2").exists()))
            gate.set()
        if name == "saved":
            seen.append((path.name, run.state.step, (path / STATE_FILE).is_file()))
    run.on_event = on_event
    fit(run, log=lambda *_: None)
    assert seen[0] == ("step 3", True, False)  # training went on; nothing of checkpoint-2 visible yet
    (name, step, complete), *rest = seen[1:]
    assert name == "checkpoint-2" and step >= 3 and complete  # announced once complete, at a later step boundary
    assert [(n, c) for n, _, c in rest] == [("checkpoint-4", True), ("checkpoint-5", True)]
    saved = json.loads((out / "checkpoint-2" / STATE_FILE).read_text())["state"]
    assert saved["step"] == 2  # the state as it was when the save began, not as trained since
    assert json.loads((out / "checkpoint-5" / STATE_FILE).read_text())["state"]["step"] == 5


def test_tied_weights_written_in_the_background_give_the_models_own_file(tmp_path):
    """The writer copies a weight held under two names (tied embeddings) once, so save_pretrained still sees them
    tied and writes the bytes it writes from the model itself."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from core.train.checkpoint_writer import BackgroundWriter
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    model.save_pretrained(tmp_path / "direct", safe_serialization=True)
    with BackgroundWriter() as writer:
        writer.submit(lambda state: model.save_pretrained(tmp_path / "background", safe_serialization=True,
                                                          state_dict=state), model.state_dict(keep_vars=True))
    assert (tmp_path / "background" / "model.safetensors").read_bytes() == \
        (tmp_path / "direct" / "model.safetensors").read_bytes()
