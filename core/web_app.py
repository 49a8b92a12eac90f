"""`train.py web`: practise with the bot in the browser (a small local Gradio app).

Pick a checkpoint (the directories beside `--model` that hold a model are offered too) and a scenario,
talk as the rep, regenerate the prospect's last reply, compare two models side by side on the same
rep message (base against fine-tuned), and download the conversation as a training record. It binds
to 127.0.0.1; `--host 0.0.0.0` shares it on the team's network.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from core.chat import as_record, load_for_chat, load_scenarios
from core.config import ConfigError, option
from core.generation import Sampling, stream_reply

CUSTOM = "(your own persona)"
NONE = "(none)"


@dataclass
class WebConfig:
    model: str = option("", "the model to talk to: a checkpoint directory (best_model/), hub id, .gguf file or 'smollm2'; required")
    compare_model: str = option("", "a second model answering the same messages side by side (the base model, say)")
    scenarios: str = option("", "a YAML list of {name, system} personas to pick from (data/scenarios.yaml, say)")
    system_prompt: str = option("", "the persona to start with (else the first scenario's)")
    temperature: float = option(Sampling.temperature, "sampling temperature (higher: more varied replies)")
    top_p: float = option(Sampling.top_p, "nucleus sampling: keep the most likely tokens up to this probability mass")
    repetition_penalty: float = option(Sampling.repetition_penalty, "penalise tokens already in the conversation (1: off)")
    no_repeat_ngram_size: int = option(Sampling.no_repeat_ngram_size, "never repeat a phrase of this many tokens within one reply (0: off)")
    max_new_tokens: int = option(Sampling.max_new_tokens, "longest reply in tokens")
    greedy: bool = option(False, "always the most likely reply (no sampling)")
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface, to share on a network)")
    port: int = option(7860, "port to listen on")
    device: str = option("auto", "cuda, mps or cpu", ("auto", "cuda", "mps", "cpu"))
    cache_dir: str = option("", "converted-model cache (default: ~/.cache/roleplay-tuner)")
    trust_remote_code: bool = option(False, "allow model repositories to run their own Python code")

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("--model is required (a checkpoint directory such as checkpoints/best_model)")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be between 1 and 65535, got {self.port}")
        if not (0 < self.temperature and 0 < self.top_p <= 1 and self.max_new_tokens >= 1):
            raise ConfigError("--temperature must be positive, --top_p in (0, 1] and --max_new_tokens at least 1")

    def sampling(self) -> Sampling:
        return Sampling(**{f.name: getattr(self, f.name) for f in fields(Sampling)})


def model_choices(config: WebConfig) -> list[str]:
    """The given models, then every sibling directory of --model that holds a model (epoch_N/, checkpoint-N/...)."""
    choices = [config.model] + ([config.compare_model] if config.compare_model else [])
    parent = Path(config.model).parent if Path(config.model).is_dir() else None
    if parent is not None:
        siblings = sorted(str(p) for p in parent.iterdir() if (p / "config.json").is_file())
        choices += [s for s in siblings if s not in choices]
    return choices


class Models:
    """Models loaded on first use and kept, so switching back and forth is instant."""

    def __init__(self, config: WebConfig):
        self.config, self.loaded = config, {}

    def get(self, name: str):
        if name not in self.loaded:
            self.loaded[name] = load_for_chat(name, self.config.device, self.config.cache_dir,
                                              self.config.trust_remote_code)
        return self.loaded[name]


def turns(history: list[dict]) -> list[dict]:
    """Chatbot messages as plain {"role", "content"} turns (Gradio may hand content back as a list of parts)."""
    def text(content) -> str:
        if isinstance(content, str):
            return content
        parts = content if isinstance(content, list) else [content]
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts)
    return [{"role": m["role"], "content": text(m["content"])} for m in history]


def build_app(config: WebConfig):
    import gradio as gr
    scenarios = load_scenarios(config.scenarios) if config.scenarios else []
    by_name = {s.name: s.system for s in scenarios}
    first = config.system_prompt or (scenarios[0].system if scenarios else "")
    models, sampling = Models(config), config.sampling()
    models.get(config.model)  # fail now, with one line, rather than at the first message
    if config.compare_model:
        models.get(config.compare_model)

    def respond(history: list[dict], system: str, name: str):
        model, tokenizer = models.get(name)
        messages = as_record(system, turns(history))["messages"]
        reply = ""
        for piece in stream_reply(model, tokenizer, messages, sampling):
            reply += piece
            yield history + [{"role": "assistant", "content": reply}]

    def send(message: str, history_a, history_b, system, name_a, name_b):
        if not message.strip():
            yield history_a, history_b, message
            return
        history_a_now = history_a = history_a + [{"role": "user", "content": message}]
        history_b = history_b + [{"role": "user", "content": message}] if name_b != NONE else history_b
        for history_a_now in respond(history_a, system, name_a):
            yield history_a_now, history_b, ""
        for history_b_now in respond(history_b, system, name_b) if name_b != NONE else ():
            yield history_a_now, history_b_now, ""

    def regenerate(history_a, history_b, system, name_a, name_b):
        def strip(h):
            return (h[:-1] if h and h[-1]["role"] == "assistant" else h)
        history_a, history_b = strip(history_a), strip(history_b)
        history_a_now = history_a
        for history_a_now in respond(history_a, system, name_a) if history_a else ():
            yield history_a_now, history_b
        for history_b_now in respond(history_b, system, name_b) if history_b and name_b != NONE else ():
            yield history_a_now, history_b_now

    def transcript(history, system):
        path = Path(tempfile.mkdtemp(prefix="roleplay-transcript-")) / "transcript.jsonl"
        path.write_text(json.dumps(as_record(system, turns(history)), ensure_ascii=False) + "\n", encoding="utf-8")
        return str(path)

    with gr.Blocks(title="Roleplay practice", analytics_enabled=False) as app:
        gr.Markdown("## Practise a sales call\nYou are the rep; the model plays the prospect.")
        with gr.Row():
            name_a = gr.Dropdown(model_choices(config), value=config.model, label="Model", elem_id="model")
            name_b = gr.Dropdown([NONE] + model_choices(config), value=config.compare_model or NONE,
                                 label="Compare with", elem_id="compare")
            scenario = gr.Dropdown([CUSTOM] + list(by_name), value=scenarios[0].name if scenarios and not
                                   config.system_prompt else CUSTOM, label="Scenario", elem_id="scenario")
        system = gr.Textbox(first, label="Persona (system prompt)", lines=2, elem_id="persona")
        with gr.Row():
            chat_a = gr.Chatbot(label="Prospect", elem_id="chat-a", height=420)
            chat_b = gr.Chatbot(label="Prospect (compared model)", elem_id="chat-b", height=420,
                                visible=bool(config.compare_model))
        message = gr.Textbox(label="Your message (as the rep)", elem_id="rep-message", lines=2)
        with gr.Row():
            send_button = gr.Button("Send", variant="primary", elem_id="send")
            regenerate_button = gr.Button("Regenerate reply", elem_id="regenerate")
            new_button = gr.Button("New prospect", elem_id="new")
            download = gr.DownloadButton("Download transcript", elem_id="download")
        scenario.change(lambda name, text: (by_name.get(name, text), [], []), [scenario, system],
                        [system, chat_a, chat_b])
        name_b.change(lambda name: gr.update(visible=name != NONE), name_b, chat_b)
        for trigger in (send_button.click, message.submit):
            trigger(send, [message, chat_a, chat_b, system, name_a, name_b], [chat_a, chat_b, message]).then(
                transcript, [chat_a, system], download)
        regenerate_button.click(regenerate, [chat_a, chat_b, system, name_a, name_b], [chat_a, chat_b]).then(
            transcript, [chat_a, system], download)
        new_button.click(lambda: ([], []), None, [chat_a, chat_b])
    return app


def serve(config: WebConfig) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("train.py web needs Gradio: pip install -e '.[web]'") from None
    app = build_app(config)
    print(f"Practice app on http://{config.host}:{config.port} (Ctrl-C to stop)", flush=True)
    app.queue().launch(server_name=config.host, server_port=config.port, show_error=True, quiet=True)
    return 0
