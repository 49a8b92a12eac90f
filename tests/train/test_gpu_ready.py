"""GPU readiness proven on the CPU: the CUDA code path (no lean CPU layers) reads nothing back from the device,
makes one attention call per layer, compiles to one graph, runs its head in the autocast dtype, and every
attention backend that runs here gives what running the sequences one by one gives."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

from core.config import AdapterOptions, HardwareOptions
from core.data.batching import LENGTHS, collate, pack
from core.errors import ConfigError
from core.model.patches import packed_attention
from core.model.patches.selective_head import summed_loss, summed_loss_full_logits
from core.model.prepare import PATCHES, Prepared, SummedLoss, Target

# aten ops that need a device value on the host: each one waits for the GPU
SYNCING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive",
               "repeat_interleave", "equal", "is_nonzero", "_assert_async", "masked_scatter", "item"}
HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


class Random:
    """Sequences as `core.data.tokenized.TokenizedData` serves them: random ids, the second half trained."""

    def __init__(self, lengths, vocab: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.lengths = np.asarray(lengths)
        self.ids = [rng.integers(0, vocab, size=n) for n in lengths]

    def sequence(self, i):
        ids = self.ids[i]
        return ids, np.arange(len(ids)) >= len(ids) // 2


def packed(n: int, vocab: int, seed: int = 0, low: int = 5, high: int = 40):
    lengths = np.random.default_rng(seed).integers(low, high, size=n)
    data = Random(lengths, vocab, seed)
    return data, pack(data, np.arange(n))


class Counter(TorchDispatchMode):
    """Counts aten ops by name (overload stripped) while active."""

    def __init__(self):
        super().__init__()
        self.ops: dict[str, int] = {}
        self.matmul_dtypes: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        self.ops[name] = self.ops.get(name, 0) + 1
        if name in ("mm", "addmm", "bmm", "baddbmm"):
            mats = [a for a in args if isinstance(a, torch.Tensor) and a.ndim >= 2][-2:]
            if mats[0].shape[-1] > 1:  # inner dimension 1: the rotary frequencies' outer product, not a weight
                self.matmul_dtypes.append(tuple(m.dtype for m in mats))
        return func(*args, **(kwargs or {}))

    def count(self, *fragments, exclude: str = "\0") -> int:
        return sum(n for name, n in self.ops.items() if any(f in name for f in fragments) and exclude not in name)

    @property
    def syncs(self) -> int:
        return sum(self.ops.get(name, 0) for name in SYNCING_OPS)


@pytest.fixture
def host_reads(monkeypatch):
    """Python-level reads of a tensor's values made while `reads['on']` is set, and the project's own blocking
    `.to(device)` calls (transformers' only one here, the rotary buffer's `.to(x.device)`, stays on the device)."""
    reads = {"on": False, "calls": []}
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def patched(self, *args, _original=original, _name=name, **kwargs):
            if reads["on"]:
                reads["calls"].append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, patched)
    original_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        device = kwargs.get("device", next((a for a in args if isinstance(a, (str, torch.device))), None))
        caller = sys._getframe(1).f_code.co_filename
        if reads["on"] and device is not None and not kwargs.get("non_blocking", False) and "/core/" in caller:
            reads["calls"].append(f"to({device})")
        return original_to(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "to", to)
    return reads


def cuda_path(model_dir, backend: str = "sdpa", compile: bool = False) -> Prepared:
    """`prepare_model`'s rows as on a GPU (every row but the CPU's lean layers), on the CPU, `backend` forced."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    hardware = HardwareOptions(attn_implementation=backend)
    prepared = Prepared(model, SummedLoss(model, False, hardware.head_chunk_rows), torch.device("cpu"), torch.float32)
    target = Target(prepared, hardware, AdapterOptions(), 512, None)
    for patch in PATCHES:
        if patch.name not in ("lean layers", "compile") and patch.why_not(target) is None:
            prepared.patches.append(patch.apply(target))
    assert prepared.packed and prepared.selective and model.config._attn_implementation == f"packed_{backend}"
    return prepared


