"""Fine-tune a chat model into a roleplay chatbot.

  python train.py --data_path data/training.jsonl [options]      train
  python train.py inspect --data_path data/training.jsonl          check the data and see what is trained
Every option is also a key of `--config file.yaml`; flags on the command line override the file.
"""

from __future__ import annotations

import shlex
import sys


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Imports are deferred so that `--help` and bad options answer at once.
    from core.chat_format import TemplateError
    from core.checkpoint import CheckpointError
    from core.config import ConfigError, TrainConfig, parse_args
    from core.dataset import DataError
    from core.models import ModelLoadError

    expected = (ConfigError, DataError, ModelLoadError, TemplateError, CheckpointError)
    if argv[:1] == ["inspect"]:
        from core.inspect import InspectConfig, inspect
        try:
            return inspect(parse_args(argv[1:], InspectConfig, prog="train.py inspect",
                                      description="Validate a data file and show what would be trained."))
        except expected as err:
            return _fail(str(err))

    from core.trainer import TrainingStopped, fit, setup
    try:
        config = parse_args(argv, TrainConfig, description=__doc__.split("\n")[1])
        run = setup(config)
        summary = fit(run)
    except expected as err:
        return _fail(str(err))
    except TrainingStopped as err:
        if err.checkpoint is not None:
            resume = [a for a in argv if not a.startswith("--resume_from_checkpoint=")]
            if "--resume_from_checkpoint" in resume:
                i = resume.index("--resume_from_checkpoint")
                del resume[i:i + 2]
            resume += ["--resume_from_checkpoint", str(err.checkpoint)]
            print(f"\n{err}\nTo resume: python train.py {shlex.join(resume)}", file=sys.stderr)
            return err.exit_code
        return _fail(str(err), err.exit_code)
    print(f"Done: {summary['steps']} steps ({summary['stopped']}), best validation loss "
          f"{summary['best_eval_loss'] if summary['best_eval_loss'] is not None else 'n/a'}; "
          f"model in {config.output_dir}/best_model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
