"""Which tokens carry loss, on the real Qwen2.5 and SmolLM2 templates (and Qwen3's, which rewrites history)."""

import pytest
from conftest import QWEN3_TEMPLATE, SMOLLM2_TEMPLATE, load_qwen_tokenizer

from core.config import FormatOptions
from core.data.chat_format import ChatEncoder
from core.dataset import parse_record

PERSONA = "You are Dana, IT director at a 200-person logistics firm; budget is frozen until Q3."

RECORDS = {
    "single_turn": {"input": "Hi Dana, do you have two minutes?", "output": "Two minutes, go ahead."},
    "single_turn_system": {"system": PERSONA, "input": "Hi Dana!", "output": "Who is this?"},
    "multi_turn": {"messages": [
        {"role": "system", "content": PERSONA},
        {"role": "user", "content": "Hi Dana, I'm Sam from Acme."},
        {"role": "assistant", "content": "Hi Sam. What is this about?"},
        {"role": "user", "content": "Our routing software cuts fuel costs."},
        {"role": "assistant", "content": "Our budget is frozen until Q3."},
        {"role": "user", "content": "What if the first quarter were free?"},
        {"role": "assistant", "content": "Then send me a proposal."}]},
    "assistant_first": {"messages": [
        {"role": "system", "content": PERSONA},
        {"role": "assistant", "content": "Dana speaking."},
        {"role": "user", "content": "Hi Dana, Sam from Acme."},
        {"role": "assistant", "content": "I have a meeting in five minutes."}]},
    "sharegpt": {"conversations": [
        {"from": "human", "value": "Is this the owner?"},
        {"from": "gpt", "value": "Yes. Who's asking?"},
        {"from": "human", "value": "I sell payroll software."},
        {"from": "gpt", "value": "We do payroll in Excel and it works."}]},
}


def chat_of(record):
    conversation, _ = parse_record("test line 1", record, FormatOptions())
    return conversation.as_chat()


def trained_spans(sequence):
    """Contiguous runs of trained token ids."""
    spans, current = [], []
    for token, trained in zip(sequence.input_ids, sequence.trained):
        if trained:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return spans


def check_exact_masking(tokenizer, record):
    """Trained tokens = each reply's tokens + <|im_end|>; what precedes each = apply_chat_template(history, True)."""
    conversation, _ = parse_record("test line 1", record, FormatOptions())
    encoded = ChatEncoder(tokenizer, 4096).encode(conversation)
    chat = conversation.as_chat()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    replies = [i for i, m in enumerate(chat) if m["role"] == "assistant"]
    assert not encoded.split_by_template
    (sequence,) = encoded.sequences
    spans = trained_spans(sequence)
    assert len(spans) == len(replies)
    for span, index in zip(spans, replies):
        assert span[-1] == im_end
        assert tokenizer.decode(span[:-1]) == chat[index]["content"]
        prompt = tokenizer.apply_chat_template(chat[:index], add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        start = next(i for i in range(len(sequence.input_ids)) if sequence.input_ids[i:i + len(span)] == span
                     and sequence.trained[i])
        assert sequence.input_ids[:start] == list(prompt)
    # The whole sequence is the template's own rendering of the conversation.
    full = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False)
    assert sequence.input_ids == list(full)[: len(sequence.input_ids)]
    return sequence


@pytest.mark.parametrize("kind", list(RECORDS))
def test_qwen25_template_trains_exactly_the_replies(qwen_tokenizer, kind):
    check_exact_masking(qwen_tokenizer, RECORDS[kind])


@pytest.mark.parametrize("kind", list(RECORDS))
def test_smollm2_template_trains_exactly_the_replies(kind):
    check_exact_masking(load_qwen_tokenizer(SMOLLM2_TEMPLATE), RECORDS[kind])


def test_single_turn_labels_on_qwen(qwen_tokenizer):
    sequence = check_exact_masking(qwen_tokenizer, RECORDS["single_turn"])
    prompt = qwen_tokenizer.apply_chat_template([{"role": "user", "content": "Hi Dana, do you have two minutes?"}],
                                                add_generation_prompt=True, tokenize=True, return_dict=False)
    reply = qwen_tokenizer("Two minutes, go ahead.", add_special_tokens=False)["input_ids"]
    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert sequence.trained == [False] * len(prompt) + [True] * (len(reply) + 1)  # no "\n" after <|im_end|>
    assert sequence.input_ids[len(prompt):len(prompt) + len(reply) + 1] == reply + [im_end]


def test_last_assistant_only(qwen_tokenizer):
    conversation, _ = parse_record("t", RECORDS["multi_turn"], FormatOptions(train_on="last_assistant"))
    (sequence,) = ChatEncoder(qwen_tokenizer, 4096).encode(conversation).sequences
    (span,) = trained_spans(sequence)
    assert qwen_tokenizer.decode(span) == "Then send me a proposal.<|im_end|>"


def test_train_false_excludes_a_turn(qwen_tokenizer):
    record = {"messages": [dict(m) for m in RECORDS["multi_turn"]["messages"]]}
    record["messages"][4]["train"] = False
    conversation, _ = parse_record("t", record, FormatOptions())
    (sequence,) = ChatEncoder(qwen_tokenizer, 4096).encode(conversation).sequences
    texts = [qwen_tokenizer.decode(s) for s in trained_spans(sequence)]
    assert texts == ["Hi Sam. What is this about?<|im_end|>", "Then send me a proposal.<|im_end|>"]


