"""Turn a conversation into token ids and a mask of the tokens that carry loss.

Correct by construction: for every trained assistant turn, the tokens before it are exactly
`tokenizer.apply_chat_template(history, add_generation_prompt=True)` (what the model sees at chat
time), and the trained tokens are the template's rendering of the reply up to and including its
end-of-turn token (`<|im_end|>` for ChatML), so the model learns to stop.

A conversation normally becomes one sequence in which every trained reply is marked. Where the
template renders earlier turns differently once more turns follow (reasoning templates that drop old
thoughts, templates that add a default system prompt only to non-empty histories), one sequence
cannot satisfy the rule above for every turn; such a record becomes one sequence per trained turn,
each exact, and the summary counts it.

Text in a message that spells a token the tokenizer adds (`<|im_end|>`, `<tool_call>`) would become that
control token and corrupt the turns: `--special_tokens refuse` (the default) names the record, `text`
tokenises it as plain characters. A message longer than `--max_length` tokens can possibly fill is cut to
that many characters before it is tokenised, so a huge record costs what the options allow, not its size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.dataset import Conversation, Message
from core.errors import DataError, TemplateError

_OPEN, _CLOSE = "\ufdd0", "\ufdd1"  # noncharacters: around special-token text to be tokenised as plain text


@dataclass
class Sequence:
    input_ids: list[int]
    trained: list[bool]


@dataclass
class Encoded:
    """One record after formatting: its sequences and what shortening did to it."""
    sequences: list[Sequence]
    split_by_template: bool = False
    shortened: int = 0        # sequences that lost turns or text to fit --max_length
    dropped_tokens: int = 0   # tokens removed from them
    replies_cut: int = 0      # sequences whose trained reply itself was cut (its end-of-turn is not trained)
    special_text: int = 0     # messages whose special-token text was trained as plain text


@dataclass
class FormatStats:
    records: int = 0
    sequences: int = 0
    split_by_template: int = 0
    shortened: int = 0
    dropped_tokens: int = 0
    replies_cut: int = 0
    special_text: int = 0

    def add(self, encoded: Encoded) -> None:
        self.records += 1
        self.sequences += len(encoded.sequences)
        self.split_by_template += encoded.split_by_template
        self.shortened += encoded.shortened
        self.dropped_tokens += encoded.dropped_tokens
        self.replies_cut += encoded.replies_cut
        self.special_text += encoded.special_text


def special_token_text(tokenizer) -> re.Pattern | None:
    """What spells one of the tokenizer's added or special tokens in text (`<|im_end|>`, `<tool_call>`): the
    text `--special_tokens refuse` refuses in training data, and the practice apps in what they record."""
    special = set(tokenizer.all_special_ids) | {i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
    added = {tok.content for tok in tokenizer.added_tokens_decoder.values()}  # matched in text, special or not
    names = sorted(added | {tokenizer.convert_ids_to_tokens(i) for i in special}, key=len, reverse=True)
    return re.compile("|".join(re.escape(n) for n in names)) if names else None


class ChatEncoder:
    """Holds the tokenizer and what is derived from it once: special ids and a guard against injected tokens.

    `end_of_turn_ids` collects the tokens that close trained replies: generation stops on them.
    """

    def __init__(self, tokenizer, max_length: int, special_tokens: str = "refuse"):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.special_tokens = special_tokens
        self.end_of_turn_ids: set[int] = set()
        self.special_ids = set(tokenizer.all_special_ids) | {
            i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
        self._special_text = special_token_text(tokenizer)
        self._max_message_chars: int | None = None

    @property
    def max_message_chars(self) -> int:
        """No token is longer than the vocabulary's longest entry, so a message of more characters than that many
        times --max_length cannot fit in any case: only that much of it is tokenised (computed when first needed)."""
        if self._max_message_chars is None:
            self._max_message_chars = self.max_length * max(map(len, self.tokenizer.get_vocab()), default=1)
        return self._max_message_chars

    # Rendering -----------------------------------------------------------------------------------

    def _render(self, messages: list[Message], generation_prompt: bool, where: str) -> str:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        try:
            return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as err:  # jinja raises many types; the template is user-supplied code
            hint = (" (this template cannot start a conversation with the assistant without a system prompt:"
                    " add one or pass --system_prompt)") if messages == [] or messages[0].role == "assistant" else ""
            raise DataError(f"{where}: the chat template failed to render this conversation: {err}{hint}") from None

    def _turn_texts(self, conversation: Conversation) -> list[tuple[str, str]]:
        """(prompt, reply) text for every trained assistant turn, in order."""
        messages, where = conversation.messages, conversation.where
        texts = []
        for index, message in enumerate(messages):
            if message.role != "assistant" or not message.train:
                continue
            prompt = self._render(messages[:index], True, where)
            through = self._render(messages[: index + 1], False, where)
            texts.append((prompt, self._reply_text(prompt, through, messages[:index], message, where)))
        return texts

    def _reply_text(self, prompt: str, through: str, history: list[Message], reply: Message, where: str) -> str:
        """The template's rendering of one reply: what follows the generation prompt."""
        if through.startswith(prompt):
            return through[len(prompt):]
        # Some templates render a history differently when it is empty (SmolLM2 adds its default
        # system prompt only to non-empty ones): find the reply after the generation marker.
        marker = prompt[len(self._render(history, False, where)):] if history else prompt
        at = through.rfind(marker) if marker else -1
        if at < 0 or reply.content.strip()[:20] not in through[at + len(marker):]:
            raise TemplateError(f"{where}: cannot locate the assistant reply in the chat template's rendering; "
                                "the template does not continue its own generation prompt")
        return through[at + len(marker):]

    # Tokens --------------------------------------------------------------------------------------

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of rendered texts; text marked by `_as_text` is tokenised as plain characters."""
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return [self._tokenize_marked(t) if _OPEN in t else i for t, i in zip(texts, ids)]

    def _tokenize_marked(self, text: str) -> list[int]:
        ids = []
        for index, piece in enumerate(re.split(f"{_OPEN}(.*?){_CLOSE}", text, flags=re.S)):
            if index % 2 == 0:  # the template's own text, control tokens included
                ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
                continue
            while piece and self._special_text.search(piece):  # no added token may match inside: split it off
                ids += self._tokenize_plain(piece[:1])
                piece = piece[1:]
            ids += self._tokenize_plain(piece)
        return ids

    def _tokenize_plain(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []

    # What a message may hold ---------------------------------------------------------------------

    def _prepare(self, conversation: Conversation) -> int:
        """Cut over-long messages to what --max_length can use, and refuse or mark special-token text; return how
        many messages had special-token text marked (trained as plain text)."""
        marked = 0
        for index, message in enumerate(conversation.messages):
            if len(message.content) > self.max_length and len(message.content) > self.max_message_chars:
                keep = self.max_message_chars  # replies and system prompts keep their start, rep messages their end
                message.content = message.content[-keep:] if message.role == "user" else message.content[:keep]
            found = self._special_text.search(message.content) if self._special_text is not None else None
            if found is None:
                continue
            if self.special_tokens == "text":
                message.content = self._as_text(message.content)
                marked += 1
                continue
            what = "--system_prompt" if index == 0 and conversation.system_added else \
                f"{conversation.where}: message {index}"
            raise DataError(f"{what} contains the special token {found.group()!r}; it would corrupt the turn "
                            "structure: remove it, or pass --special_tokens text to train it as plain text")
        return marked

    def _as_text(self, text: str) -> str:
        return self._special_text.sub(lambda m: f"{_OPEN}{m.group()}{_CLOSE}", text.replace(_OPEN, "").replace(
            _CLOSE, ""))

    def _assemble(self, turns: list[tuple[list[int], list[int]]], where: str) -> tuple[list[Sequence], bool]:
        """Join (prompt ids, reply ids) turns into one sequence, or one per turn where prefixes disagree.

        A sequence ends with its last trained token: what the template writes after the final
        end-of-turn token (a newline) would be input that predicts nothing trained.
        """
        pieces = [(prompt, reply, self._trained_length(reply, where)) for prompt, reply in turns]
        ids: list[int] = []
        trained: list[bool] = []
        for prompt, reply, n in pieces:
            if prompt[: len(ids)] != ids:
                return [self._single(p, r, k) for p, r, k in pieces], True
            trained += [False] * (len(prompt) - len(ids)) + [True] * n + [False] * (len(reply) - n)
            ids = prompt + reply
        end = len(ids) - (len(pieces[-1][1]) - pieces[-1][2]) if pieces else 0
        return [Sequence(ids[:end], trained[:end])], False

    @staticmethod
    def _single(prompt: list[int], reply: list[int], n: int) -> Sequence:
        return Sequence(prompt + reply[:n], [False] * len(prompt) + [True] * n)

    def _trained_length(self, reply: list[int], where: str) -> int:
        """Train the reply through its end-of-turn token (its last special token), not what follows (a newline)."""
        for i in range(len(reply) - 1, -1, -1):
            if reply[i] in self.special_ids:
                self.end_of_turn_ids.add(reply[i])
                return i + 1
        raise TemplateError(f"{where}: the chat template does not close assistant turns with a special "
                            "token, so the model could not learn to stop; use a chat model's template")

    def prompt_ids(self, chat: list[dict]) -> list[int]:
        """What the model reads before its next reply (the template's generation prompt), with special-token text
        in the messages tokenised as plain text under `--special_tokens text`, exactly as training reads it."""
        if self.special_tokens == "text" and self._special_text is not None:
            chat = [{**m, "content": self._as_text(m["content"])} for m in chat]
        return self._tokenize([self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)])[0]

    def encode(self, conversation: Conversation) -> Encoded:
        return self.encode_many([conversation])[0]

    def encode_many(self, conversations: list[Conversation]) -> list[Encoded]:
        """Encode a chunk of records with one batched tokenizer call; over-long ones take the slow path."""
        marked = [self._prepare(c) for c in conversations]
        texts_per_record = [self._turn_texts(c) for c in conversations]
        flat = [text for texts in texts_per_record for pair in texts for text in pair]
        token_lists = iter(self._tokenize(flat))
        results = []
        for conversation, texts, special_text in zip(conversations, texts_per_record, marked):
            turns = [(next(token_lists), next(token_lists)) for _ in texts]
            sequences, split = self._assemble(turns, conversation.where)
            encoded = Encoded(sequences, split_by_template=split)
            if any(len(s.input_ids) > self.max_length for s in sequences):
                encoded = self._shorten(conversation, sequences, split)
            encoded.special_text = special_text
            results.append(encoded)
        return results

    # Too long ------------------------------------------------------------------------------------

    def _shorten(self, conversation: Conversation, sequences: list[Sequence], split: bool) -> Encoded:
        """Fit --max_length: keep the system prompt and each trained reply, drop the oldest turns first."""
        messages = conversation.messages
        targets = [i for i, m in enumerate(messages) if m.role == "assistant" and m.train]
        # In split mode each trained turn is its own sequence; otherwise one sequence ends at the last one.
        ends = targets if split else [targets[-1]]
        result = Encoded([], split_by_template=split)
        for end, sequence in zip(ends, sequences):
            if len(sequence.input_ids) <= self.max_length:
                result.sequences.append(sequence)
                continue
            shortened, cut = self._fit(messages[: end + 1], conversation.where, split, conversation.system_added)
            result.sequences.append(shortened)
            result.shortened += 1
            result.replies_cut += cut
            result.dropped_tokens += len(sequence.input_ids) - len(shortened.input_ids)
        return result

    def _encode_plain(self, messages: list[Message], where: str) -> tuple[list[Sequence], bool]:
        texts = self._turn_texts(Conversation(messages, where))
        tokens = iter(self._tokenize([t for pair in texts for t in pair]))
        return self._assemble([(next(tokens), next(tokens)) for _ in texts], where)

    def _encode_last_turn(self, messages: list[Message], where: str) -> Sequence:
        """Only the final reply trained; earlier replies are context."""
        context = [Message(m.role, m.content, False) for m in messages[:-1]]
        sequences, _ = self._encode_plain(context + [messages[-1]], where)
        return sequences[0]

    def _fit(self, messages: list[Message], where: str, last_only: bool, system_added: bool = False
             ) -> tuple[Sequence, int]:
        system = messages[:1] if messages[0].role == "system" else []
        body = messages[len(system):]

        def encode(candidate: list[Message]) -> Sequence:
            if last_only:
                return self._encode_last_turn(system + candidate, where)
            sequences, split = self._encode_plain(system + candidate, where)
            return sequences[-1] if split else sequences[0]

        sequence = encode(body)
        while len(sequence.input_ids) > self.max_length and len(body) > 2:
            body = body[1:]
            sequence = encode(body)
        if (len(sequence.input_ids) > self.max_length and len(body) == 2 and body[0].role == "user"
                and self._can_absorb(body[0].content, len(sequence.input_ids) - self.max_length)):
            body = [Message("user", self._keep_end(body[0].content, len(sequence.input_ids) - self.max_length)),
                    body[1]]
            sequence = encode(body)
            while len(sequence.input_ids) > self.max_length and body[0].content:
                body[0] = Message("user", self._keep_end(body[0].content, len(sequence.input_ids) - self.max_length))
                sequence = encode(body)
        if len(sequence.input_ids) <= self.max_length:
            return sequence, 0
        prompt_length = sequence.trained.index(True)
        if prompt_length >= self.max_length and system_added:
            raise DataError(f"--system_prompt leaves no room: with it, the shortest prompt of {where} is "
                            f"{prompt_length} tokens, not less than --max_length {self.max_length}; shorten "
                            "--system_prompt or raise --max_length")
        if prompt_length >= self.max_length:
            raise DataError(f"{where}: even shortened to its system prompt and last reply, the prompt is "
                            f"{prompt_length} tokens, not less than --max_length {self.max_length}")
        return Sequence(sequence.input_ids[: self.max_length], sequence.trained[: self.max_length]), 1

    def _can_absorb(self, text: str, excess_tokens: int) -> bool:
        """Whether shortening this message can make the sequence fit; a reply that alone is too long cannot."""
        return len(self._tokenize([text])[0]) > excess_tokens

    def _keep_end(self, text: str, excess_tokens: int) -> str:
        """Drop at least `excess_tokens` tokens from the start of a message, keeping its end."""
        ids = self._tokenize([text])[0]
        kept = self.tokenizer.decode(ids[min(len(ids), excess_tokens + 1):])
        return self._as_text(kept) if _OPEN in text else kept
