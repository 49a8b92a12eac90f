"""`train.py web`: practise with the bot in the browser (a small local Gradio app).

Pick a checkpoint (the directories beside `--model` that hold a model are offered too) and a scenario,
talk as the rep, regenerate the prospect's last reply, compare two models side by side on the same
rep message (base against fine-tuned), and download the conversation as a training record. Judge the
prospect's last reply as you go (core/use/feedback.py): thumbs up or down, "Rewrite" with what a real
prospect would say (which then stands in the conversation), or, with two models, which one is more
realistic; each judgement is appended at once to --feedback_file. It binds to 127.0.0.1;
`--host 0.0.0.0` shares it on the team's network.
"""

from __future__ import annotations

import json
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.config import option
from core.errors import ConfigError
from core.model.generation import stream_reply
from core.use import feedback
from core.use.chat import ChatOptions, as_record, load_for_chat, load_scenarios

CUSTOM = "(your own persona)"
NONE = "(none)"


@dataclass
class WebConfig(ChatOptions):
    compare_model: str = option("", "a second model answering the same messages side by side (the base model, say)")
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface, to share on a network)")
    port: int = option(7860, "port to listen on")

    def validate(self) -> None:
        super().validate()
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be between 1 and 65535, got {self.port}")


def model_choices(config: WebConfig) -> list[str]:
    """The given models, then every sibling directory of --model that holds a model (epoch_N/, checkpoint-N/...)."""
    choices = [config.model] + ([config.compare_model] if config.compare_model else [])
    parent = Path(config.model).parent if Path(config.model).is_dir() else None
    if parent is not None:
        siblings = sorted(str(p) for p in parent.iterdir() if (p / "config.json").is_file())
        choices += [s for s in siblings if s not in choices]
    return choices


def turns(history: list[dict]) -> list[dict]:
    """Chatbot messages as plain {"role", "content"} turns (Gradio may hand content back as a list of parts)."""
    def text(content) -> str:
        if isinstance(content, str):
            return content
        parts = content if isinstance(content, list) else [content]
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts)
    return [{"role": m["role"], "content": text(m["content"])} for m in history]


class Practice:
    """The app's state and handlers: models loaded on first use (and kept), and the conversation actions."""

    def __init__(self, config: WebConfig):
        self.sampling, self.loaded, self.config = config.sampling(), {}, config
        self.feedback_path = Path(config.feedback_file) if config.feedback_file else \
            feedback.default_feedback_file(config.model)

    def model(self, name: str):
        if name not in self.loaded:
            config = self.config
            self.loaded[name] = load_for_chat(name, config)
        return self.loaded[name]

    def respond(self, history: list[dict], system: str, name: str):
        """The history with the prospect's reply, as it grows."""
        model, tokenizer = self.model(name)
        reply = ""
        for piece in stream_reply(model, tokenizer, as_record(system, turns(history))["messages"], self.sampling):
            reply += piece
            yield history + [{"role": "assistant", "content": reply}]

    def send(self, message: str, history_a, history_b, system, name_a, name_b):
        if not message.strip():
            yield history_a, history_b, message
            return
        history_a_now = history_a = history_a + [{"role": "user", "content": message}]
        history_b = history_b + [{"role": "user", "content": message}] if name_b != NONE else history_b
        for history_a_now in self.respond(history_a, system, name_a):
            yield history_a_now, history_b, ""
        for history_b_now in self.respond(history_b, system, name_b) if name_b != NONE else ():
            yield history_a_now, history_b_now, ""

    def regenerate(self, history_a, history_b, system, name_a, name_b):
        history_a, history_b = without_last_reply(history_a), without_last_reply(history_b)
        history_a_now = history_a
        for history_a_now in self.respond(history_a, system, name_a) if history_a else ():
            yield history_a_now, history_b
        for history_b_now in self.respond(history_b, system, name_b) if history_b and name_b != NONE else ():
            yield history_a_now, history_b_now

    def thumbs(self, history, system, name, good: bool) -> str:
        """Thumbs up or down on the last reply: a labelled reply in the feedback file."""
        return self._record(lambda: feedback.judge(self.feedback_path, as_record(system, turns(history))["messages"],
                                                   good, name, "web"), "a good reply" if good else "a bad reply")

    def rewrite(self, history, system, name, better: str):
        """The trainer's rewrite of the last reply: a pair and an SFT record; the rewrite stands in the chat."""
        status = self._record(lambda: feedback.rewrite(self.feedback_path, as_record(system, turns(history))[
            "messages"], better, name, "web"), "a rewrite (a pair and an SFT record)")
        if status.startswith("Recorded"):
            return without_last_reply(history) + [{"role": "assistant", "content": better.strip()}], status, ""
        return history, status, better

    def prefer(self, history_a, history_b, system, name_a, name_b, picked_a: bool) -> str:
        """Of the two models' replies to the same message, the more realistic: a pair in the feedback file."""
        a, b = as_record(system, turns(history_a))["messages"], as_record(system, turns(history_b))["messages"]
        if name_b == NONE or len(a) < 2 or len(b) < 2 or a[-2] != b[-2]:
            return "Nothing recorded: compare two models' replies to the same message first."
        (picked, picked_model), (other, other_model) = ((a, name_a), (b, name_b)) if picked_a else \
            ((b, name_b), (a, name_a))
        return self._record(lambda: feedback.prefer(self.feedback_path, picked[:-1], picked[-1]["content"],
                                                    other[-1]["content"], picked_model, other_model, "web"),
                            f"model {'A' if picked_a else 'B'} as the more realistic")

    def _record(self, write, what: str) -> str:
        try:
            write()
        except ValueError as err:
            return f"Nothing recorded: {err}."
        except OSError as err:
            return f"Could not write to {self.feedback_path}: {err.strerror or err}"
        return f"Recorded {what} in {self.feedback_path}."

    @staticmethod
    def transcript(history, system) -> str:
        """The conversation as a training record in a JSONL file, for the download button."""
        path = Path(tempfile.mkdtemp(prefix="roleplay-transcript-")) / "transcript.jsonl"
        path.write_text(json.dumps(as_record(system, turns(history)), ensure_ascii=False) + "\n", encoding="utf-8")
        return str(path)


