"""Watching a run: samples.jsonl at every evaluation, report.html at the end, and a tracker."""

import json
import re

from conftest import cli, sample_data


def test_a_run_writes_samples_at_each_evaluation_and_a_self_contained_report(tmp_path, tiny_qwen_1k_dir, cache_dir):
    sample_data(tmp_path, 24)
    out = tmp_path / "out"
    code, output = cli("--data_path", tmp_path / "data.jsonl", "--model_name", tiny_qwen_1k_dir, "--cache_dir",
                       cache_dir, "--output_dir", out, "--batch_size", "4", "--epochs", "1", "--eval_steps", "2",
                       "--save_steps", "0", "--log_steps", "1", "--sample_prompts", "3", "--sample_max_new_tokens",
                       "8", "--report_to", "tensorboard", "--eval_split", "0.25")
    assert code == 0, output[-3000:]
    evals = [e["step"] for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if e["type"] == "eval"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0] + evals  # the base model, then one entry per evaluation
    assert all(len(s["samples"]) == 3 and all(set(x) == {"prompt", "reference", "greedy", "sampled"}
                                              for x in s["samples"]) for s in samples)
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page  # opens offline
    assert len(re.findall(r"<img alt='(loss_curves|training_curves)' src='data:image/png;base64,", page)) == 2
    assert (out / "loss_curves.png").stat().st_size > 1000 and (out / "training_curves.png").is_file()
    assert page.count("<tr class='prompt'>") == 3  # one row per validation prompt
    reference = samples[0]["samples"][0]["reference"]
    assert reference.replace("'", "&#x27;") in page
    assert "Data</h2><table><tr><th>records</th><td>24</td>" in page
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # roleplay metrics of greedy and sampled replies at each evaluation, base and fine-tuned side by side
    assert all(set(s["metrics"]) == {"greedy", "sampled"} and s["metrics"]["greedy"]["replies"] == 3
               and s["seconds"] > 0 for s in samples)
    assert "Roleplay metrics: base against fine-tuned</h2>" in page and "<th>role consistency</th>" in page
    assert "Role judge accuracy on" in page and "Generating the samples took" in page
    assert "Samples: 3 validation prompts, greedy and sampled" in output and "Role judge: naive Bayes" in output
    assert f"Report: {out / 'report.html'}" in output


def test_evaluate_writes_each_records_reply_loss_and_the_mean(tmp_path, tiny_qwen_1k_dir, cache_dir):
    data = sample_data(tmp_path, 5)
    output = tmp_path / "eval.jsonl"
    code, printed = cli("evaluate", "--model", tiny_qwen_1k_dir, "--data_path", data, "--cache_dir", cache_dir,
                        "--output", output, "--max_new_tokens", "4")
    assert code == 0, printed[-2000:]
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["where"] for line in lines] == [f"{data} line {i}" for i in range(1, 6)]
    summary = json.loads(output.with_suffix(".summary.json").read_text())
    total = sum(line["loss"] * line["trained_tokens"] for line in lines) / sum(line["trained_tokens"] for line in lines)
    assert summary["records"] == 5 and abs(summary["mean_loss"] - total) < 1e-9
    assert all(line["perplexity"] > 1 and isinstance(line["reply"], str) for line in lines)
    assert f"mean loss {summary['mean_loss']:.4f}" in printed
