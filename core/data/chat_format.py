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
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.dataset import Conversation, Message
from core.errors import DataError, TemplateError


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


@dataclass
class FormatStats:
    records: int = 0
    sequences: int = 0
    split_by_template: int = 0
    shortened: int = 0
    dropped_tokens: int = 0
    replies_cut: int = 0

    def add(self, encoded: Encoded) -> None:
        self.records += 1
        self.sequences += len(encoded.sequences)
        self.split_by_template += encoded.split_by_template
        self.shortened += encoded.shortened
        self.dropped_tokens += encoded.dropped_tokens
        self.replies_cut += encoded.replies_cut


class ChatEncoder:
    """Holds the tokenizer and what is derived from it once: special ids and a guard against injected tokens.

    `end_of_turn_ids` collects the tokens that close trained replies: generation stops on them.
    """

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.end_of_turn_ids: set[int] = set()
        self.special_ids = set(tokenizer.all_special_ids) | {
            i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
        names = sorted({tokenizer.convert_ids_to_tokens(i) for i in self.special_ids}, key=len, reverse=True)
        self._special_text = re.compile("|".join(re.escape(n) for n in names)) if names else None

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
        if self._special_text is not None:
            for index, message in enumerate(messages):
                found = self._special_text.search(message.content)
                if found and index == 0 and conversation.system_added:
                    raise DataError(f"--system_prompt contains the special token {found.group()!r}; it would "
                                    "corrupt the turn structure")
                if found:
                    raise DataError(f"{where}: message {index} contains the special token {found.group()!r}; "
                                    "it would corrupt the turn structure")
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
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

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

    def encode(self, conversation: Conversation) -> Encoded:
        return self.encode_many([conversation])[0]

    def encode_many(self, conversations: list[Conversation]) -> list[Encoded]:
        """Encode a chunk of records with one batched tokenizer call; over-long ones take the slow path."""
        texts_per_record = [self._turn_texts(c) for c in conversations]
        flat = [text for texts in texts_per_record for pair in texts for text in pair]
        token_lists = iter(self._tokenize(flat))
        results = []
        for conversation, texts in zip(conversations, texts_per_record):
            turns = [(next(token_lists), next(token_lists)) for _ in texts]
            sequences, split = self._assemble(turns, conversation.where)
            encoded = Encoded(sequences, split_by_template=split)
            if any(len(s.input_ids) > self.max_length for s in sequences):
                encoded = self._shorten(conversation, sequences, split)
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
            shortened, cut = self._fit(messages[: end + 1], conversation.where, split)
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

    def _fit(self, messages: list[Message], where: str, last_only: bool) -> tuple[Sequence, int]:
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
        return self.tokenizer.decode(ids[min(len(ids), excess_tokens + 1):])
