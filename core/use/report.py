"""The run at a glance: a self-contained `report.html` in the output directory, built from what the run wrote.

It reads metrics.jsonl, samples.jsonl, summary.json, data_summary.json and train_config.json, draws the
loss curves (also saved as loss_curves.png), the learning rate and tokens per second
(training_curves.png), shows --lr auto's search (each rate's validation loss) and, for preference tuning,
the reward accuracy and margin
(preference_curves.png) with matplotlib, and embeds them as data URIs: the page needs no network and no
other file. The roleplay metrics (core/data/roleplay_metrics.py) of the base and fine-tuned samples
stand side by side, with how each is computed; the table compares, per validation prompt, the
reference reply, the base model's reply (step 0) and the fine-tuned model's (the best evaluation's step, else the last).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from core.data.roleplay_metrics import METRIC_NOTES
from core.run_files import CONFIG_FILE, DATA_FILE, METRICS_FILE, REPORT_FILE, SAMPLES_FILE, SUMMARY_FILE


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_report(output_dir: Path) -> Path:
    """Write report.html (and the two PNGs) from the files in `output_dir`; return its path."""
    metrics = read_jsonl(output_dir / METRICS_FILE)
    summary = read_json(output_dir / SUMMARY_FILE)
    samples = read_jsonl(output_dir / SAMPLES_FILE)
    options = read_json(output_dir / CONFIG_FILE)
    plan = options.pop("plan", {})  # what the run resolved from its options (core/train/plan.py)
    loss_png = plot_losses(metrics, output_dir / "loss_curves.png")
    training_png = plot_training(metrics, output_dir / "training_curves.png")
    preference_png = plot_preferences(metrics, output_dir / "preference_curves.png")
    final = [(f"final {name}", next((m[key] for m in reversed(metrics) if m["type"] == kind), None))
             for name, kind, key in (("training loss", "train", "loss"), ("validation loss", "eval", "eval_loss"))]
    sections = [
        "<h2>Outcome</h2>" + table([(k.replace("_", " "), v) for k, v in summary.items()] + final),
        "<h2>Loss</h2>" + image(loss_png),
        "<h2>Learning rate and speed</h2>" + image(training_png),
        *lr_search_section(metrics),
        *(["<h2>Preferences: reward accuracy and margin</h2>" + image(preference_png)] if preference_png else []),
        "<h2>Data</h2>" + table(data_rows(read_json(output_dir / DATA_FILE))),
        "<h2>Roleplay metrics: base against fine-tuned</h2>" + metrics_table(samples, summary),
        "<h2>Replies to validation prompts: base against fine-tuned</h2>"
        + comparison(samples, summary.get("best_step")),
        "<h2>Plan</h2>" + table((k.replace("_", " "), v) for k, v in plan.items()),
        "<h2>Options</h2><details><summary>train_config.json</summary>" + table(options.items()) + "</details>",
    ]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(output_dir.name)}: training report"
            f"</title><style>{STYLE}</style></head><body><h1>Training report: {esc(str(output_dir))}</h1>"
            + "".join(sections) + "</body></html>")
    path = output_dir / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path


def esc(value) -> str:
    return html.escape(str(value))


def table(rows) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def image(path: Path | None) -> str:
    if path is None:
        return "<p>No logged steps yet.</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{esc(path.stem)}' src='data:image/png;base64,{data}'>"


def data_rows(stats: dict) -> list[tuple[str, object]]:
    keys = ("records", "sequences", "train_records", "eval_records", "tokens", "trained_tokens", "over_max_length",
            "dropped_tokens", "replies_cut", "duplicate_records", "records_in_both_splits")
    return [(k.replace("_", " "), stats[k]) for k in keys if k in stats]


def base_and_tuned(samples: list[dict], best_step: int | None) -> tuple[dict | None, dict | None]:
    """samples.jsonl's lines for the base model (step 0) and the fine-tuned one (the best step, else the last)."""
    base = next((s for s in samples if s["step"] == 0), None)
    tuned = next((s for s in samples if s["step"] == best_step), None) or (samples[-1] if samples else None)
    return base, tuned


def metrics_table(samples: list[dict], summary: dict) -> str:
    """The roleplay metrics of the base and fine-tuned replies, what each means, and what the samples cost."""
    base, tuned = base_and_tuned(samples, summary.get("best_step"))
    if base is None or tuned is None or tuned is base or "metrics" not in base:
        return "<p>No metrics: the run had no validation prompts, or wrote its samples before metrics existed.</p>"
    head = (f"<tr><th>metric</th><th>base (greedy)</th><th>fine-tuned, step {tuned['step']} (greedy)</th>"
            "<th>base (sampled)</th><th>fine-tuned (sampled)</th><th>how it is computed</th></tr>")
    names = [n for n in METRIC_NOTES if n in base["metrics"]["greedy"] or n in tuned["metrics"]["greedy"]]
    rows = "".join(f"<tr><th>{esc(n.replace('_', ' '))}</th>"
                   + "".join(f"<td>{number(line['metrics'][kind].get(n))}</td>"
                             for kind in ("greedy", "sampled") for line in (base, tuned))
                   + f"<td>{esc(METRIC_NOTES[n])}</td></tr>" for n in names)
    judge = tuned.get("role_judge") or {}
    count = len(tuned["samples"])
    notes = [f"From {count} validation prompt{'s' * (count != 1)} (--sample_prompts); for the whole validation "
             "split, run `train.py evaluate`."]
    if judge.get("accuracy") is not None:
        notes.append(f"Role judge accuracy on {judge['held_out_turns']} held-out turns of both sides: "
                     f"{judge['accuracy']:.1%}.")
    seconds = sum(s.get("seconds", 0) for s in samples)
    if summary.get("seconds"):
        notes.append(f"Generating the samples took {seconds:.1f} s of the run's {summary['seconds']:.1f} s "
                     f"({seconds / summary['seconds']:.1%}).")
    return f"<table class='samples'>{head}{rows}</table><p>{esc(' '.join(notes))}</p>"


