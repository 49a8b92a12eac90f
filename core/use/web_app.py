"""`train.py web`: practise with the bot in the browser (a small local Gradio app).

Pick a checkpoint (the directories beside `--model` that hold a model are offered too) and a scenario,
talk as the rep, regenerate the prospect's last reply, compare two models side by side on the same
rep message (base against fine-tuned), and download the conversation as a training record. Judge the
prospect's last reply as you go: thumbs up or down, "Rewrite" with what a real prospect would say (which
then stands in the conversation), or, with two models, which one is more realistic. Each call, its messages
and its judgements are recorded in the team's store (--store, core/use/practice_store.py) with who made them
(and in --feedback_file too when given). Each browser page holds its own `PracticeSession`
(core/use/practice.py); the models are loaded once and shared.

Who may use it: it binds to 127.0.0.1. When the store has users, everyone logs in with their store password
(checked by the store, which locks a name after repeated failures); on any other address a login is required,
and the app refuses to start while the store has no user, unless --no_auth says the network is trusted. A rep
sees and downloads only their own calls; a trainer sees everyone's, and a review per scenario
(core/use/team_review.py).
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import json
import shutil
import socket
import tempfile
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

from core.config import option
from core.errors import ConfigError
from core.outputs import local_inputs
from core.store import AccessDenied, StoreError
from core.use.chat import ChatOptions, feedback_recorder, load_answerer, load_scenarios, text_rule
from core.use.practice import DESCRIBED, Answerer, NotRecorded, PracticeSession, recorded
from core.use.practice_store import fingerprint, open_practice_store, recorder_for
from core.use.team_review import NO_SCENARIO, overview_markdown, review_markdown, scenario_review
from core.utils import stage

CUSTOM = "(your own persona)"
NONE = "(none)"


@dataclass
class WebConfig(ChatOptions):
    compare_model: str = option("", "a second model answering the same messages side by side (the base model, say)")
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface, to share on a network)")
    port: int = option(7860, "port to listen on")
    no_auth: bool = option(False, "no login, even on a network address (a trusted network only: anyone who reaches the port practises, judges and reads every call)")

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


def refused(err: Exception):
    """A line the session would not take, shown in the page (Gradio's error toast)."""
    import gradio as gr
    return gr.Error(f"Not sent: {err}.")


class Practice:
    """The app: the models (loaded on first use, shared by every page), the feedback file, and the handlers.

    Each page's `PracticeSession` lives in its `page` state (a dict Gradio keeps per browser tab); the chats
    the page shows are the truth, so a handler called without a page, or with chats the session does not hold
    (a page cleared in the browser), starts a session from what is shown.
    """

    def __init__(self, config: WebConfig, scenarios=()):
        self.config, self.loaded = config, {}
        inputs = local_inputs("--scenarios", config.scenarios)
        for name in model_choices(config):
            inputs += local_inputs("--model", name)
        self.file = feedback_recorder(config, inputs)
        self.store = open_practice_store(config.store, config.model, inputs)
        self.where = f"the team's store ({self.store.where})" + (f" and {self.file.path}" if self.file else "")
        self.scenarios = list(scenarios)
        self.scenario_of = {s.system: s.name for s in self.scenarios}  # a persona shown as given: its scenario
        self.fingerprints: dict[str, str] = {}
        self.sessions: weakref.WeakSet[PracticeSession] = weakref.WeakSet()  # open calls, closed when the app stops
        # the scenarios given a tab in the trainer's review: --scenarios', the store's, and calls without one
        self.review_names = list(dict.fromkeys([s.name for s in self.scenarios] +
                                               [s["name"] for s in self.store.scenarios()] + [NO_SCENARIO]))
        self.rule = None  # --special_tokens, set once the first model's tokenizer is loaded
        self.transcripts = Path(tempfile.mkdtemp(prefix="roleplay-transcripts-", dir=gradio_cache()))
        self._remove = weakref.finalize(self, shutil.rmtree, self.transcripts, ignore_errors=True)

    def model(self, name: str) -> Answerer:
        if name not in self.loaded:
            self.loaded[name] = load_answerer(name, self.config, self.config.backend_url if name == self.config.model else "")
            self.fingerprints[name] = fingerprint(name)
            if self.rule is None:
                self.rule = text_rule(self.loaded[name], self.config, self.scenarios)
        return self.loaded[name]

    def session(self, page, system, histories, names, sides: int | None = None) -> PracticeSession:
        """The page's session if it holds the persona and the chats shown (side B's when given, None when the
        handler does not see it) with `sides` sides; else a new one that does (the old call is closed)."""
        shown = [turns(h) for h in histories if h is not None]
        current = (page or {}).get("session")
        if current is None or current.persona != system or len(current.sides) < len(shown) or \
                (sides is not None and len(current.sides) != sides) or \
                [side.turns for side in current.sides[:len(shown)]] != shown:
            if current is not None:
                current.close()
            for name in names[:sides or len(shown)]:
                self.model(name)  # the first model's tokenizer gives the --special_tokens rule; all: fingerprints
            user = (page or {}).get("user")
            recorder = recorder_for(self.store, user, names, self.config.sampling(), self.fingerprints, self.file)
            current = PracticeSession(recorder, system, self.scenario_of.get(system), sides=sides or len(shown),
                                      source="web", user=user, rule=self.rule)
            current.show(shown, names)
            if page is not None:
                page["session"] = current
            self.sessions.add(current)
        return current

    def close(self, page: dict) -> None:
        close_page(self.transcripts, page)

    def send(self, message: str, history_a, history_b, system, name_a, name_b, page=None):
        if not message.strip():
            yield history_a, history_b, message
            return
        names, compare = [name_a, name_b], name_b != NONE
        try:
            session = self.session(page, system, [history_a, history_b if compare else None], names, 1 + compare)
            session.say(message)
        except (NotRecorded, OSError) as err:
            raise refused(err) from None
        yield from self._answer(session, names, "")

    def regenerate(self, history_a, history_b, system, name_a, name_b, page=None):
        names, compare = [name_a, name_b], name_b != NONE
        try:
            session = self.session(page, system, [history_a, history_b if compare else None], names, 1 + compare)
        except NotRecorded as err:
            raise refused(err) from None
        if not session.sides[0].turns:
            yield history_a, history_b
            return
        session.take_back_replies()
        yield from self._answer(session, names)

    def _answer(self, session: PracticeSession, names, *rest):
        """Each side's reply as it grows (side A, then side B), as the chats the page shows."""
        shown = [list(side.turns) for side in session.sides] + [[]] * (2 - len(session.sides))
        for index, name in enumerate(names[:len(session.sides)]):
            session.recorder.answering(index)
            for reply in session.answer(index, self.model(name)):
                shown[index] = session.sides[index].turns + [{"role": "assistant", "content": reply}]
                yield *shown, *rest
            shown[index] = list(session.sides[index].turns)
        yield *shown, *rest

    def thumbs(self, history, system, name, good: bool, page=None) -> str:
        """Thumbs up or down on the last reply: a labelled reply in the feedback file."""
        return recorded(lambda: self.session(page, system, [history], [name]).judge(good),
                        DESCRIBED["good" if good else "bad"])

    def rewrite(self, history, system, name, better: str, page=None):
        """The trainer's rewrite of the last reply: a pair and an SFT record; the rewrite stands in the chat."""
        try:
            session = self.session(page, system, [history], [name])
        except NotRecorded as err:
            return history, f"Nothing recorded: {err}.", better
        status = recorded(lambda: session.rewrite(better), DESCRIBED["rewrite"])
        if status.startswith("Recorded"):
            return list(session.sides[0].turns), status, ""
        return history, status, better

    def prefer(self, history_a, history_b, system, name_a, name_b, picked_a: bool, page=None) -> str:
        """Of the two models' replies to the same message, the more realistic: a pair in the feedback file."""
        if name_b == NONE:
            return "Nothing recorded: compare two models' replies to the same message first."
        return recorded(lambda: self.session(page, system, [history_a, history_b], [name_a, name_b], 2).prefer(
            0 if picked_a else 1), f"model {'A' if picked_a else 'B'}'s reply as the more realistic")

    def transcript(self, history, system, page=None) -> str:
        """The conversation as a training record for the download button: one file per page, replaced."""
        try:
            session = self.session(page, system, [history], [self.config.model])
        except NotRecorded as err:
            raise refused(err) from None
        key = page.setdefault("key", uuid.uuid4().hex) if page is not None else "no-page"
        path = self.transcripts / key / "transcript.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(session.transcript(), ensure_ascii=False) + "\n", encoding="utf-8")
        return str(path)

    # Logins and what each user may read --------------------------------------------------------------

    def authenticate(self, name: str, password: str) -> bool:
        """Gradio's login check: the store's password check (a locked name is refused like a wrong password)."""
        try:
            return self.store.check_password(name, password) is not None
        except StoreError:
            return False

    def login(self, page: dict, request=None) -> dict:
        """The page's user, from the name Gradio's login gave it (None without a login: the local single user)."""
        name = getattr(request, "username", None)
        return {**(page or {}), "user": self.store.user(name) if name else None}

    def reader(self, page):
        """Who reads: the page's user; None (the store's holder) only when the app runs without logins."""
        return (page or {}).get("user")

    def calls(self, page) -> tuple[str, object]:
        """The calls the page's user may see (a rep: their own; a trainer: everyone's), and a choice of them."""
        import gradio as gr
        shown = self.store.calls_for(self.reader(page))
        lines = ["| call | rep | scenario | started | messages | judgements |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {c.id} | {c.user or '-'} | {c.scenario or NO_SCENARIO} | {c.started_at:%Y-%m-%d %H:%M} | "
                  f"{c.messages} | {c.judgements} |" for c in shown]
        table = "\n".join(lines) if shown else "No calls recorded yet."
        return table, gr.update(choices=[c.id for c in shown], value=shown[-1].id if shown else None)

    def call_file(self, call_id, page) -> str | None:
        """One call as a file to download, if the page's user may read it (the store refuses a rep another's)."""
        if call_id is None:
            return None  # no call chosen (none recorded yet): nothing to download
        try:
            record = self.store.transcript(self.reader(page), int(call_id))
        except (AccessDenied, StoreError) as err:
            raise refused(err) from None
        key = page.setdefault("key", uuid.uuid4().hex) if page is not None else "no-page"
        path = self.transcripts / key / f"call-{int(call_id)}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return str(path)

    def review(self, page) -> list[str]:
        """The trainer's review: the overview, then one text per scenario tab (in `review_names` order)."""
        user = self.reader(page)
        if user is not None and user.role != "trainer":
            return ["Only a trainer sees the review of every scenario."] * (1 + len(self.review_names))
        rows, judge = scenario_review(self.store, user)
        by_name = {row["scenario"]: row for row in rows}
        return [overview_markdown(rows, judge)] + [
            review_markdown(by_name[name]) if name in by_name else f"### {name}\nNo calls yet."
            for name in self.review_names]

    def stop(self) -> None:
        """The app stops: the pages' calls end, and the store is let go."""
        for session in list(self.sessions):
            try:
                session.close()
            except OSError:
                pass  # the store is gone: the call stays open, its messages and judgements recorded
        self._remove()
        self.store.close()


def close_page(transcripts: Path, page: dict) -> None:
    """A page was closed: end its call and remove its transcript. (Gradio copies a State's callback with the
    app's config, so the callback holds the folder, never the app and its models.)"""
    if page.get("session") is not None:
        page["session"].close()
    if page.get("key"):
        shutil.rmtree(transcripts / page["key"], ignore_errors=True)


def gradio_cache() -> str:
    """Gradio's own file folder: a download there is served as it is, not copied once per content."""
    try:
        from gradio.utils import get_upload_folder
    except ImportError:  # the handlers run without Gradio in tests of the session
        return tempfile.gettempdir()
    folder = Path(get_upload_folder())
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def without_last_reply(history: list[dict]) -> list[dict]:
    return history[:-1] if history and history[-1]["role"] == "assistant" else history


def build_app(config: WebConfig, practice: Practice):
    import gradio as gr
    for name in filter(None, (config.model, config.compare_model)):
        practice.model(name)  # fail now, with one line, rather than at the first message
    with gr.Blocks(title="Roleplay practice", analytics_enabled=False) as app:
        # this browser tab's user, session and transcript; the callback holds the folder, never the app's models
        page = gr.State({}, delete_callback=functools.partial(close_page, practice.transcripts))
        who = gr.Markdown(elem_id="who")
        with gr.Tab("Practise", elem_id="practise-tab"):
            gr.Markdown("## Practise a sales call\nYou are the rep; the model plays the prospect.")
            practice_tab(config, practice, page)
        with gr.Tab("Calls", elem_id="calls-tab"):
            refresh_calls = gr.Button("Show my calls (a trainer: everyone's)", elem_id="refresh-calls")
            calls = gr.Markdown(elem_id="calls")
            with gr.Row():
                chosen = gr.Dropdown([], label="Call", elem_id="call-choice")
                call_download = gr.DownloadButton("Download the call", elem_id="call-download")
        with gr.Tab("Review (trainers)", elem_id="review-tab"):
            refresh_review = gr.Button("Review every scenario", elem_id="refresh-review")
            reviews = [gr.Markdown(elem_id="review-overview")]
            with gr.Tabs():
                for index, name in enumerate(practice.review_names):
                    with gr.Tab(name, elem_id=f"review-tab-{index}"):
                        reviews.append(gr.Markdown(elem_id=f"review-{index}"))
        refresh_calls.click(practice.calls, page, [calls, chosen])
        chosen.change(practice.call_file, [chosen, page], call_download)
        refresh_review.click(practice.review, page, reviews)

        def login(state, request):
            state = practice.login(state, request)
            user = state["user"]
            shown = f"Logged in as **{user.name}** ({user.role})" if user else "Local single user (no login)"
            return state, shown
        login.__annotations__ = {"request": gr.Request}  # how Gradio knows to pass the request (not a string)
        app.load(login, page, [page, who])
    return app


def practice_tab(config: WebConfig, practice: Practice, page) -> None:
    """The practice call: models, persona, the chats, and the judgement buttons."""
    import gradio as gr
    by_name = {s.name: s.system for s in practice.scenarios}
    scenarios = practice.scenarios
    first = config.system_prompt or (scenarios[0].system if scenarios else "")
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
    status = gr.Markdown(f"Judgements go to {practice.where}", elem_id="feedback-status")
    scenario.change(lambda name, text: (by_name.get(name, text), [], []), [scenario, system],
                    [system, chat_a, chat_b])
    name_b.change(lambda name: (gr.update(visible=name != NONE),) * 2, name_b, [chat_b, compare_row])
    good_button.click(lambda *a: practice.thumbs(*a[:3], True, a[3]), [chat_a, system, name_a, page], status)
    bad_button.click(lambda *a: practice.thumbs(*a[:3], False, a[3]), [chat_a, system, name_a, page], status)
    rewrite_button.click(practice.rewrite, [chat_a, system, name_a, better, page], [chat_a, status, better])
    for button, picked_a in ((prefer_a, True), (prefer_b, False)):
        button.click(lambda *a, picked_a=picked_a: practice.prefer(*a[:5], picked_a, a[5]),
                     [chat_a, chat_b, system, name_a, name_b, page], status)
    for trigger in (send_button.click, message.submit):
        trigger(practice.send, [message, chat_a, chat_b, system, name_a, name_b, page],
                [chat_a, chat_b, message]).then(practice.transcript, [chat_a, system, page], download)
    regenerate_button.click(practice.regenerate, [chat_a, chat_b, system, name_a, name_b, page],
                            [chat_a, chat_b]).then(practice.transcript, [chat_a, system, page], download)
    new_button.click(lambda: ([], []), None, [chat_a, chat_b])


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
            if err.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"--host {host}: not an address of this machine ({err.strerror}); pass 127.0.0.1, "
                                  "0.0.0.0 (every interface) or one of its addresses") from None
            raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({err.strerror}); another program "
                              "is using it: pass another --port") from None