def test_a_step_of_the_cuda_path_reads_nothing_back_from_the_device(tiny_qwen_1k_dir, host_reads):
    prepared = cuda_path(tiny_qwen_1k_dir)
    _, (inputs, labels) = packed(8, prepared.model.config.vocab_size)
    counter = Counter()
    host_reads["on"] = True
    with counter:
        loss = prepared.loss_sum(inputs, labels)
        loss.backward()
    host_reads["on"] = False
    assert counter.syncs == 0, {k: v for k, v in counter.ops.items() if k in SYNCING_OPS}
    assert host_reads["calls"] == []
    # the counter sees a sync where there is one: the stand-in path that finds the trained rows on the device
    prepared.model.zero_grad(set_to_none=True)
    without_rows = {k: v for k, v in inputs.items() if not k.startswith("loss_")}
    with Counter() as counter:
        prepared.loss_sum(without_rows, labels).backward()
    assert counter.ops.get("nonzero") == 1


@pytest.mark.parametrize("sequences", [8, 20])
def test_one_attention_call_per_layer_forward_and_backward(tiny_qwen_1k_dir, sequences, monkeypatch):
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    layers = 2
    for backend, calls_per_layer in (("sdpa", 1), ("eager", sequences)):
        prepared = cuda_path(tiny_qwen_1k_dir, backend)
        name, masks_built = prepared.model.config._attn_implementation, []
        mask_function = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[name]
        monkeypatch.setitem(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, name,
                            lambda *a, _built=masks_built, _mask=mask_function, **k: _built.append(1) or _mask(*a, **k))
        _, (inputs, labels) = packed(sequences, prepared.model.config.vocab_size)
        with Counter() as counter:
            prepared.loss_sum(inputs, labels).backward()
        assert counter.count("scaled_dot_product", exclude="backward") == layers * calls_per_layer, counter.ops
        assert counter.count("scaled_dot_product") - layers * calls_per_layer == layers * calls_per_layer
        assert masks_built == []  # transformers built no mask: the step's own argument went through untouched
        with torch.no_grad():  # generation under the same name still gets its causal mask
            prepared.model(input_ids=inputs["input_ids"][:, :7], attention_mask=torch.ones(1, 7, dtype=torch.long))
        assert masks_built == [1]


def reference(model_dir, data, n: int):
    """Each sequence alone through a stock SDPA model: concatenated logits, summed loss, gradients."""
    stock = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    logits, total = [], 0.0
    for i in range(n):
        inputs, labels = collate(data, np.array([i]), 0)
        with torch.no_grad():
            logits.append(stock(input_ids=inputs["input_ids"]).logits[0])
        total = total + summed_loss_full_logits(stock, inputs, labels)
    total.backward()
    return torch.cat(logits), total.item(), {k: p.grad for k, p in stock.named_parameters()}


@pytest.mark.parametrize("backend", ["sdpa", "eager", "flex"])
def test_every_cpu_backend_equals_the_sequences_one_by_one(tiny_qwen_1k_dir, backend):
    n = 6
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_1k_dir, dtype=torch.float32)
    data, (inputs, labels) = packed(n, model.config.vocab_size, seed=1)
    want_logits, want_loss, want_grads = reference(tiny_qwen_1k_dir, data, n)
    chosen = packed_attention.backend(backend)
    model.set_attn_implementation(packed_attention.register(chosen))
    step = packed_attention.step_inputs(chosen, inputs)
    with torch.no_grad():
        logits = model(**{k: v for k, v in step.items() if not k.startswith("loss_")}).logits[0]
    assert (logits - want_logits).abs().max() < 1e-4
    if backend == "flex":
        return  # flex attention's backward has no CPU kernel
    loss = summed_loss(model, step, labels)
    loss.backward()
    assert abs(loss.item() - want_loss) / want_loss < 1e-5
    for name, p in model.named_parameters():
        assert (p.grad - want_grads[name]).norm() / want_grads[name].norm() < 1e-5, name


