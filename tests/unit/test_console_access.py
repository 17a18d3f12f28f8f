"""The console's pure parts: roles from scopes, password hashes, users, payload filters."""

from __future__ import annotations

import pytest

from conveyor.worker.api.keys import Scope
from conveyor.worker.console.access import (
    Role,
    check_password,
    hash_password,
    parse_users,
    role_of,
)
from conveyor.worker.console.pages import BadFilter, payload_match
from conveyor.worker.console.web import safe_next
from conveyor.worker.errors import UsageError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("scopes", "role"),
    [
        ({Scope.READ}, Role.VIEWER),
        ({Scope.READ, Scope.ENQUEUE}, Role.VIEWER),
        ({Scope.OPERATE}, Role.OPERATOR),
        ({Scope.ADMIN}, Role.ADMIN),
        ({Scope.ENQUEUE}, None),
    ],
)
def test_a_keys_scopes_give_its_role(scopes: set[Scope], role: Role | None) -> None:
    assert role_of(frozenset(scopes)) is role


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR)
    assert Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR)
    assert not Role.OPERATOR.allows(Role.ADMIN)


def test_a_password_checks_against_its_hash_only() -> None:
    encoded = hash_password("a long enough secret")
    assert encoded.startswith("scrypt$16384$8$1$")
    assert check_password("a long enough secret", encoded)
    assert not check_password("a long enough secreT", encoded)
    assert hash_password("a long enough secret") != encoded  # salted
    assert not check_password("anything", "scrypt$not$a$hash")
    with pytest.raises(UsageError, match="12 characters"):
        hash_password("short")


def test_users_parse_and_bad_entries_say_what_is_wrong() -> None:
    encoded = hash_password("a long enough secret")
    users = parse_users([f"alice:admin:{encoded}", f"bob:viewer:{encoded}"])
    assert users["alice"].role is Role.ADMIN
    assert users["bob"].role is Role.VIEWER
    for bad in (f"carol:root:{encoded}", "dave:viewer:plaintext", "no-colons"):
        with pytest.raises(UsageError, match="name:role:hash"):
            parse_users([bad])


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("customer_id = 42", ("customer_id",), 42),
        ("payload.customer_id=42", ("customer_id",), 42),
        ('order.kind = "a b"', ("order", "kind"), "a b"),
        ("name = plain text", ("name",), "plain text"),
        ("flag = true", ("flag",), True),
        ('code = "42"', ("code",), "42"),
    ],
)
def test_a_payload_filter_reads_a_field_and_a_json_value(
    text: str, path: tuple[str, ...], value: object
) -> None:
    match = payload_match(text)
    assert match.path == path
    assert match.value == value
    assert type(match.value) is type(value)


@pytest.mark.parametrize("text", ["customer_id", "= 4", "a..b = 1", "x = [1]", 'x = {"a": 1}'])
def test_a_bad_payload_filter_is_refused(text: str) -> None:
    with pytest.raises(BadFilter):
        payload_match(text)


@pytest.mark.parametrize(
    ("target", "landing"),
    [
        ("/console/jobs?state=dead", "/console/jobs?state=dead"),
        ("https://elsewhere.example/", "/console/"),
        ("//elsewhere.example/", "/console/"),
        ("/console//elsewhere.example", "/console/"),
        ("/v1/jobs", "/console/"),
        (None, "/console/"),
    ],
)
def test_signing_in_lands_only_within_the_console(target: str | None, landing: str) -> None:
    assert safe_next(target) == landing
