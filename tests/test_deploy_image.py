"""deploy/Dockerfile, checked without Docker (base images cannot be pulled here): hadolint finds
nothing in it, it builds on Ray's image for the Ray and Python the project pins, runs as a
non-root user, and installs exactly the project as pyproject.toml declares it, from the lock,
as .ci/run does."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "deploy" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1]) for line in lines]


def test_hadolint_finds_nothing():
    hadolint = Path(sys.executable).with_name("hadolint")
    lint = subprocess.run([str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr


def test_it_builds_on_rays_image_for_the_pinned_ray_and_python():
    [(_, image)] = [i for i in _instructions() if i[0] == "FROM"]
    ray_pin = next(d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                   if d.startswith("ray["))
    ray_version = ray_pin.split("==")[1]
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray_version)}-py311-cu\d+", image), image
    assert "(Linux x86_64, Python 3.11)" in (REPO / ".ci" / "requirements-test.lock").read_text()


def test_it_runs_as_a_non_root_user():
    users = [arguments for instruction, arguments in _instructions() if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_it_installs_the_project_from_the_lock_as_ci_does():
    runs = [arguments for instruction, arguments in _instructions() if instruction == "RUN"]
    installs = [shlex.split(command) for run in runs for command in run.split("&&") if "pip install" in command]
    targets = []
    for words in installs:
        assert words[words.index("-c") + 1] == ".ci/requirements-test.lock", words
        targets += [w for w in words[words.index("install") + 1:] if not w.startswith("-")
                    and w != ".ci/requirements-test.lock"]
    ci_torch = re.search(r"torch==[\w.]+", (REPO / ".ci" / "run").read_text()).group()
    assert targets == [ci_torch, "."]  # the project, no extra, nothing of the image's own
    copied = " ".join(arguments for instruction, arguments in _instructions() if instruction == "COPY")
    for needed in ("pyproject.toml", ".ci/requirements-test.lock", "deployments"):
        assert needed in copied, needed