@pytest.mark.slow(seconds=14)
def test_forward_and_loss_compile_to_one_graph_for_batches_of_any_size(tiny_qwen_1k_dir):
    prepared = cuda_path(tiny_qwen_1k_dir, "sdpa")
    vocab = prepared.model.config.vocab_size
    _, (inputs, labels) = packed(8, vocab)
    explained = torch._dynamo.explain(prepared.loss_module)(inputs, labels)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons

    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(prepared.loss_module, backend=counter, dynamic=True)
    for i, n in enumerate(np.linspace(3, 60, 10).astype(int)):
        _, (inputs, labels) = packed(int(n), vocab, seed=i, high=20)
        compiled(inputs, labels).backward()
    assert counter.frame_count <= 2, counter.frame_count

    torch._dynamo.reset()
    prepared.model.zero_grad(set_to_none=True)
    full = torch.compile(prepared.loss_module, backend="aot_eager", fullgraph=True, dynamic=True)
    _, (inputs, labels) = packed(5, vocab, seed=3)
    loss = full(inputs, labels)
    loss.backward()
    eager = prepared.loss_module(inputs, labels)
    assert abs(loss.item() - eager.item()) / eager.item() < 1e-5
    torch._dynamo.reset()


def test_the_head_runs_in_bf16_under_autocast_and_the_loss_stays_close(tiny_qwen_1k_dir):
    prepared = cuda_path(tiny_qwen_1k_dir, "sdpa")
    _, (inputs, labels) = packed(8, prepared.model.config.vocab_size)
    fp32 = prepared.loss_module(inputs, labels).item()
    with Counter() as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = prepared.loss_module(inputs, labels)
        loss.backward()
    assert loss.dtype == torch.float32 and abs(loss.item() - fp32) / fp32 < 1e-2
    assert len(counter.matmul_dtypes) > 20
    assert set(counter.matmul_dtypes) == {(torch.bfloat16, torch.bfloat16)}, counter.matmul_dtypes


def test_the_varlen_path_traces_forward_and_backward_on_meta():
    from core.model.patches.attention_varlen import make_attention, torch_varlen
    attend = make_attention(torch_varlen)
    tokens, heads, kv_heads, dim = 100, 8, 2, 64
    query = torch.empty(1, heads, tokens, dim, device="meta", dtype=torch.bfloat16, requires_grad=True)
    key, value = (torch.empty(1, kv_heads, tokens, dim, device="meta", dtype=torch.bfloat16, requires_grad=True)
                  for _ in range(2))
    cu = torch.tensor([0, 30, 100], dtype=torch.int32, device="meta")
    out, _ = attend(None, query, key, value, cu.view(1, 1, 1, -1), scaling=dim ** -0.5, max_length_q=70)
    assert out.shape == (1, tokens, heads, dim)
    out.sum().backward()
    assert query.grad.shape == query.shape and key.grad.shape == key.shape and value.grad.shape == value.shape


