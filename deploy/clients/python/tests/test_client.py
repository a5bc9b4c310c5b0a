"""The client against a running `recall-worker standalone` (MiniLM, offline extractor, Qdrant
Edge, SQLite): append a conversation, wait for its batch, read the memory back every way."""

import time
import uuid

import anyio
import pytest

from recall_client import RecallClient, RecallError

pytestmark = pytest.mark.anyio

CHARACTER = "meher"

# 26 messages: more than the batch threshold (25), with self-disclosures the offline extractor
# keeps.
CONVERSATION = [
    ("user", "Hi Meher! I'm Kabir, finally trying this app my sister kept talking about"),
    ("assistant", "Hi Kabir! Your sister has great taste. What should I know about you?"),
    ("user", "My dog Pepper is a beagle who steals socks"),
    ("assistant", "Ha! Pepper sounds like a handful."),
    ("user", "I live in Indiranagar, Bengaluru, and I work as a product designer"),
    ("assistant", "A designer in Bengaluru! Do you enjoy it?"),
    ("user", "I love filter coffee, I drink three cups a day"),
    ("assistant", "Three cups! You must know every café around."),
]
while len(CONVERSATION) < 26:
    n = len(CONVERSATION)
    CONVERSATION.append(
        ("user", f"Just chatting, message number {n}")
        if n % 2 == 0
        else ("assistant", f"Happy to chat ({n})")
    )


async def wait_for_batch(recall: RecallClient, user: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        stats = await recall.stats(user, CHARACTER)
        if stats.batches["done"] >= 1 and stats.memories["current"] >= 1:
            return
        assert time.monotonic() < deadline, f"no batch completed: {stats}"
        await anyio.sleep(0.25)


async def test_memories_flow_from_messages_to_prompt(base_url: str, api_key: str) -> None:
    user = f"py_{uuid.uuid4().hex[:12]}"
    async with RecallClient(base_url, api_key) as recall:
        health = await recall.health()
        assert health.ok, health
        assert health.components["embedder"].dimension == 384

        for i, (role, text) in enumerate(CONVERSATION):
            result = await recall.append_message(
                user, CHARACTER, text, role, message_id=f"m{i:03d}", channel="whatsapp"
            )
            assert result.created and result.message_id == f"m{i:03d}"
        again = await recall.append_message(user, CHARACTER, "dup", message_id="m000")
        assert not again.created

        await wait_for_batch(recall, user)
        stats = await recall.stats(user, CHARACTER)
        assert stats.messages["total"] == len(CONVERSATION)
        assert stats.extractor == "offline"

        found = await recall.search(user, CHARACTER, "what is the name of my dog?", limit=3)
        assert 1 <= found.count <= 3
        assert any("Pepper" in hit.text for hit in found.results), found
        best = found.results[0]
        assert "Pepper" in best.text and best.source_message_ids == ["m002"], found

        ctx = await recall.get_conversation_context(
            user, CHARACTER, message="how is my dog doing?", max_tokens=300
        )
        assert "Pepper" in ctx.context, ctx.context
        assert ctx.max_tokens == 300 and ctx.estimated_tokens <= 300
        assert any("Pepper" in m.text for m in ctx.memories)

        prompt = await recall.enhance_system_prompt(
            user,
            CHARACTER,
            "You are Meher, warm and witty.",
            message="does my dog still steal socks?",
        )
        assert prompt.system_prompt.startswith("You are Meher, warm and witty.")
        assert "Pepper" in prompt.system_prompt
        assert prompt.memories_used >= 1

        check = await recall.check_batch(user, CHARACTER)
        assert check.user_id == user and check.reason in ("threshold", "idle", "not_due")


async def test_a_wrong_key_raises_the_servers_message(base_url: str) -> None:
    async with RecallClient(base_url, "not-the-key") as recall:
        with pytest.raises(RecallError) as caught:
            await recall.get_conversation_context("kabir", CHARACTER)
    err = caught.value
    assert err.status == 401 and err.code == "unauthorized"
    assert "Authorization: Bearer" in err.message and "Authorization: Bearer" in str(err)
    assert not err.retryable


async def test_bad_input_names_the_field(base_url: str, api_key: str) -> None:
    async with RecallClient(base_url, api_key) as recall:
        with pytest.raises(RecallError) as caught:
            await recall.search("kabir", CHARACTER, "dog", limit=99)
        assert (caught.value.status, caught.value.field) == (400, "limit")
        assert "from 1 to 50" in caught.value.message
        with pytest.raises(RecallError) as caught:
            await recall.enhance_system_prompt("bad id!", CHARACTER, "You are Meher.")
        assert caught.value.field == "user_id"
        with pytest.raises(RecallError) as caught:
            await recall.append_message("kabir", CHARACTER, "hi", role="narrator")
        assert caught.value.field == "role"


async def test_an_unreachable_server_is_a_retryable_error() -> None:
    async with RecallClient("http://127.0.0.1:9", timeout=2.0) as recall:
        with pytest.raises(RecallError) as caught:
            await recall.health()
    assert caught.value.status == 0 and caught.value.retryable


async def test_the_openapi_document_is_valid_and_covers_the_client(base_url: str) -> None:
    from openapi_spec_validator import validate

    async with RecallClient(base_url) as recall:
        doc = await recall.openapi()
    validate(doc)
    assert doc["openapi"].startswith("3.")
    for path in (
        "/memory/search/{user_id}/{character_name}",
        "/memory/context/{user_id}/{character_name}",
        "/memory/enhance-prompt/{user_id}/{character_name}",
        "/memory/messages/{user_id}/{character_name}",
        "/memory/stats/{user_id}/{character_name}",
    ):
        assert path in doc["paths"], path
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
