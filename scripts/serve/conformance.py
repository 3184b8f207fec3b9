"""Conformance of `swift deploy` with the official `openai` Python client.

Run by scripts/serve/conformance (which installs the client and starts the server):
    python conformance.py BASE_URL API_KEY MODEL ADAPTER...
where each ADAPTER is a LoRA adapter name the server was started with (--adapters
NAME=PATH); the first must change the model's greedy answers.
Each check raises on a mismatch; the script prints one line per check and exits 0 when
all pass.
"""

import sys

import openai
from openai import OpenAI

base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
adapters = sys.argv[4:]
client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
checks = []


def check(fn):
    checks.append(fn)
    return fn


@check
def models_list():
    ids = [m.id for m in client.models.list()]
    assert ids == [model, *adapters], ids
    for name in [model, *adapters]:
        assert client.models.retrieve(name).id == name


@check
def chat_non_streaming():
    r = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "Tell me more"},
        ],
        max_tokens=8,
        temperature=0,
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    return r


@check
def chat_streaming_with_usage():
    full = chat_non_streaming()
    stream = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "Tell me more"},
        ],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, reasons = "", None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.finish_reason:
                reasons.append(c.finish_reason)
    assert text == full.choices[0].message.content, (text, full.choices[0].message.content)
    assert reasons == [full.choices[0].finish_reason], reasons
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens


@check
def chat_n_seed_logprobs():
    kw = dict(
        model=model,
        messages=[{"role": "user", "content": "Pick a word"}],
        max_tokens=6,
        temperature=1.0,
        n=2,
        seed=7,
        logprobs=True,
        top_logprobs=2,
    )
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1]
    content = a.choices[0].logprobs.content
    assert len(content) >= 1 and len(content[0].top_logprobs) == 2


@check
def completions_text_and_stream():
    r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, temperature=0)
    assert r.object == "text_completion"
    stream = client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True
    )
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text == r.choices[0].text, (text, r.choices[0].text)


def greedy(name, prompt, stream=False):
    kw = dict(model=name, messages=[{"role": "user", "content": prompt}], max_tokens=10, temperature=0)
    if not stream:
        r = client.chat.completions.create(**kw)
        assert r.model == name, (r.model, name)
        return r.choices[0].message.content
    return "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**kw, stream=True)
        if c.choices
    )


@check
def adapters_are_picked_by_model_name():
    """Each adapter answers under its own name, streaming or not, the same alone as when
    requests for every adapter and the base run at once; the first adapter changes the
    answers (so the base model is not silently served under its name)."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = ["Tell me about cats", "Write a haiku about rust", "What is rain?"]
    names = [model, *adapters]
    alone = {(n, p): greedy(n, p) for n in names for p in prompts}
    for n in names:
        assert greedy(n, prompts[0], stream=True) == alone[(n, prompts[0])]
    if adapters:
        assert any(alone[(model, p)] != alone[(adapters[0], p)] for p in prompts), alone
    keys = list(alone) * 2
    with ThreadPoolExecutor(len(keys)) as pool:
        together = list(pool.map(lambda k: greedy(*k), keys))
    for k, got in zip(keys, together):
        assert got == alone[k], (k, got, alone[k])


@check
def wrong_api_key():
    bad = OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
    except openai.AuthenticationError as e:
        assert e.status_code == 401
    else:
        raise AssertionError("a wrong key was accepted")


@check
def unknown_model():
    try:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    except openai.NotFoundError as e:
        assert e.code == "model_not_found", e.code
        for name in [model, *adapters]:
            assert name in e.message, (name, e.message)
    else:
        raise AssertionError("an unknown model was accepted")


@check
def bad_request_shapes():
    for kwargs, param in [
        (dict(messages=[]), "messages"),
        (dict(messages=[{"role": "user", "content": "x"}], max_tokens=-1), "max_tokens"),
        (dict(messages=[{"role": "user", "content": "x"}], temperature=5), "temperature"),
    ]:
        try:
            client.chat.completions.create(model=model, **kwargs)
        except openai.BadRequestError as e:
            assert e.status_code == 400
            assert e.param == param, (e.param, param)
            assert e.type == "invalid_request_error"
        else:
            raise AssertionError(f"{kwargs} was accepted")


for fn in checks:
    fn()
    print(f"ok  {fn.__name__}")
print(f"{len(checks)} conformance checks passed")