def test_backends_are_chosen_by_device_and_refused_where_they_cannot_train(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # As in a fresh process, whatever other tests imported: varlen_attn's module not yet loaded.
    monkeypatch.delattr(torch.nn.attention, "varlen", raising=False)
    monkeypatch.delitem(sys.modules, "torch.nn.attention.varlen", raising=False)
    assert packed_attention.choose("auto", cpu, compile=False)[0] == packed_attention.CPU_DEFAULT
    assert packed_attention.choose("auto", cpu, compile=True)[0] == "sdpa"
    assert packed_attention.choose("auto", cuda, compile=False)[0] == "varlen"  # this torch has varlen_attn
    with pytest.raises(ConfigError, match="varlen needs a CUDA GPU"):
        packed_attention.choose("varlen", cpu, compile=False)
    with pytest.raises(ConfigError, match="flex trains on CUDA only"):
        packed_attention.choose("flex", cpu, compile=False)


def test_cuda_runs_fill_batches_to_a_token_budget_unless_told_otherwise():
    from core.config import CUDA_BATCH_TOKENS, TrainConfig, default_batch_tokens
    assert default_batch_tokens(-1, "cuda", 512) == CUDA_BATCH_TOKENS
    assert default_batch_tokens(-1, "cuda", 2 * CUDA_BATCH_TOKENS) == 2 * CUDA_BATCH_TOKENS  # every sequence fits
    assert default_batch_tokens(-1, "cpu", 512) == 0 and default_batch_tokens(-1, "mps", 512) == 0
    assert default_batch_tokens(0, "cuda", 512) == 0 and default_batch_tokens(4096, "cuda", 512) == 4096
    TrainConfig(data_path="x.jsonl").validate()  # -1, the default, is not "a budget below --max_length"
    with pytest.raises(ConfigError, match="--batch_tokens"):
        TrainConfig(data_path="x.jsonl", batch_tokens=100).validate()


def test_packed_batches_carry_their_lengths_and_loss_positions_from_the_host():
    data, (inputs, labels) = packed(4, 1000, seed=2)
    assert inputs[LENGTHS] == tuple(len(i) for i in data.ids)
    shifted = labels[:, 1:]
    rows = (shifted != -100).nonzero()
    assert inputs["loss_rows"].tolist() == (rows[:, 0] * labels.shape[1] + rows[:, 1]).tolist()
    assert inputs["loss_targets"].tolist() == shifted[shifted != -100].tolist()


# The background checkpoint writer ----------------------------------------------------------------

def write_files(target, state, pause: float = 0.0, started=None, gate=None):
    """An atomic checkpoint of `state`: one file per entry, `done.json` last (as trainer_state.json marks one)."""
    from core.utils import atomic_directory
    with atomic_directory(target) as tmp:
        for name, value in state.items():
            if started is not None:
                started.set()
            if gate is not None:
                assert gate.wait(30)
            torch.save(value, tmp / f"{name}.pt")
            time.sleep(pause)
        (tmp / "done.json").write_text(json.dumps(sorted(state)))


def test_training_steps_while_a_checkpoint_is_written_and_the_write_keeps_the_state_it_was_given(tmp_path):
    from core.train.checkpoint_writer import BackgroundWriter
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    started, gate, order = threading.Event(), threading.Event(), []
    with BackgroundWriter() as writer:
        writer.submit(lambda s: (write_files(tmp_path / "checkpoint-1", s, started=started, gate=gate),
                                 order.append(1)), {"weights": model.state_dict()})
        assert started.wait(30) and writer.busy
        model(torch.randn(3, 8)).square().sum().backward()  # a whole step while the write is held up
        optimizer.step()
        assert writer.busy and not (tmp_path / "checkpoint-1").exists()
        second = threading.Thread(target=writer.submit, args=(
            lambda s: (write_files(tmp_path / "checkpoint-2", s), order.append(2)), {"weights": model.state_dict()}))
        second.start()
        time.sleep(0.3)
        assert order == []  # at most one write in flight: the second waits for the first
        gate.set()
        second.join(30)
    assert order == [1, 2]
    saved = torch.load(tmp_path / "checkpoint-1" / "weights.pt", weights_only=True)
    assert all(torch.equal(saved[k], before[k]) for k in before)  # the state as submitted, not as trained since
    assert not torch.equal(saved["weight"], model.weight.detach())
    assert torch.equal(torch.load(tmp_path / "checkpoint-2" / "weights.pt", weights_only=True)["weight"],
                       model.weight.detach())


def test_a_failed_background_write_is_raised_in_the_training_thread(tmp_path):
    from core.errors import CheckpointError
    from core.train.checkpoint_writer import BackgroundWriter

    def fail(state):
        raise CheckpointError("could not write checkpoint-1: No space left on device; earlier checkpoints are intact")
    writer = BackgroundWriter()
    writer.submit(fail, {"x": torch.ones(2)})
    with pytest.raises(CheckpointError, match="No space left on device"):
        writer.wait()


# The child scripts import this module and conftest: both folders go on their path.
TEST_DIRS = [str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

SIGTERM_CHILD = """
import json, signal, sys, threading, time
import torch
sys.path[:0] = [{root!r}, *{tests!r}]
from test_gpu_ready import write_files
from core.train.checkpoint_writer import BackgroundWriter
from core.train.stop_signal import StopSignal
out, handled = __import__("pathlib").Path(sys.argv[1]), sys.argv[2] == "handled"
state = {{f"part{{i}}": torch.full((1000,), float(i)) for i in range(6)}}
with StopSignal() if handled else __import__("contextlib").nullcontext() as stop, BackgroundWriter() as writer:
    writer.submit(lambda s: write_files(out / "checkpoint-1", s), state)
    writer.wait()
    started = threading.Event()
    writer.submit(lambda s: write_files(out / "checkpoint-2", s, pause=0.5, started=started), state)
    started.wait()
    print("writing", flush=True)
    while stop is None or stop.received is None:
        time.sleep(0.05)
print("stopped", flush=True)
"""


@pytest.mark.parametrize("handled", [False, True])
def test_sigterm_during_a_background_write_leaves_whole_checkpoints_only(tmp_path, handled):
    """Killed mid-write (no handler) the new checkpoint is absent; with the training loop's handler the stop waits
    for it and it is complete. The previous one is intact either way, and nothing partial is ever visible."""
    script = tmp_path / "child.py"
    script.write_text(SIGTERM_CHILD.format(root=str(ROOT), tests=TEST_DIRS))
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path), "handled" if handled else "plain"],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGTERM)
    child.wait(60)
    assert json.loads((tmp_path / "checkpoint-1" / "done.json").read_text()) == [f"part{i}" for i in range(6)]
    if handled:
        assert child.returncode == 0 and child.stdout.read().splitlines()[-1] == "stopped"
        assert json.loads((tmp_path / "checkpoint-2" / "done.json").read_text()) == [f"part{i}" for i in range(6)]
    else:
        assert child.returncode == -signal.SIGTERM and not (tmp_path / "checkpoint-2").exists()
        assert [p.name for p in tmp_path.glob(".checkpoint-2.tmp-*")]  # the unfinished write, hidden


