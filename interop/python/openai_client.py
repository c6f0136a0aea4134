"""Drives `nak-node api` with the official `openai` client and checks what an OpenAI
user relies on: the same text streamed and not, the stream's shape (a role delta
first, one id, finish_reason null until the last choice, a usage chunk exactly when
asked), stop strings cut exactly across tokens, content as an array of text parts,
non-ASCII text intact, log-probabilities (chat's and the legacy completions' shapes),
finish_reason "length" exactly when max_tokens cut the text, `/health`, `/v1/models` and
`/metrics`, and OpenAI's error envelope (404 for an unknown model, 400 for a bad request). Prints one JSON object (the greedy text, for the caller to compare with
`nak-node generate`); exits non-zero on the first failed check.

    python3 openai_client.py BASE_URL MODEL PROMPT MAX_TOKENS
"""

import json
import sys
import time
import urllib.error
import urllib.request

import openai
from openai import OpenAI

base, model, prompt, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
report = {}

# Health (503 while the client still learns the servers, then 200) and the model list.
deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(base + "/health") as health:
            assert health.status == 200 and json.load(health)["status"] == "ok"
            break
    except urllib.error.HTTPError as e:
        assert e.code == 503 and json.load(e)["error"]["type"] == "unavailable_error", e
        assert time.monotonic() < deadline, "never healthy"
        time.sleep(0.2)
listed = client.models.list().data
assert [m.id for m in listed] == [model], listed

# Completions, whole and streamed: the same greedy text.
whole = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
text = whole.choices[0].text
assert whole.usage.completion_tokens <= max_tokens, whole.usage
assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens, whole.usage
# "length" exactly when max_tokens cut it, "stop" when the model ended it.
assert (whole.choices[0].finish_reason == "length") == (whole.usage.completion_tokens == max_tokens), whole
chunks = list(client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True))
assert "".join(c.choices[0].text for c in chunks) == text, (chunks, text)
assert len({c.id for c in chunks}) == 1, "one id per stream"
assert all(c.usage is None for c in chunks), "no usage chunk unless asked"
reasons = [c.choices[0].finish_reason for c in chunks]
assert all(r is None for r in reasons[:-1]) and reasons[-1] == whole.choices[0].finish_reason, reasons
report["text"] = text

# A stop string that spans tokens is cut exactly, never leaked in part.
if len(text) > 8:
    stop = text[len(text) // 2 - 2 : len(text) // 2 + 2]
    cut = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)], (cut.choices[0].text, stop, text)
    assert cut.choices[0].finish_reason == "stop", cut
    streamed = client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == text[: text.index(stop)]
    report["stop"] = stop

# Chat, streamed with usage: the shape llama-server sends.
messages = [{"role": "user", "content": "Écris « bonjour » en japonais : こんにちは?"}]
chunks = list(
    client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
)
assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices), "the role comes once"
assert len({c.id for c in chunks}) == 1, "one id per stream"
with_choices = [c for c in chunks if c.choices]
reasons = [c.choices[0].finish_reason for c in with_choices]
assert all(r is None for r in reasons[:-1]) and reasons[-1] in ("stop", "length"), reasons
assert with_choices[-1].choices[0].delta.content in (None, ""), "the last choice carries no text"
last = chunks[-1]
assert last.choices == [] and last.usage is not None and last.usage.completion_tokens > 0, last
streamed = "".join(c.choices[0].delta.content or "" for c in with_choices)
assert "\ufffd" not in streamed, streamed
whole = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
assert whole.choices[0].message.content == streamed, (whole, streamed)
assert whole.usage.completion_tokens == last.usage.completion_tokens, (whole.usage, last.usage)
parts = [{"role": "user", "content": [{"type": "text", "text": messages[0]["content"]}]}]
as_parts = client.chat.completions.create(model=model, messages=parts, max_tokens=12, temperature=0)
assert as_parts.choices[0].message.content == streamed, "content as text parts"
report["chat"] = streamed

# Log-probabilities: greedy picks the most likely token, whose bytes make the text.
lp = client.chat.completions.create(
    model=model, messages=messages, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3
)
content = lp.choices[0].logprobs.content
assert lp.choices[0].message.content == streamed, "the same text with logprobs"
assert b"".join(bytes(t.bytes) for t in content).decode("utf-8", "ignore") == streamed, content
assert len(content) == lp.usage.completion_tokens, (len(content), lp.usage)
for t in content:
    assert len(t.top_logprobs) == 3 and t.logprob <= 0, t
    assert abs(t.logprob - t.top_logprobs[0].logprob) < 1e-5, t
    assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob, t
chunks = list(
    client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3, stream=True
    )
)
streamed_lp = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
assert [(t.token, round(t.logprob, 4)) for t in streamed_lp] == [(t.token, round(t.logprob, 4)) for t in content]
legacy = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, logprobs=2)
assert "".join(legacy.choices[0].logprobs.tokens) == text, legacy.choices[0].logprobs
assert len(legacy.choices[0].logprobs.token_logprobs) == legacy.usage.completion_tokens
assert all(len(top) == 2 for top in legacy.choices[0].logprobs.top_logprobs)
report["logprobs"] = len(content)

# Errors in OpenAI's envelope.
try:
    client.completions.create(model="no-such-model", prompt=prompt, max_tokens=2)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404 and "error" in e.response.json(), e
try:
    client.completions.create(model=model, prompt=prompt, max_tokens=0)
    raise AssertionError("max_tokens 0 was accepted")
except openai.BadRequestError as e:
    body = e.response.json()["error"]
    assert e.status_code == 400 and body["type"] == "invalid_request_error" and body["message"], body

try:
    client.chat.completions.create(model=model, messages=messages, max_tokens=2, top_logprobs=2)
    raise AssertionError("top_logprobs without logprobs was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400, e

# /metrics: OpenMetrics text that counts what was just asked.
with urllib.request.urlopen(base + "/metrics") as scrape:
    metrics = scrape.read().decode()
assert 'nak_requests_total{endpoint="/v1/chat/completions",status="200"}' in metrics, metrics
assert 'nak_requests_total{endpoint="/v1/completions",status="404"}' in metrics, metrics
assert metrics.rstrip().endswith("# EOF"), metrics[-200:]

print(json.dumps(report, ensure_ascii=False))
