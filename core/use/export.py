"""`train.py export`: the trained bot where reps chat: GGUF files for llama.cpp and Ollama, and the Hub.

From a plain Hugging Face directory (a full run's `best_model/`, or a LoRA run's merged one) it writes
`model-f16.gguf` and `model-q8_0.gguf` with the tokenizer, the chat template and the end-of-turn token
as the stop token, and an Ollama `Modelfile` carrying the same template, stop token, sampling defaults
and a default persona. Tensor names and layouts follow llama.cpp's converter (including its query/key
permutation for Llama), so llama.cpp, Ollama and transformers' GGUF loader read the files. The Llama
(SmolLM2, Llama 3) and Qwen2 (Qwen2.5) architectures are supported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.config import option
from core.errors import ConfigError, first_line
from core.model.generation import Sampling
from core.outputs import Input, check_output
from core.utils import atomic_directory, stage

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
CHATML_OLLAMA = ('{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
                 '{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
                 '<|im_start|>assistant\n')


@dataclass
class ExportConfig:
    model: str = option("", "a plain Hugging Face model directory to export (best_model/); required")
    output_dir: str = option("", "where the GGUF files and the Modelfile go (default: MODEL/export)")
    formats: str = option("f16,q8_0", "GGUF files to write: f16 and/or q8_0, comma-separated")
    system_prompt: str = option("", "the default persona written into the Modelfile (SYSTEM)")
    push_to_hub: str = option("", "also upload the model directory and the GGUF files to this Hugging Face Hub repository (owner/name)")
    private: bool = option(True, "create the Hub repository as private")

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("--model is required (a model directory such as checkpoints/best_model)")
        if not (Path(self.model) / "config.json").is_file():
            raise ConfigError(f"--model {self.model}: not a Hugging Face model directory (no config.json); a LoRA "
                              "run's best_model/ holds the merged model unless --no-merge_lora was given")
        unknown = set(self.formats.split(",")) - {"f16", "q8_0"}
        if unknown or not self.formats:
            raise ConfigError(f"--formats takes f16 and/or q8_0, got {self.formats!r}")


def permute_for_llama(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's layout of Llama's query and key rows (rotary halves interleaved); its loaders undo it."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def pre_tokenizer_name(tokenizer) -> str:
    """The pre-tokenizer llama.cpp should use: Qwen2's split where the tokenizer has it, GPT-2's otherwise."""
    return "qwen2" if "\\p{N}| ?[^\\s\\p{L}\\p{N}]+" in tokenizer.backend_tokenizer.to_str() else "gpt2"


def end_of_turn(model, tokenizer) -> int:
    """The token generation stops at: the trained end-of-turn token the run put in generation_config."""
    stop = model.generation_config.eos_token_id
    stop = [stop] if isinstance(stop, int) else list(stop or [tokenizer.eos_token_id])
    return stop[-1]


def write_tokenizer(writer, tokenizer, vocab_size: int, eot: int) -> None:
    import gguf
    special = set(tokenizer.all_special_ids)
    added = {i for i, t in tokenizer.added_tokens_decoder.items() if not t.special}
    tokens, types = [], []
    for index in range(vocab_size):
        if index < len(tokenizer):
            tokens.append(tokenizer.convert_ids_to_tokens(index))
            types.append(gguf.TokenType.CONTROL if index in special else
                         gguf.TokenType.USER_DEFINED if index in added else gguf.TokenType.NORMAL)
        else:  # embedding rows beyond the tokenizer (Qwen pads its vocabulary): llama.cpp's placeholder names
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(eot)
    writer.add_eot_token_id(eot)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)


def write_gguf(path: Path, model, tokenizer, kind: str) -> None:
    """One GGUF file: metadata, tokenizer and every tensor (f16, or q8_0 for matrices)."""
    import gguf
    config = model.config
    arch = ARCHITECTURES[type(model).__name__]
    writer = gguf.GGUFWriter(str(path), arch)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(Path(config.name_or_path or "model").name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if kind == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    vocab_size = model.get_input_embeddings().weight.shape[0]
    write_tokenizer(writer, tokenizer, vocab_size, end_of_turn(model, tokenizer))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.QWEN2,
                                     config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reads the embedding as the head when there is no output tensor
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ConfigError(f"export: no GGUF name for the tensor {name}; only Llama and Qwen2 layers are known")
        data = tensor.detach().float()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
            data = permute_for_llama(data, heads)
        write_tensor(writer, target, data.numpy(), kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_tensor(writer, name: str, data: np.ndarray, kind: str) -> None:
    import gguf
    if data.ndim == 1:  # norms and biases stay f32, as llama.cpp writes them
        writer.add_tensor(name, data.astype(np.float32))
    elif kind == "q8_0" and data.shape[-1] % 32 == 0:
        quantized = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_shape=quantized.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, data.astype(np.float16))


def modelfile(gguf_name: str, tokenizer, stop: str, system: str) -> str:
    """An Ollama Modelfile: the same template (ChatML is written as Ollama's own), stop token and persona."""
    chatml = "<|im_start|>" in (tokenizer.chat_template or "")
    lines = [f"FROM ./{gguf_name}"]
    if chatml:
        lines.append(f'TEMPLATE """{CHATML_OLLAMA}"""')
    defaults = Sampling()  # the replies `chat` gives, so Ollama plays the bot the same way
    lines += [f'PARAMETER stop "{stop}"', f"PARAMETER temperature {defaults.temperature}",
              f"PARAMETER top_p {defaults.top_p}", f"PARAMETER repeat_penalty {defaults.repetition_penalty}"]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    if not chatml:
        lines.insert(1, "# The chat template is the GGUF's own (tokenizer.chat_template): Ollama reads it from there.")
    return "\n".join(lines) + "\n"


def is_export(path: Path) -> bool:
    """An earlier export (or an empty directory): nothing in it that export does not write."""
    return path.is_dir() and all(p.name in EXPORT_FILES for p in path.iterdir())


EXPORT_FILES = ("model-f16.gguf", "model-q8_0.gguf", "Modelfile")


def export(config: ExportConfig) -> int:
    """Check the output path first; then write the files into a temporary directory renamed into place."""
    source = Path(config.model)
    target = Path(config.output_dir) if config.output_dir else source / "export"
    check_output("--output_dir", target, [Input("--model", source, own_subfolders=("export",))], is_export,
                 "an earlier export")
    with stage(f"exporting {source}", f"{target} was not written (an earlier export there is intact)"):
        write_export(config, source, target)
    print(f"Exported {', '.join(f'model-{k}.gguf' for k in config.formats.split(','))} and a Modelfile to {target}")
    if config.push_to_hub:
        push_to_hub(config.push_to_hub, source, target, config.private)
    return 0


def write_export(config: ExportConfig, source: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.model.load import refuse_unsafe_weights
    refuse_unsafe_weights(source, str(source))
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    if type(model).__name__ not in ARCHITECTURES:
        raise ConfigError(f"export supports {', '.join(ARCHITECTURES)}; {source} is a {type(model).__name__}")
    tokenizer = AutoTokenizer.from_pretrained(source)
    formats = config.formats.split(",")
    with atomic_directory(target) as tmp:
        for kind in formats:
            write_gguf(tmp / f"model-{kind}.gguf", model, tokenizer, kind)
        stop = tokenizer.convert_ids_to_tokens(end_of_turn(model, tokenizer))
        (tmp / "Modelfile").write_text(modelfile(f"model-{formats[-1]}.gguf", tokenizer, stop, config.system_prompt))


def push_to_hub(repo: str, model_dir: Path, export_dir: Path, private: bool, api=None) -> str:
    """Upload the model directory, with the GGUF files and Modelfile in gguf/, to a Hub model repository."""
    from huggingface_hub import HfApi
    api = api or HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(model_dir), ignore_patterns=["export/*", "adapter/*"],
                          commit_message="Upload the fine-tuned model")
        api.upload_folder(repo_id=repo, folder_path=str(export_dir), path_in_repo="gguf",
                          commit_message="Upload GGUF files and an Ollama Modelfile")
    except Exception as err:  # the hub client raises many types (HTTP, auth, network): one line for each
        reason = first_line(err)
        raise ConfigError(f"--push_to_hub {repo}: the upload failed ({reason}); log in with `hf auth login` or set "
                          "HF_TOKEN, and check that the Hub can be reached") from None
    print(f"Pushed to {url}")
    return str(url)
