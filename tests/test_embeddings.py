"""Embeddings: the engine's own (a separate embedding context on the loaded model, or an embedding model from
the library) through POST /v1/embeddings and /api/embed, driven by the official openai and ollama clients."""

from __future__ import annotations

import math
import re

import gguf
import httpx
import numpy as np
import ollama
import openai
import pytest
from gguf_factory import write_tiny_llama

from engine.cli import load_model
from engine.host import EngineHost
from engine.library import Library
from engine.server import Scheduler, ServerConfig
from engine.server.runner import ServerThread
from engine.server_cli import bind
from engine.settings import LoadSettings, SamplingSettings

KEY = "embed-key-0123456789"
N_EMBD = 64  # the tiny model's
TEXTS = ["The sea is calm tonight.", "A cat sleeps on the warm roof.", "The sea is calm tonight."]


@pytest.fixture(scope="module")
def server(tiny_model):
    engine = EngineHost()
    loaded = load_model(engine, tiny_model, LoadSettings(n_ctx=1024))
    engine.start_slots(1, loaded.n_ctx)  # the server decodes in the engine's slots
    config = ServerConfig(model_name="tiny", model_info=loaded.info, n_ctx=loaded.n_ctx, api_key=KEY)
    srv = ServerThread(config, Scheduler(engine, lambda e: None), bind("127.0.0.1", 0)).start()
    srv.engine = engine
    yield srv
    srv.stop()
    engine.close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def vectors(reply) -> list[list[float]]:
    assert [d.index for d in reply.data] == list(range(len(reply.data)))
    return [d.embedding for d in reply.data]


def test_unit_vectors_of_the_models_width_with_exact_usage(client, tiny_runtime):
    reply = client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")
    vecs = vectors(reply)
    assert [len(v) for v in vecs] == [N_EMBD] * 3
    for v in vecs:
        assert math.sqrt(sum(x * x for x in v)) == pytest.approx(1.0, abs=1e-5)
    assert vecs[0] == vecs[2] and vecs[0] != vecs[1]  # identical texts, identical vectors
    counts = [len(tiny_runtime.tokenize(t, add_special=True, parse_special=False)) for t in TEXTS]
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == sum(counts)


def test_a_batch_comes_back_in_order_equal_to_single_requests(client):
    batch = vectors(client.embeddings.create(model="tiny", input=TEXTS[:2][::-1], encoding_format="float"))
    singles = [vectors(client.embeddings.create(model="tiny", input=t, encoding_format="float"))[0]
               for t in TEXTS[:2][::-1]]  # fmt: skip
    np.testing.assert_allclose(batch, singles, atol=1e-6)


def test_base64_and_token_arrays(client, tiny_runtime):
    floats = vectors(client.embeddings.create(model="tiny", input=TEXTS[0], encoding_format="float"))[0]
    # the openai client asks for base64 by default and decodes it
    assert vectors(client.embeddings.create(model="tiny", input=TEXTS[0]))[0] == pytest.approx(
        floats, abs=1e-6
    )
    tokens = tiny_runtime.tokenize(TEXTS[0], add_special=True, parse_special=False)
    as_tokens = client.embeddings.create(model="tiny", input=[tokens], encoding_format="float")
    assert vectors(as_tokens)[0] == pytest.approx(floats, abs=1e-6)
    assert as_tokens.usage.prompt_tokens == len(tokens)


def test_embedding_leaves_the_chat_cache_alone(server):
    engine = server.engine
    sampling = SamplingSettings(temperature=0, max_tokens=4)
    from engine.events import Message, ReplyDone

    msgs = [Message("user", "Tell me about the sea.")]
    first = [e for e in engine.chat(msgs, sampling) if isinstance(e, ReplyDone)][0]
    engine.embed(["something else entirely"])
    again = [e for e in engine.chat(msgs, sampling) if isinstance(e, ReplyDone)][0]
    assert again.text == first.text and again.stats.reused_tokens >= first.stats.prompt_tokens - 1