def test_system_prompt_option_fills_missing_persona(qwen_tokenizer):
    conversation, _ = parse_record("t", RECORDS["single_turn"], FormatOptions(system_prompt=PERSONA))
    assert conversation.system_added
    (sequence,) = ChatEncoder(qwen_tokenizer, 4096).encode(conversation).sequences
    assert PERSONA in qwen_tokenizer.decode(sequence.input_ids)
    with_own, _ = parse_record("t", RECORDS["single_turn_system"], FormatOptions(system_prompt="other"))
    assert not with_own.system_added and with_own.messages[0].content == PERSONA


def test_history_rewriting_template_falls_back_to_one_sequence_per_turn():
    """Qwen3's template drops reasoning from earlier turns: one sequence per trained turn, each exact."""
    tokenizer = load_qwen_tokenizer(QWEN3_TEMPLATE)
    conversation, _ = parse_record("t", RECORDS["multi_turn"], FormatOptions())
    encoded = ChatEncoder(tokenizer, 4096).encode(conversation)
    chat = conversation.as_chat()
    replies = [i for i, m in enumerate(chat) if m["role"] == "assistant"]
    assert encoded.split_by_template and len(encoded.sequences) == len(replies)
    for sequence, index in zip(encoded.sequences, replies):
        (span,) = trained_spans(sequence)
        start = sequence.trained.index(True)
        prompt = tokenizer.apply_chat_template(chat[:index], add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        assert sequence.input_ids[:start] == list(prompt)
        assert tokenizer.decode(span).endswith(chat[index]["content"] + "<|im_end|>")


# Too long -------------------------------------------------------------------------------------------

def long_conversation(turns: int = 8):
    messages = [{"role": "system", "content": PERSONA}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question number {i}: " + "tell me more about pricing. " * 6})
        messages.append({"role": "assistant", "content": f"Answer number {i}: we are not interested right now."})
    return {"messages": messages}


def test_truncation_keeps_system_and_last_reply_and_drops_oldest_turns(qwen_tokenizer):
    record = long_conversation()
    full = ChatEncoder(qwen_tokenizer, 100_000).encode(parse_record("t", record, FormatOptions())[0])
    full_length = len(full.sequences[0].input_ids)
    limit = full_length // 2
    conversation, _ = parse_record("t", record, FormatOptions())
    encoded = ChatEncoder(qwen_tokenizer, limit).encode(conversation)
    (sequence,) = encoded.sequences
    text = qwen_tokenizer.decode(sequence.input_ids)
    assert len(sequence.input_ids) <= limit
    assert encoded.shortened == 1 and encoded.dropped_tokens == full_length - len(sequence.input_ids)
    assert encoded.replies_cut == 0
    assert PERSONA in text                                   # system prompt kept
    assert "Answer number 7: we are not interested right now.<|im_end|>" in text  # trained reply kept
    assert "Question number 0" not in text                    # the oldest turns went first
    kept = [i for i in range(8) if f"Question number {i}:" in text]
    assert kept == list(range(kept[0], 8))                    # what remains is the most recent, contiguous
    spans = [qwen_tokenizer.decode(s) for s in trained_spans(sequence)]
    assert spans[-1] == "Answer number 7: we are not interested right now.<|im_end|>"


def test_single_turn_too_long_keeps_the_end_of_the_question(qwen_tokenizer):
    record = {"system": PERSONA, "input": "Opening remark. " + "blah " * 300 + "so what is your budget?",
              "output": "We have no budget."}
    encoded = ChatEncoder(qwen_tokenizer, 120).encode(parse_record("t", record, FormatOptions())[0])
    (sequence,) = encoded.sequences
    text = qwen_tokenizer.decode(sequence.input_ids)
    assert len(sequence.input_ids) <= 120 and encoded.shortened == 1 and encoded.replies_cut == 0
    assert PERSONA in text and "so what is your budget?" in text and "Opening remark" not in text
    assert qwen_tokenizer.decode(trained_spans(sequence)[0]) == "We have no budget.<|im_end|>"


def test_reply_longer_than_max_length_is_cut_and_counted(qwen_tokenizer):
    record = {"input": "Tell me everything.", "output": "word " * 400}
    encoded = ChatEncoder(qwen_tokenizer, 64).encode(parse_record("t", record, FormatOptions())[0])
    (sequence,) = encoded.sequences
    assert len(sequence.input_ids) == 64 and encoded.replies_cut == 1 and encoded.shortened == 1
    assert "Tell me everything." in qwen_tokenizer.decode(sequence.input_ids)  # the prompt is kept whole
    assert sequence.trained[-1] and qwen_tokenizer.convert_tokens_to_ids("<|im_end|>") not in \
        [t for t, m in zip(sequence.input_ids, sequence.trained) if m]


def test_stop_tokens_are_only_end_of_turn_tokens_even_when_a_reply_is_cut(qwen_tokenizer):
    """A reply cut by --max_length ends on an ordinary token, which must not become a stop token."""
    encoder = ChatEncoder(qwen_tokenizer, 64)
    record = {"input": "Tell me everything.", "output": "word " * 400}
    (sequence,) = encoder.encode(parse_record("t", record, FormatOptions())[0]).sequences
    assert sequence.trained[-1] and sequence.input_ids[-1] not in encoder.end_of_turn_ids
    assert encoder.end_of_turn_ids == {qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")}
