"""The names of the files a run writes, read by the loop, resume, the report and the tools after training."""

from __future__ import annotations

# In every checkpoint directory (checkpoint-N/, epoch_N/) beside the Hugging Face files:
STATE_FILE = "trainer_state.json"
TENSORS_FILE = "training_state.pt"
CONFIG_FILE = "train_config.json"
WEIGHTS_FILE = "model.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"  # a LoRA run's checkpoints hold the adapter instead

# In the output directory:
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
DATA_FILE = "data_summary.json"
SUMMARY_FILE = "summary.json"
REFERENCE_FILE = "reference.json"  # preference tuning: where the reference model's log-probabilities are cached
REPORT_FILE = "report.html"
SAMPLE_CALLS_FILE = "sample_calls.jsonl"  # --objective grpo: three held-out practice calls at each evaluation
LOCK_FILE = ".lock"  # holds the PID of the run writing the directory (core/train/output_dir.py)
BEST_MODEL = "best_model"
RUN_OUTPUTS = (RUN_FILE, CONFIG_FILE, METRICS_FILE, SAMPLES_FILE, SAMPLE_CALLS_FILE, DATA_FILE, SUMMARY_FILE,
               REFERENCE_FILE, BEST_MODEL, REPORT_FILE, "loss_curves.png", "training_curves.png",
               "preference_curves.png", "tensorboard")
