"""The continuous-batching engine: concurrent replies equal lone ones token for token, rows join and leave
mid-decode, the queue is bounded, a cancelled request frees its row, stop strings cut the reply."""

import threading

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.model.engine import Engine, QueueFull
from core.model.generation import Sampling, generate_reply, prompt_ids


@pytest.fixture(scope="module")
def tiny(tiny_qwen_1k_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_1k_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_qwen_1k_dir)


HISTORIES = [[{"role": "system", "content": f"You are prospect {i}."}] +
             [{"role": "user", "content": f"Hello {'again ' * i}, do you have a minute for call {i}?"}] +
             ([{"role": "assistant", "content": "Maybe."}, {"role": "user", "content": "Great."}] if i % 2 else [])
             for i in range(8)]


def all_at_once(engine, tokenizer, requests) -> list[str]:
    """Each (history, sampling, seed) submitted from its own thread at the same moment."""
    replies, start = [None] * len(requests), threading.Barrier(len(requests))

    def ask(i, history, sampling, seed):
        start.wait()
        replies[i] = engine.reply(prompt_ids(tokenizer, history), sampling, seed)
    threads = [threading.Thread(target=ask, args=(i, *r)) for i, r in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return replies


def test_eight_concurrent_replies_equal_each_sent_alone(tiny):
    model, tokenizer = tiny
    # different lengths, so that rows leave at different steps; greedy and seeded sampling side by side
    requests = [(h, Sampling(max_new_tokens=3 + i, greedy=i % 2 == 0), 100 + i) for i, h in enumerate(HISTORIES)]
    alone = [generate_reply(model, tokenizer, h, s, seed) for h, s, seed in requests]
    assert len(set(alone)) == len(alone)  # the histories do differ: a reply mixed up with another would show
    for max_batch in (8, 3):  # 3: rows join as others leave, mid-decode
        engine = Engine(model, tokenizer, max_batch=max_batch)
        try:
            assert all_at_once(engine, tokenizer, requests) == alone, max_batch
        finally:
            engine.close()


def test_queue_is_bounded_a_cancelled_request_frees_its_row_and_stop_strings_cut(tiny):
    model, tokenizer = tiny
    greedy = Sampling(max_new_tokens=12, greedy=True)
    prompt = prompt_ids(tokenizer, HISTORIES[0])
    whole = generate_reply(model, tokenizer, HISTORIES[0], greedy)
    engine = Engine(model, tokenizer, max_batch=1, max_queue=1)
    try:
        events = engine.events(prompt, Sampling(max_new_tokens=500, greedy=True))
        first = next(events)  # the long reply holds the only row
        assert first.kind == "text"
        waiting = engine.events(prompt, greedy)  # queued behind it
        with pytest.raises(QueueFull):
            engine.submit(prompt, greedy)
        events.close()  # the caller goes away: its row is freed at the next step, and the queued one runs
        assert "".join(e.text for e in waiting).strip() == whole
        stop = whole[len(whole) // 2:len(whole) // 2 + 3]
        assert engine.reply(prompt, greedy, stop=[stop]) == whole[:whole.index(stop)].strip()
    finally:
        engine.close()


def test_a_batched_practice_backend_streams_the_replies_of_the_unbatched_one(tiny_qwen_1k_dir, tiny):
    """What a practice session with many callers (the web app) opens: the same replies through the engine."""
    from core.config import LoadOptions
    from core.use import backend
    model, tokenizer = tiny
    batched = backend.open_backend(str(tiny_qwen_1k_dir), "", LoadOptions(device="cpu"), batched=True)
    try:
        sampling = Sampling(max_new_tokens=6)
        streamed = "".join(backend.stream(batched, HISTORIES[1], sampling, seed=5))
        assert streamed.strip() == generate_reply(model, tokenizer, HISTORIES[1], sampling, seed=5)
    finally:
        batched.engine.close()