def test_an_attention_choice_for_padded_batches_is_said_to_be_unused(tmp_path, tiny_qwen_1k_dir, cache_dir):
    from conftest import make_run
    messages = []
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, log=messages.append, packing=False,
                   attn_implementation="sdpa")
    assert not run.prepared.packed and run.prepared.loss_module.attention is None
    assert "Note: --attn_implementation sdpa is unused: it chooses the attention of packed rows, and these batches " \
           "are padded" in messages
    messages.clear()
    make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, log=messages.append, output_dir=str(tmp_path / "packed"))
    model_line = next(m for m in messages if m.startswith("Model: "))
    assert f"packed attention: {packed_attention.CPU_DEFAULT}, causal SDPA per sequence (auto on cpu" in model_line


# Liger's kernels -----------------------------------------------------------------------------------

LIGER_CHILD = """
import json, os, sys, time
import torch
sys.path[:0] = [{root!r}, *{tests!r}]
from transformers import AutoModelForCausalLM
from test_gpu_ready import packed
from core.model.patches.liger import apply_liger, summed_cross_entropy
from core.model.patches.selective_head import summed_loss
assert os.environ["TRITON_INTERPRET"] == "1"
model = AutoModelForCausalLM.from_pretrained({model_dir!r}, dtype=torch.float32)
_, (inputs, labels) = packed(6, model.config.vocab_size)

def loss_and_gradients(fused_head):
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    loss = summed_loss(model, inputs, labels, fused_head=fused_head)
    loss.backward()
    return loss.item(), {{n: p.grad.clone() for n, p in model.named_parameters()}}, time.perf_counter() - started

want, want_grads, _ = loss_and_gradients(None)
got, grads, seconds = loss_and_gradients(summed_cross_entropy)
apply_liger(model)  # the row's module swaps (Liger's norm kernel itself does not run under the interpreter)
layer = model.model.layers[0]
print(json.dumps({{"loss": [want, got], "seconds": seconds,
                  "forwards": [m.forward.__func__.__qualname__ for m in (layer.mlp, layer.input_layernorm)],
                  "gradients": max(((grads[n] - g).norm() / g.norm()).item() for n, g in want_grads.items())}}))
"""


