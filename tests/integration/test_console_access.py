"""The console's access controls through a real `conveyor api` process.

Sign-in (API keys and configured users), the session cookie and its flags, CSRF on every
form post, the three roles enforced on the server, security headers, escaping, and the
filters' errors. The ledger is the module's own PostgreSQL database, seeded through the
ledger's own job path (create, claim, fail), so every page has a real dead job to show.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from conveyor.worker.console.access import check_password
from conveyor.worker.errors import Failure
from conveyor.worker.ledger import Ledger, NewJob
from tests.conftest import REDIS_URL, create_ledger, drop_database, run_cli
from tests.integration.test_api_harness import Api, api_env, serve

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
SCRIPT = "<script>alert('owned')</script>"
TRACEBACK_MARKER = "RuntimeError: the gate is closed (traceback marker)"


@dataclass
class Seeded:
    dead_id: str
    other_id: str
    queue: str


@pytest.fixture(scope="module")
def ledger_url() -> Iterator[str]:
    url = create_ledger("conveyor_console")
    yield url
    drop_database(url)


@pytest.fixture(scope="module")
def seeded(ledger_url: str) -> Iterator[Seeded]:
    """A dead job (two failed attempts, a `<script>` in its payload) and a queued one."""
    ledger = Ledger(ledger_url)
    queue = f"console-{uuid.uuid4().hex[:8]}"
    dead = NewJob(
        id=str(uuid.uuid4()),
        task="test.gated",
        queue=queue,
        payload={"gate": "g", "customer_id": 42, "note": SCRIPT},
        max_attempts=2,
        idempotency_key=f"console-key-{queue}",
    )
    other = NewJob(
        id=str(uuid.uuid4()),
        task="test.gated",
        queue=queue,
        payload={"gate": "g", "customer_id": 7},
        max_attempts=2,
    )
    for job in (dead, other):
        ledger.create(job)
    failure = Failure("builtins.RuntimeError", "the gate is closed", TRACEBACK_MARKER)
    for attempt, retry_in_s in ((1, 0.0), (2, None)):
        claim = ledger.claim(dead.id, lease_s=10, worker="worker-a@host", foreign=dead)
        assert claim.attempt == attempt
        reason = "exhausted" if retry_in_s is None else None
        assert ledger.fail(dead.id, attempt, failure, retry_in_s=retry_in_s, dead_reason=reason)
    yield Seeded(dead.id, other.id, queue)
    ledger.dispose()


@pytest.fixture(scope="module")
def api(ledger_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("console")
    hashed = subprocess.run(
        [
            sys.executable,
            "-m",
            "conveyor.worker.cli",
            "console",
            "hash-password",
            "--password-stdin",
        ],
        input=f"{PASSWORD}\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert check_password(PASSWORD, hashed)
    user = f"alice:operator:{hashed}"
    env = api_env(ledger_url, REDIS_URL, tmp, console_users=user)
    yield from serve(tmp, env)


@pytest.fixture(scope="module")
def keys(api: Api) -> dict[str, str]:
    return {scope: api.key(scope) for scope in ("read", "operate", "admin", "enqueue")}


def login_form(client: httpx.Client) -> str:
    page = client.get("/console/login")
    assert page.status_code == 200
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def sign_in(api: Api, **credentials: str) -> httpx.Client:
    """A client holding a session cookie (fails the test if signing in fails)."""
    client = api.client()
    token = login_form(client)
    answer = client.post(
        "/console/login", data={"csrf_token": token, **credentials}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    assert "conveyor_session" in client.cookies
    return client


def csrf_of(client: httpx.Client) -> str:
    """The session's CSRF token, as every page's sign-out form carries it."""
    page = client.get("/console/audit")
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


PAGES = [
    "/console/",
    "/console/queues",
    "/console/jobs",
    "/console/jobs/some-id",
    "/console/dead-letters",
    "/console/dead-letters/preview?action=replay",
    "/console/audit",
    "/console/audit/1",
    "/console/keys",
]
FRAGMENTS = ["/console/fragments/overview", "/console/fragments/audit/1"]
POSTS = [
    "/console/logout",
    "/console/dead-letters/replay",
    "/console/dead-letters/purge",
    "/console/queues/q/pause",
    "/console/queues/q/resume",
    "/console/keys",
    "/console/keys/k/revoke",
]


def test_every_console_route_without_a_session_sends_to_sign_in_or_refuses(api: Api) -> None:
    client = api.client()
    for path in PAGES:
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/console/login?next=%2Fconsole"), path
    for path in FRAGMENTS:
        assert client.get(path).status_code == 401, path
    forged = api.client()
    forged.cookies.set("conveyor_session", "not-a-session", path="/console")
    for path in POSTS:
        assert client.post(path, data={"csrf_token": "x", "expected": "1"}).status_code == 401
        assert forged.post(path, data={"csrf_token": "x", "expected": "1"}).status_code == 401
    assert forged.get("/console/", follow_redirects=False).status_code == 303


def test_the_session_cookie_is_httponly_strict_and_secure_behind_tls(
    api: Api, keys: dict[str, str]
) -> None:
    for forwarded, secure in ((None, False), ("https", True)):
        client = api.client()
        headers = {"X-Forwarded-Proto": forwarded} if forwarded else {}
        form = client.get("/console/login", headers=headers)
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        # A Secure cookie is not sent back over plain HTTP: send it as a TLS proxy would.
        headers["Cookie"] = f"conveyor_login_csrf={form.cookies['conveyor_login_csrf']}"
        answer = client.post(
            "/console/login",
            data={"csrf_token": token.group(1), "api_key": keys["read"]},
            headers=headers,
            follow_redirects=False,
        )
        assert answer.status_code == 303
        cookie = next(
            c for c in answer.headers.get_list("set-cookie") if c.startswith("conveyor_session=")
        )
        flags = {part.strip().lower() for part in cookie.split(";")}
        assert {"httponly", "samesite=strict", "path=/console"} <= flags
        assert ("secure" in flags) is secure, cookie
        if secure:
            assert "strict-transport-security" in answer.headers


def test_every_page_carries_the_security_headers(api: Api, keys: dict[str, str]) -> None:
    client = sign_in(api, api_key=keys["admin"])
    for path in [*PAGES, "/console/login"]:
        answer = client.get(path)
        assert answer.status_code in (200, 404), (path, answer.status_code)
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["cache-control"] == "no-store"
    script = client.get("/console/static/console.js")
    assert script.status_code == 200
    assert "cache-control" not in script.headers


def test_a_post_without_the_right_csrf_token_changes_nothing(
    api: Api, keys: dict[str, str], ledger_url: str
) -> None:
    client = sign_in(api, api_key=keys["operate"])
    queue = f"csrf-{uuid.uuid4().hex[:8]}"
    for data in ({}, {"csrf_token": "wrong"}):
        answer = client.post(f"/console/queues/{queue}/pause", data=data)
        assert answer.status_code == 403
        assert "CSRF" in answer.text
    assert not paused(ledger_url, queue)
    done = client.post(
        f"/console/queues/{queue}/pause",
        data={"csrf_token": csrf_of(client)},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert paused(ledger_url, queue)
    client.post(f"/console/queues/{queue}/resume", data={"csrf_token": csrf_of(client)})
    assert not paused(ledger_url, queue)


def paused(ledger_url: str, queue: str) -> bool:
    with psycopg.connect(ledger_url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM conveyor_queue_pauses WHERE queue = %s", (queue,)
        ).fetchone()
    return bool(row and row[0])


def test_signing_in_needs_the_forms_own_token(api: Api, keys: dict[str, str]) -> None:
    client = api.client()
    answer = client.post("/console/login", data={"csrf_token": "guess", "api_key": keys["admin"]})
    assert answer.status_code == 401
    assert "conveyor_session" not in client.cookies


def test_a_script_in_a_payload_is_shown_as_text(
    api: Api, keys: dict[str, str], seeded: Seeded
) -> None:
    page = sign_in(api, api_key=keys["operate"]).get(f"/console/jobs/{seeded.dead_id}")
    assert page.status_code == 200
    assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in page.text
    assert SCRIPT not in page.text
    assert TRACEBACK_MARKER in page.text


def test_a_viewer_sees_no_payload_or_traceback_and_may_not_act(
    api: Api, keys: dict[str, str], seeded: Seeded, ledger_url: str
) -> None:
    viewer = sign_in(api, api_key=keys["read"])
    page = viewer.get(f"/console/jobs/{seeded.dead_id}")
    assert page.status_code == 200
    assert "worker-a@host" in page.text  # the attempts are there...
    assert "customer_id" not in page.text  # ...the payload is not
    assert TRACEBACK_MARKER not in page.text
    assert "the gate is closed" in page.text  # the error's message is not secret
    token = csrf_of(viewer)
    assert viewer.get("/console/dead-letters/preview?action=replay").status_code == 403
    form = {"csrf_token": token, "expected": "1", "task": "test.gated"}
    for path in ("/console/dead-letters/replay", "/console/dead-letters/purge"):
        assert viewer.post(path, data=form).status_code == 403
    assert viewer.post("/console/queues/q/pause", data={"csrf_token": token}).status_code == 403
    assert viewer.get("/console/keys").status_code == 403
    with psycopg.connect(ledger_url) as connection:
        state = connection.execute(
            "SELECT state, replayed_as FROM conveyor_jobs WHERE id = %s", (seeded.dead_id,)
        ).fetchone()
    assert state == ("dead", None)


def test_only_an_admin_manages_keys(api: Api, keys: dict[str, str]) -> None:
    operator = sign_in(api, api_key=keys["operate"])
    assert operator.get("/console/keys").status_code == 403
    admin = sign_in(api, api_key=keys["admin"])
    name = f"made-{uuid.uuid4().hex[:8]}"
    made = admin.post(
        "/console/keys", data={"csrf_token": csrf_of(admin), "name": name, "scope": ["read"]}
    )
    assert made.status_code == 200
    token = re.search(r'<pre id="new-token">(cvk_[^<]+)</pre>', made.text)
    assert token is not None
    assert api.client(token.group(1)).get("/v1/queues").status_code == 200
    admin.post(f"/console/keys/{name}/revoke", data={"csrf_token": csrf_of(admin)})
    listed = run_cli("apikey", "list", "--json", env=api.env)
    assert any(k["name"] == name and k["revoked_at"] for k in json.loads(listed.stdout))


def test_a_configured_user_signs_in_with_the_right_password_only(api: Api) -> None:
    client = sign_in(api, username="alice", password=PASSWORD)
    assert "user:alice (operator)" in client.get("/console/").text
    for name, password in (("alice", "wrong password here"), ("mallory", PASSWORD)):
        other = api.client()
        token = login_form(other)
        answer = other.post(
            "/console/login", data={"csrf_token": token, "username": name, "password": password}
        )
        assert answer.status_code == 401
        assert "do not open the console" in answer.text
        assert "conveyor_session" not in other.cookies


def test_a_key_that_may_only_enqueue_does_not_open_the_console(
    api: Api, keys: dict[str, str]
) -> None:
    client = api.client()
    answer = client.post(
        "/console/login", data={"csrf_token": login_form(client), "api_key": keys["enqueue"]}
    )
    assert answer.status_code == 401
    assert "conveyor_session" not in client.cookies


def test_signing_out_or_revoking_the_key_ends_the_session(api: Api) -> None:
    client = sign_in(api, api_key=api.key("read"))
    cookie = client.cookies["conveyor_session"]
    out = client.post(
        "/console/logout", data={"csrf_token": csrf_of(client)}, follow_redirects=False
    )
    assert out.status_code == 303
    replayed = api.client()
    replayed.cookies.set("conveyor_session", cookie, path="/console")
    assert replayed.get("/console/", follow_redirects=False).status_code == 303

    name = f"revoked-{uuid.uuid4().hex[:8]}"
    revoked = sign_in(api, api_key=api.key("read", name=name))
    assert revoked.get("/console/", follow_redirects=False).status_code == 200
    assert run_cli("apikey", "revoke", name, env=api.env).returncode == 0
    assert revoked.get("/console/", follow_redirects=False).status_code == 303


def test_after_signing_in_it_goes_back_only_within_the_console(
    api: Api, keys: dict[str, str]
) -> None:
    for target, landing in (
        ("/console/jobs?state=dead", "/console/jobs?state=dead"),
        ("https://elsewhere.example/", "/console/"),
        ("//elsewhere.example/console", "/console/"),
    ):
        client = api.client()
        answer = client.post(
            "/console/login",
            data={"csrf_token": login_form(client), "api_key": keys["read"], "next": target},
            follow_redirects=False,
        )
        assert answer.headers["location"] == landing


def test_filters_find_by_payload_field_and_key_and_explain_bad_values(
    api: Api, keys: dict[str, str], seeded: Seeded
) -> None:
    client = sign_in(api, api_key=keys["read"])
    found = client.get(
        "/console/jobs", params={"queue": seeded.queue, "payload": "customer_id = 42"}
    )
    assert found.status_code == 200
    assert seeded.dead_id in found.text
    assert seeded.other_id not in found.text
    by_key = client.get("/console/jobs", params={"idempotency_key": f"console-key-{seeded.queue}"})
    assert seeded.dead_id in by_key.text
    assert seeded.other_id not in by_key.text
    for params, reason in (
        ({"state": "bogus"}, "is not one of"),
        ({"payload": "no equals sign"}, "field = value"),
        ({"created_after": "yesterday"}, "is not a time"),
        ({"cursor": "garbage"}, "cursor"),
    ):
        answer = client.get("/console/jobs", params=params)
        assert answer.status_code == 400, params
        assert reason in answer.text
    assert client.get("/console/dead-letters", params={"reason": "bogus"}).status_code == 400


def test_sign_ins_and_actions_are_in_the_audit_log(api: Api, keys: dict[str, str]) -> None:
    name = f"audited-{uuid.uuid4().hex[:8]}"
    client = sign_in(api, api_key=api.key("operate", name=name))
    queue = f"audit-{uuid.uuid4().hex[:8]}"
    client.post(f"/console/queues/{queue}/pause", data={"csrf_token": csrf_of(client)})
    client.post(f"/console/queues/{queue}/resume", data={"csrf_token": csrf_of(client)})
    page = client.get("/console/audit").text
    rows = re.findall(r"<tr>(.*?)</tr>", page, flags=re.S)
    mine = [row for row in rows if f"apikey:{name}" in row]
    actions = [re.findall(r"<td>([a-z]+)</td>", row)[0] for row in mine]
    assert actions[:3] == ["resume", "pause", "login"]


def test_key_changes_are_audited_with_who_made_them(api: Api) -> None:
    admin = f"audit-admin-{uuid.uuid4().hex[:8]}"
    admin_token = api.key("admin", name=admin)  # made by the CLI
    client = sign_in(api, api_key=admin_token)
    made = f"audit-made-{uuid.uuid4().hex[:8]}"
    token = csrf_of(client)
    assert client.post("/console/keys", data={"csrf_token": token, "name": made, "scope": "read"})
    revoked = client.post(f"/console/keys/{made}/revoke", data={"csrf_token": token})
    assert revoked.status_code in (200, 303)
    listed = run_cli("dlq", "audit", "--limit", "200", "--json", env=api.env)
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    about = {
        (entry["action"], entry["filters"].get("key")): entry["actor"]
        for entry in entries
        if entry["action"].startswith("key_")
    }
    assert "@" in about[("key_create", admin)]  # the CLI's user@host
    assert about[("key_create", made)] == f"apikey:{admin}"
    assert about[("key_revoke", made)] == f"apikey:{admin}"
    created = next(
        e for e in entries if e["action"] == "key_create" and e["filters"]["key"] == made
    )
    assert created["filters"]["scopes"] == "read"
    assert not any(token_part in listed.stdout for token_part in ("cvk_",))  # no token logged