def lr_search_section(metrics: list[dict]) -> list[str]:
    """--lr auto's curve (rate -> validation loss after the trial's steps), the chosen rate and what it cost."""
    search = next((m for m in metrics if m["type"] == "lr_search"), None)
    if search is None:
        return []
    rows = "".join(f"<tr><td>{rate:.3g}</td><td>{number(loss)}</td>"
                   f"<td>{'chosen' if rate == search['chosen_lr'] else ''}</td></tr>"
                   for rate, loss in zip(search["rates"], search["eval_losses"]))
    cost = (f"Each rate trained {search['steps_per_rate']} optimizer steps from the same initial weights, then was "
            f"judged on the validation split: {search['search_steps']} steps in all, "
            f"{search['search_steps'] / search['run_steps']:.1%} of the run's {search['run_steps']} (bound "
            f"{search['bound']:.0%}), {search['seconds']:.1f} s.")
    return ["<h2>Learning rate: --lr auto</h2><table><tr><th>rate</th><th>validation loss</th><th></th></tr>"
            f"{rows}</table><p>{esc(cost)}</p>"]


def number(value) -> str:
    return "" if value is None else f"{value:.3g}" if isinstance(value, float) else esc(value)


def comparison(samples: list[dict], best_step: int | None) -> str:
    base, tuned = base_and_tuned(samples, best_step)
    if base is None or tuned is None or tuned is base:
        return "<p>No samples: the run had no validation prompts (--sample_prompts 0 or no validation split).</p>"
    head = ("<tr><th>rep's message</th><th>reference</th><th>base model</th>"
            f"<th>fine-tuned, step {tuned['step']} (greedy)</th><th>fine-tuned (sampled)</th></tr>")
    rows = "".join(f"<tr class='prompt'><td>{esc(b['prompt'])}</td><td>{esc(b['reference'])}</td>"
                   f"<td>{esc(b['greedy'])}</td><td>{esc(t['greedy'])}</td><td>{esc(t['sampled'])}</td></tr>"
                   for b, t in zip(base["samples"], tuned["samples"]))
    return f"<table class='samples'>{head}{rows}</table>"


def _figure(panels: int):
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt, *plt.subplots(1, panels, figsize=(6 * panels, 3.6), squeeze=False)


def saved(plt, figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_losses(metrics: list[dict], path: Path) -> Path | None:
    train = [(m["step"], m["loss"]) for m in metrics if m["type"] == "train"]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if m["type"] == "eval"]
    if not train and not evals:
        return None
    plt, figure, axes = _figure(1)
    ax = axes[0][0]
    if train:
        ax.plot(*zip(*train), label="training loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per trained token")
    ax.legend()
    return saved(plt, figure, path)


def plot_training(metrics: list[dict], path: Path) -> Path | None:
    train = [m for m in metrics if m["type"] == "train"]
    if not train:
        return None
    plt, figure, axes = _figure(2)
    steps = [m["step"] for m in train]
    axes[0][0].plot(steps, [m["lr"] for m in train])
    axes[0][0].set_title("learning rate")
    axes[0][1].plot(steps, [m["tokens_per_sec"] or 0 for m in train])
    axes[0][1].set_title("tokens per second")
    for ax in axes[0]:
        ax.set_xlabel("optimizer step")
    return saved(plt, figure, path)


def plot_preferences(metrics: list[dict], path: Path) -> Path | None:
    """DPO and KTO runs: how often the chosen reply earns the higher reward, and by how much (train and validation)."""
    if not any("reward_accuracy" in m or "eval_reward_accuracy" in m for m in metrics):
        return None
    plt, figure, axes = _figure(2)
    for ax, name in zip(axes[0], ("reward_accuracy", "reward_margin")):
        for prefix, kind, style in (("", "train", {}), ("eval_", "eval", {"marker": "o"})):
            points = [(m["step"], m[prefix + name]) for m in metrics if m["type"] == kind and prefix + name in m]
            if points:
                ax.plot(*zip(*points), label="validation" if prefix else "training", **style)
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("optimizer step")
        ax.legend()
    return saved(plt, figure, path)


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:0.5em 0}th,td{border:1px solid #ccc;padding:4px 8px;"
         "text-align:left;vertical-align:top}th{background:#f4f4f4}img{max-width:100%}")