def is_loopback(host: str) -> bool:
    """Every address `host` names is this machine's loopback (127.0.0.1, ::1, localhost)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def who_may_use(config: WebConfig, practice: Practice):
    """The login check to serve with (None: no login), after saying who may use the app. A login whenever the
    store has users; off a loopback address one is required unless --no_auth says the network is trusted."""
    where, address = practice.store.where, f"http://{config.host}:{config.port}"
    if config.no_auth:
        print(f"--no_auth: no login; anyone who can reach {address} practises, judges, and reads and downloads "
              f"every call and judgement in {where}, with no author recorded", flush=True)
        return None
    if practice.store.has_users():
        print(f"Login required: the users of {where} (train.py team users lists them)", flush=True)
        return practice.authenticate
    if not is_loopback(config.host):
        raise ConfigError(f"--host {config.host}: the app would be open to the network, and {where} has no user to "
                          f"log in with; add one (python train.py team add-user NAME --role trainer --store {where}) "
                          "or, on a trusted network only, pass --no_auth")
    print(f"No users in {where}: running for one local user (no login, calls recorded without an author; "
          "add users with train.py team add-user to ask for logins)", flush=True)
    return None


def serve(config: WebConfig) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("train.py web needs Gradio: pip install -e '.[web]'") from None
    check_port(config.host, config.port)
    practice = Practice(config, load_scenarios(config.scenarios) if config.scenarios else [])
    app = None
    try:
        auth = who_may_use(config, practice)
        app = build_app(config, practice)
        with stage("serving the practice app", f"every judgement made is in {practice.where}"):
            launch(app, config, auth)
            print(f"Practice app on http://{config.host}:{config.port} (Ctrl-C to stop)", flush=True)
            while True:  # until a signal: SIGINT and SIGTERM end here, as in every command
                time.sleep(1)
    finally:
        if app is not None:
            app.close(verbose=False)
        practice.stop()


def launch(app, config: WebConfig, auth) -> None:
    """Start the server on its own threads (`auth`: the login check, or None); Gradio's check that this machine
    reaches it is one line when it fails."""
    try:
        app.queue().launch(server_name=config.host, server_port=config.port, show_error=True, quiet=True,
                           prevent_thread_lock=True, auth=auth,
                           auth_message="Log in with your name and password in the team's store.")
    except ValueError as err:
        if "localhost is not accessible" not in str(err):
            raise
        raise ConfigError(f"--host {config.host} --port {config.port}: the app started but did not answer this "
                          "machine's own request within Gradio's check (3 s): a proxy for localhost, or a machine "
                          "too busy; unset the proxy or try again") from None