def test_liger_fused_cross_entropy_equals_the_selective_head_under_the_triton_interpreter(tmp_path, tiny_qwen_1k_dir):
    """Liger's kernel on CPU tensors through Triton's interpreter (set before triton imports: a child process)."""
    if importlib.util.find_spec("liger_kernel") is None:
        pytest.skip("liger_kernel is not installed (pip install -r requirements-gpu.txt; triton is too large for CI)")
    script = tmp_path / "liger_child.py"
    script.write_text(LIGER_CHILD.format(root=str(ROOT), tests=TEST_DIRS, model_dir=str(tiny_qwen_1k_dir)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=240,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    want, got = result["loss"]
    assert abs(got - want) / want < 1e-4 and result["gradients"] < 1e-4, result
    assert result["forwards"] == ["LigerSwiGLUMLP.forward", "LigerRMSNorm.forward"], result


def test_the_liger_row_is_skipped_with_its_reason_off_cuda_and_refused_when_required(tiny_qwen_1k_dir):
    from core.model.prepare import prepare_model
    messages = []

    def prepared(liger: str) -> Prepared:
        model = AutoModelForCausalLM.from_pretrained(tiny_qwen_1k_dir, dtype=torch.float32)
        return prepare_model(model, HardwareOptions(liger=liger), AdapterOptions(), 512, torch.device("cpu"),
                             torch.float32, log=messages.append)
    auto = prepared("auto")
    assert auto.skipped["Liger kernels"] == "not asked for (--liger auto: Liger's kernels need CUDA (the device is " \
                                           "cpu))"
    assert auto.loss_module.fused_head is None and not any("Liger" in m for m in messages)
    assert prepared("off").skipped["Liger kernels"] == "not asked for (--liger off)"
    with pytest.raises(ConfigError, match=r"^--liger on cannot run here: Liger's kernels need CUDA \(the device is "
                                          r"cpu\); use --liger auto or off$"):
        prepared("on")


# The prepared GPU benchmark, on the CPU ------------------------------------------------------------

@pytest.mark.slow(seconds=19)
@pytest.mark.timeout(240)
def test_the_gpu_benchmark_smoke_run_gives_every_arm_its_figures():
    """`bash bench/gpu.sh --smoke`: every arm ends with a line of real figures, not just a zero exit code."""
    done = subprocess.run(["bash", "bench/gpu.sh", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=230)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {line["arm"]: line for line in map(json.loads, re.findall(r'^\{"arm".*$', done.stdout, flags=re.M))}
    assert list(lines) == ["matmul", "project_b4", "project_16k", "project_32k", "project_64k", "trl_shipped",
                           "trl_best", "parity", "qlora", "checkpoint", "total"]
    assert lines.pop("total")["failed"] == [] and lines["matmul"]["gflops"] > 0
    trl_arms = ("trl_shipped", "trl_best", "parity")
    if importlib.util.find_spec("trl") is None:  # in the dev extra; without it the TRL arms say they are skipped
        assert all("skipped" in lines.pop(arm) for arm in trl_arms)
    assert not [arm for arm, line in lines.items() if "error" in line or "skipped" in line], lines
    for arm in ("project_b4", "project_16k", "project_32k", "project_64k", "qlora", *trl_arms[:2]):
        if arm in lines:
            assert lines[arm]["tokens/s"] > 0, lines[arm]
    for arm in ("project_b4", "project_16k", "project_32k", "project_64k"):
        assert lines[arm]["syncs_per_step"] is not None and lines[arm]["steps"] >= 2, lines[arm]
    if "parity" in lines:
        parity = lines["parity"]
        assert parity["same_input_ids"] and parity["project_trained"] == parity["trl_trained"] > 0
        assert abs(parity["project_loss"] - parity["trl_loss"]) / parity["trl_loss"] < 1e-4, parity
    checkpoint = lines["checkpoint"]
    assert checkpoint["round_trip_equal"] and checkpoint["tensors_read_back"] > 0, checkpoint
