"""Tenants: two teams never see each other's objects on any route; keys restricted to models, deleted, or over
budget are refused; the admin routes are the master key's alone; no key is ever stored in clear."""

from __future__ import annotations

import sqlite3

import openai
import pytest

from tests.gateway.conftest import MASTER, UPSTREAM_KEY, Gateway, chat, upload, wait_for


async def test_two_teams_cannot_see_read_cancel_or_list_each_others_objects(gateway: Gateway) -> None:
    alice = gateway.client(await gateway.new_key(team_id="team-a"))
    alice_colleague = gateway.client(await gateway.new_key(team_id="team-a"))
    bob = gateway.client(await gateway.new_key(team_id="team-b"))
    file_id = await upload(alice, [chat("a1"), chat("a2", "[[fail:400]]")])
    done = await wait_for(alice, (await alice.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")).id)
    assert done.output_file_id and done.error_file_id
    running = await alice.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                         completion_window="24h")
    files = (file_id, done.output_file_id, done.error_file_id)
    for f in files:
        for call in (bob.files.retrieve(f), bob.files.content(f), bob.files.delete(f)):
            with pytest.raises(openai.NotFoundError) as caught:
                await call
            # word for word an unknown id's answer
            assert caught.value.body == {"message": f"No such File object: {f}", "type": "invalid_request_error",
                                         "param": "id", "code": None}
    for b in (done.id, running.id):
        for batch_call in (bob.batches.retrieve(b), bob.batches.cancel(b)):
            with pytest.raises(openai.NotFoundError, match=f"No batch found with id '{b}'"):
                await batch_call
    with pytest.raises(openai.NotFoundError):
        await bob.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert (await bob.files.list()).data == [] and (await bob.batches.list()).data == []
    with pytest.raises(openai.BadRequestError):  # a cursor of another team's is no cursor
        await bob.batches.list(after=done.id)
    # the same team shares its objects; Alice's are all still there
    assert {b.id async for b in alice_colleague.batches.list()} == {done.id, running.id}
    assert {f.id for f in (await alice_colleague.files.list()).data} >= set(files)
    assert (await alice.files.content(file_id)).content.count(b"\n") == 2


async def test_a_key_without_a_team_owns_its_objects_alone(gateway: Gateway) -> None:
    one, other = gateway.client(await gateway.new_key()), gateway.client(await gateway.new_key())
    file_id = await upload(one, [chat("x")])
    with pytest.raises(openai.NotFoundError):
        await other.files.retrieve(file_id)


async def test_a_key_restricted_to_one_model_cannot_use_another(gateway: Gateway) -> None:
    client = gateway.client(await gateway.new_key(models=["gpt-4o-mini"]))
    assert [m.id async for m in client.models.list()] == ["gpt-4o-mini"]
    lines = [chat("ok"), chat("claude", model="claude-sonnet")]
    batch = await client.batches.create(input_file_id=await upload(client, lines), endpoint="/v1/chat/completions",
                                        completion_window="24h")
    assert batch.status == "failed" and batch.errors and batch.errors.data
    (error,) = batch.errors.data
    assert (error.code, error.line) == ("model_not_allowed", 2) and "claude-sonnet" in (error.message or "")
    status, body = await gateway.admin("POST", "/key/generate", json={"models": ["gpt-9"]})
    assert status == 400 and "gpt-9" in body["error"]["message"]


async def test_a_deleted_key_is_refused(gateway: Gateway) -> None:
    key = await gateway.new_key(team_id="t")
    client = gateway.client(key)
    await upload(client, [chat("a")])
    status, body = await gateway.admin("POST", "/key/delete", json={"keys": [key]})
    assert status == 200 and body == {"deleted_keys": [key]}
    with pytest.raises(openai.AuthenticationError):
        await client.files.list()
    status, _ = await gateway.admin("GET", "/key/info", params={"key": key})
    assert status == 404


async def test_the_admin_routes_take_the_master_key_only(gateway: Gateway) -> None:
    key = await gateway.new_key(team_id="t", max_budget=12.5, metadata={"owner": "ops"})
    calls = (("POST", "/key/generate", {"json": {}}), ("POST", "/key/delete", {"json": {"keys": [key]}}),
             ("GET", "/key/info", {"params": {"key": key}}))
    for method, path, kwargs in calls:
        status, body = await gateway.admin(method, path, key=key, **kwargs)
        assert status == 403 and body["error"]["type"] == "permission_error"
    status, body = await gateway.admin("GET", "/key/info", params={"key": key})
    assert status == 200
    assert body["info"]["team_id"] == "t" and body["info"]["max_budget"] == 12.5 and body["info"]["spend"] == 0
    assert body["info"]["metadata"] == {"owner": "ops"}


async def test_a_key_over_its_budget_gets_429_on_create(gateway: Gateway) -> None:
    key = await gateway.new_key(max_budget=1e-9)
    client = gateway.client(key)
    file_id = await upload(client, [chat(f"r{i}", "a question worth some tokens") for i in range(3)])
    first = await client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
    assert (await wait_for(client, first.id)).status == "completed"
    _, info = await gateway.admin("GET", "/key/info", params={"key": key})
    assert info["info"]["spend"] > 1e-9  # booked per request as the results came in
    with pytest.raises(openai.RateLimitError, match="Budget has been exceeded") as caught:
        await client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert caught.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    assert [b.id async for b in client.batches.list()] == [first.id]


async def test_keys_are_stored_hashed_and_upstream_keys_never(gateway: Gateway) -> None:
    key = await gateway.new_key(team_id="t")
    client = gateway.client(key)
    await wait_for(client, (await client.batches.create(input_file_id=await upload(client, [chat("a")]),
                                                        endpoint="/v1/chat/completions", completion_window="24h")).id)
    with sqlite3.connect(gateway.db) as conn:
        conn.execute("PRAGMA wal_checkpoint(FULL)")
        dump = "\n".join(conn.iterdump())
    for secret in (key, MASTER, UPSTREAM_KEY, "sk-ant-upstream-SECRET"):
        assert secret not in dump
    assert "proxy:gpt-4o-mini" in dump  # a literal key's route names it; the key stays in the config
