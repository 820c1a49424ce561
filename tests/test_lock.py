"""The test environment is pinned: every package the project needs, with the `test` extra, is
in .ci/requirements-test.lock at the version installed. A dependency added to pyproject.toml
without refreshing the lock (`bash .ci/lock`) fails here, before a fresh machine resolves it
to whatever is newest that day."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCK = Path(__file__).resolve().parent.parent / ".ci" / "requirements-test.lock"


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _needed(root: str = "siglip-serve", extras: frozenset[str] = frozenset({"test"})) -> set[str]:
    """Every distribution the root needs with those extras, transitively, on this platform."""
    seen: set[str] = set()
    pending = [(root, extras)]
    while pending:
        name, wanted = pending.pop()
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            environments = [{"extra": extra} for extra in wanted] or [{"extra": ""}]
            if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            key = canonicalize_name(requirement.name)
            if (key, frozenset(requirement.extras)) not in seen:
                seen.add((key, frozenset(requirement.extras)))
                pending.append((requirement.name, frozenset(requirement.extras)))
    return {key for key, _ in seen}


def test_every_needed_package_is_pinned_at_its_installed_version():
    locked = _locked()
    needed = _needed()
    assert {"torch", "ray", "pytest", "schemathesis"} <= needed
    missing = sorted(needed - locked.keys())
    assert not missing, f"not in the lock; run `bash .ci/lock`: {missing}"
    drifted = {name: (locked[name], metadata.version(name)) for name in needed
               if metadata.version(name).split("+")[0] != locked[name]}
    assert not drifted, f"locked vs installed: {drifted}"
