"""The Redis key scheme lives in services/core/keys.py only, and its strings do not move (they are a contract with
the data already in Redis)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from services.core import keys

ROOT = Path(__file__).resolve().parents[2]
KEYS_MODULE = ROOT / "services" / "core" / "keys.py"
# String literals under services/ that look like keys and are not: (path, literal)
NOT_KEYS = {
    ("services/devtools/chaos/webhook_drip.py", "identification:"),  # webhook delivery ids `<event>:<sighting id>`
}


def redis_keys(placeholder: str) -> set[str]:
    """Every Redis key keys.py builds: its constants, and its builders called with `placeholder` arguments."""
    built = {value for name, value in vars(keys).items()
             if name.isupper() and isinstance(value, str) and name not in ("UPLOAD_PREFIX", "MODEL_VERSION_PREFIX")}
    for name, fn in vars(keys).items():
        if inspect.isfunction(fn) and name.endswith(("_key", "_stream")) \
                and name not in ("upload_key", "parse_upload_key"):
            built.add(fn(*[placeholder] * len(inspect.signature(fn).parameters)))
    return built


def _key_prefixes() -> set[str]:
    """The first segment of every key keys.py builds with a ':' (`sighting`, `webhooks`, ...)."""
    return {key.split(":", 1)[0] for key in redis_keys("x") if ":" in key}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def key_literals(path: Path, prefixes: set[str]) -> list[tuple[int, str]]:
    """(line, text) of each string literal in `path` (f-string parts included, docstrings not) that starts like a
    key: one of `prefixes`, then ':' and no space ("matcher: ..." is a log line)."""
    pattern = re.compile(r"^(%s):(?! )" % "|".join(re.escape(p) for p in sorted(prefixes)))
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and pattern.match(node.value)]


def test_the_scan_finds_the_keys_where_they_are_built():
    """The check below is not vacuous: run on keys.py it finds the key literals."""
    found = {text.split(":", 1)[0] for _, text in key_literals(KEYS_MODULE, _key_prefixes())}
    assert {"sighting", "identification", "webhooks", "confirmations", "identities", "reconciler"} <= found


def test_no_module_under_services_writes_a_redis_key_but_keys_py():
    prefixes = _key_prefixes()
    offenders = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if path == KEYS_MODULE or path.name.endswith("_pb2.py"):
            continue
        offenders += [f"{relative}:{line}: {text!r}" for line, text in key_literals(path, prefixes)
                      if (relative, text) not in NOT_KEYS]
    assert not offenders, "build these keys in services/core/keys.py:\n" + "\n".join(offenders)


@pytest.mark.parametrize("built, expected", [
    (keys.sighting_key("s1"), "sighting:s1"),
    (keys.SIGHTINGS_INDEX_KEY, "sightings:index"),
    (keys.owner_sightings_key("app"), "sightings:owner:app"),
    (keys.OPEN_SIGHTINGS_KEY, "sightings:open"),
    (keys.encounter_key("app", "e1"), "encounter:app:e1"),
    (keys.quota_key("app", "minute", 7), "quota:sightings:app:minute:7"),
    (keys.quota_key("app", "day", 3), "quota:sightings:app:day:3"),
    (keys.REVIEW_AWAITING_KEY, "review:awaiting"),
    (keys.REVIEW_AWAITING_BUILT_KEY, "review:awaiting:built"),
    (keys.bridge_seen_key("uploads/s1.jpg", "etag"), "bridge:seen:uploads/s1.jpg:etag"),
    (keys.embedded_key("s1"), "embedded:s1"),
    (keys.failure_key("s1"), "failure:s1"),
    (keys.model_version_key("ensemble:1:abc"), "model-version:ensemble:1:abc"),
    (keys.identification_key("s1"), "identification:s1"),
    (keys.embedding_key("s1"), "embedding:s1"),
    (keys.announced_key("s1"), "announced:s1"),
    (keys.UNANNOUNCED_INDEX, "identifications:unannounced"),
    (keys.IDENTIFICATIONS_STREAM, "identifications"),
    (keys.PARKED_INDEX, "matcher:parked"),
    (keys.PARKED_RECORDS, "matcher:parked:records"),
    (keys.RECONCILER_LEASE_KEY, "reconciler:lease"),
    (keys.reconciler_seen_key("t"), "reconciler:seen:t"),
    (keys.reconciler_position_key("t"), "reconciler:position:t"),
    (keys.reconciler_checked_key("t"), "reconciler:checked:t"),
    (keys.WEBHOOKS_PENDING_KEY, "webhooks:pending"),
    (keys.webhooks_retry_key("app"), "webhooks:retry:app"),
    (keys.WEBHOOKS_LEGACY_RETRY_KEY, "webhooks:retry"),
    (keys.webhooks_delivered_key("identification:s1"), "webhooks:delivered:identification:s1"),
    (keys.WEBHOOKS_DEAD_LETTER_STREAM, "webhooks:dead-letter"),
    (keys.confirmation_key("s1"), "confirmation:s1"),
    (keys.CONFIRMATIONS_INDEX_KEY, "confirmations:index"),
    (keys.CONFIRMATIONS_NEW_IDS_KEY, "confirmations:new-ids"),
    (keys.CONFIRMATIONS_AUDIT_STREAM, "confirmations:audit"),
    (keys.confirmation_audit_stream("s1"), "confirmations:audit:s1"),
    (keys.individual_confirmations_key("whale-1"), "confirmations:individual:whale-1"),
    (keys.INDIVIDUAL_CONFIRMATIONS_BUILT_KEY, "confirmations:individual:built"),
    (keys.IDENTITY_ALIASES_KEY, "identities:aliases"),
    (keys.IDENTITY_NAMES_KEY, "identities:names"),
    (keys.IDENTITY_OPS_KEY, "identities:ops"),
    (keys.identity_op_key("m1"), "identities:op:m1"),
    (keys.IDENTITY_LOG_STREAM, "identities:log"),
    (keys.chaos_filler_key(4), "chaos:maxmemory:filler:4"),
    (keys.upload_key("s1", "image/png"), "uploads/s1.png"),
])
def test_the_key_strings_stay_as_the_data_in_redis_has_them(built, expected):
    assert built == expected


def test_upload_keys_parse_back_and_others_are_refused():
    assert keys.parse_upload_key(keys.upload_key("abc", "image/webp")) == ("abc", "webp")
    for bad in ("other/abc.jpg", "uploads/abc", "uploads/a/b.jpg", "uploads/.jpg", "uploads/abc.gif"):
        with pytest.raises(keys.BadUploadKey):
            keys.parse_upload_key(bad)


def test_every_key_is_in_the_interfaces_page():
    page = (ROOT / "docs" / "interfaces.md").read_text()
    section = page.split("## Redis keys\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.M))
    shapes = {re.sub(r"<[^>]+>", "<>", key) for key in documented}
    built = redis_keys("<>")
    missing = {key for key in built if key not in shapes}
    assert not missing, f"keys built in services/core/keys.py but not in docs/interfaces.md 'Redis keys': {missing}"