def test_too_long_input_is_400_with_both_numbers(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="tiny", input=["short", "sea " * 800], encoding_format="float")
    body = err.value.body
    assert body["param"] == "input[1]"
    got = re.search(r"is (\d+) tokens long; .* at most (\d+) tokens", body["message"])
    assert got and int(got.group(1)) > 800 and int(got.group(2)) == 512, body[
        "message"
    ]  # the model's n_ctx_train


@pytest.mark.parametrize(
    ("body", "param"),
    [({"input": []}, "input"), ({"input": [1.5]}, "input[0]"), ({"input": ""}, "input"), ({"input": ["a", ""]}, "input[1]"),
     ({"input": "x", "encoding_format": "hex"}, "encoding_format"), ({"input": [[10**9]]}, "input[0]"),
     ({"input": "x", "dimensions": 3}, "dimensions"), ({"input": "x", "pooling": "max"}, "pooling")],
)  # fmt: skip
def test_bad_requests_are_400_naming_the_field(server, body, param):
    r = httpx.post(server.url + "/v1/embeddings", json={"model": "tiny", **body}, timeout=60,
                   headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_ollama_embed_matches_openai(server, client):
    oclient = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    got = oclient.embed(model="tiny", input=TEXTS[:2])
    openai_vectors = vectors(client.embeddings.create(model="tiny", input=TEXTS[:2], encoding_format="float"))
    np.testing.assert_allclose(got.embeddings, openai_vectors, atol=1e-6)
    assert got.prompt_eval_count > 0


def test_an_embedding_model_from_the_library(server, client, tmp_path, fresh_home):
    library = Library()
    pooled = write_tiny_llama(tmp_path / "embedder.gguf", n_embd=32, n_head=4, n_head_kv=2, seed=5,
                              kv={"llama.pooling_type": (2, gguf.GGUFValueType.UINT32)})  # CLS  # fmt: skip
    chat_only = write_tiny_llama(tmp_path / "chatty.gguf", seed=6)
    embedder = library.import_file(pooled, name="tiny-embedder")
    chatty = library.import_file(chat_only, name="chatty")
    reply = client.embeddings.create(model=embedder.name, input=TEXTS, encoding_format="float")
    vecs = vectors(reply)
    assert [len(v) for v in vecs] == [32] * 3 and reply.model == embedder.name
    # its declared CLS pooling takes the first token's vector: BOS, the same for every text in a causal model
    # (mean pooling, the default, would tell the texts apart)
    assert vecs[0] == vecs[1] == vecs[2]
    # the served model embeds again after it (the embedding context is switched back)
    assert (
        len(vectors(client.embeddings.create(model="tiny", input="x", encoding_format="float"))[0]) == N_EMBD
    )
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=chatty.name, input="x")
    assert err.value.body["param"] == "model" and "not an embedding model" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")


def test_pooling_in_chunks_equals_one_batch(tiny_runtime):
    """A chat model embeds long inputs in chunks (bounding llama.cpp's per-token logits buffer); the pooled
    result is the one a single batch gives."""
    from engine import embeddings

    tokens = tiny_runtime.tokenize("The sea is calm tonight. " * 8, add_special=True, parse_special=False)
    whole = embeddings._new_embedder("", tiny_runtime.model, False, 512, chunk=512)
    parts = embeddings._new_embedder("", tiny_runtime.model, False, 512, chunk=8)
    try:
        assert parts.chunk == 8 and len(tokens) > 4 * parts.chunk and whole.chunk >= len(tokens)
        np.testing.assert_allclose(
            embeddings._embed_one(parts, tokens), embeddings._embed_one(whole, tokens), atol=1e-4
        )
        # a text shorter than a chunk is the same either way; a different text is not
        assert embeddings._embed_one(parts, tokens[:5]) != embeddings._embed_one(whole, tokens)
    finally:
        whole.free()
        parts.free()
