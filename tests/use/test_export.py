"""Export: GGUF files that load back with the same logits and prompt tokens, an Ollama Modelfile, the Hub."""

import shutil

import pytest
import torch
from conftest import assert_error, cli
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.use.export import push_to_hub

CHAT = [{"role": "system", "content": "You are Dana, IT director."},
        {"role": "user", "content": "Hi Dana, 3 quick questions about your $40k budget? Café at 10?"}]
TOLERANCE = {"f16": 2e-3, "q8_0": 3e-2}  # relative error of the logits: half precision, then 8-bit blocks


@pytest.mark.parametrize("family", ["qwen2", pytest.param("llama", marks=pytest.mark.slow(seconds=22, smollm2=True))])
def test_exported_gguf_loads_back_with_the_same_logits_and_prompt_tokens(tmp_path, request, family):
    """qwen2: the tiny Qwen2 on a 1k Qwen-style vocabulary (Qwen's pre-tokenizer, special tokens and template),
    both formats; llama: SmolLM2-135M itself (GPT-2's pre-tokenizer, 49k tokens, the query/key rows GGUF
    permutes), q8_0 only. Reading a GGUF vocabulary back takes transformers seconds per 10k tokens."""
    source = request.getfixturevalue("tiny_qwen_1k_dir" if family == "qwen2" else "smollm2_dir")
    kinds = TOLERANCE if family == "qwen2" else {"q8_0": TOLERANCE["q8_0"]}
    out = tmp_path / "export"
    code, output = cli("export", "--model", source, "--output_dir", out, "--system_prompt", "You are Dana.",
                       "--formats", ",".join(kinds))
    assert code == 0, output[-2000:]
    reference = AutoModelForCausalLM.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor([ids])).logits
    # The tokenizer and template are the same metadata in both files: read back once.
    loaded_tokenizer = AutoTokenizer.from_pretrained(out, gguf_file="model-q8_0.gguf")
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert loaded_tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True,
                                                return_dict=False) == ids
    for kind, tolerance in kinds.items():
        name = f"model-{kind}.gguf"
        model = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits
        assert (logits - expected).norm() <= tolerance * expected.norm(), kind
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-q8_0.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "<|im_start|>{{ .Role }}" in modelfile and 'SYSTEM """You are Dana."""' in modelfile


class StandInHub:
    """Records what would be sent to the Hub: the Hub itself cannot be reached from here."""

    def __init__(self, root):
        self.root, self.calls = root, []

    def create_repo(self, repo, private, exist_ok):
        self.calls.append(("create_repo", repo, private))
        return f"https://hub.example/{repo}"

    def upload_folder(self, repo_id, folder_path, path_in_repo="", ignore_patterns=None, commit_message=""):
        target = self.root / repo_id / path_in_repo
        ignore = shutil.ignore_patterns(*(ignore_patterns or []))
        shutil.copytree(folder_path, target, dirs_exist_ok=True, ignore=ignore)
        self.calls.append(("upload_folder", repo_id, path_in_repo))


def test_push_to_hub_uploads_the_model_and_the_gguf_files(tmp_path, tiny_qwen_1k_dir):
    out = tmp_path / "export"
    assert cli("export", "--model", tiny_qwen_1k_dir, "--output_dir", out, "--formats", "f16")[0] == 0
    hub = StandInHub(tmp_path / "hub")
    assert push_to_hub("team/dana-bot", tiny_qwen_1k_dir, out, True, api=hub) == "https://hub.example/team/dana-bot"
    assert hub.calls[0] == ("create_repo", "team/dana-bot", True)
    uploaded = tmp_path / "hub" / "team" / "dana-bot"
    assert (uploaded / "config.json").is_file() and (uploaded / "gguf" / "model-f16.gguf").is_file()
    AutoModelForCausalLM.from_pretrained(uploaded)  # what was uploaded is a loadable model


def test_export_faults_give_one_line(tmp_path, tiny_qwen_1k_dir, monkeypatch):
    assert_error(cli("export", "--model", tmp_path), r"not a Hugging Face model directory", 2)
    assert_error(cli("export", "--model", tiny_qwen_1k_dir, "--formats", "q4"), r"--formats takes f16 and/or q8_0", 2)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the upload fails
    monkeypatch.setenv("HF_TOKEN", "hf_standin")
    assert_error(cli("export", "--model", tiny_qwen_1k_dir, "--output_dir", tmp_path / "out", "--formats", "f16",
                     "--push_to_hub", "team/dana-bot"), r"--push_to_hub team/dana-bot: the upload failed", 2)