def without_last_reply(history: list[dict]) -> list[dict]:
    return history[:-1] if history and history[-1]["role"] == "assistant" else history


def build_app(config: WebConfig):
    import gradio as gr
    scenarios = load_scenarios(config.scenarios) if config.scenarios else []
    by_name = {s.name: s.system for s in scenarios}
    first = config.system_prompt or (scenarios[0].system if scenarios else "")
    practice = Practice(config)
    for name in filter(None, (config.model, config.compare_model)):
        practice.model(name)  # fail now, with one line, rather than at the first message
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
        with gr.Row():
            good_button = gr.Button("👍 Realistic", elem_id="thumbs-up")
            bad_button = gr.Button("👎 Not realistic", elem_id="thumbs-down")
            better = gr.Textbox(label="What would a real prospect say?", elem_id="rewrite-text", scale=3)
            rewrite_button = gr.Button("Rewrite", elem_id="rewrite")
        with gr.Row(visible=bool(config.compare_model)) as compare_row:
            prefer_a = gr.Button("Model A is more realistic", elem_id="prefer-a")
            prefer_b = gr.Button("Model B is more realistic", elem_id="prefer-b")
        status = gr.Markdown(f"Judgements go to {practice.feedback_path}", elem_id="feedback-status")
        scenario.change(lambda name, text: (by_name.get(name, text), [], []), [scenario, system],
                        [system, chat_a, chat_b])
        name_b.change(lambda name: (gr.update(visible=name != NONE),) * 2, name_b, [chat_b, compare_row])
        good_button.click(lambda *a: practice.thumbs(*a, True), [chat_a, system, name_a], status)
        bad_button.click(lambda *a: practice.thumbs(*a, False), [chat_a, system, name_a], status)
        rewrite_button.click(practice.rewrite, [chat_a, system, name_a, better], [chat_a, status, better])
        for button, picked_a in ((prefer_a, True), (prefer_b, False)):
            button.click(lambda *a, picked_a=picked_a: practice.prefer(*a, picked_a),
                         [chat_a, chat_b, system, name_a, name_b], status)
        for trigger in (send_button.click, message.submit):
            trigger(practice.send, [message, chat_a, chat_b, system, name_a, name_b],
                    [chat_a, chat_b, message]).then(practice.transcript, [chat_a, system], download)
        regenerate_button.click(practice.regenerate, [chat_a, chat_b, system, name_a, name_b],
                                [chat_a, chat_b]).then(practice.transcript, [chat_a, system], download)
        new_button.click(lambda: ([], []), None, [chat_a, chat_b])
    return app


def check_port(host: str, port: int) -> None:
    """The address can be listened on, checked before any model loads (Gradio would fail after the banner)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConfigError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({err.strerror}); another program "
                              "is using it: pass another --port") from None


def serve(config: WebConfig) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("train.py web needs Gradio: pip install -e '.[web]'") from None
    check_port(config.host, config.port)
    app = build_app(config)
    print(f"Practice app on http://{config.host}:{config.port} (Ctrl-C to stop)", flush=True)
    app.queue().launch(server_name=config.host, server_port=config.port, show_error=True, quiet=True)
    return 0
