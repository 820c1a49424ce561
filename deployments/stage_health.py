"""Whether the stages behind the Ingress can serve, as Serve's controller reports them: for the
readiness endpoint, and so that a request needing a stage that failed to deploy is answered at
once with a 503 naming it, instead of waiting out its timeout."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

# Serve's DeploymentStatus for a deployment that gave up starting replicas (its constructor
# kept failing); it stays so until the app is deployed again.
DEPLOY_FAILED = "DEPLOY_FAILED"


@dataclass(frozen=True)
class StageState:
    status: str  # Serve's DeploymentStatus
    running: int  # replicas in the RUNNING state
    message: str = ""


def failed(state: StageState | None) -> str | None:
    """Why a request to this stage cannot succeed now, or None. Only a stage that failed to
    deploy: one that is replacing a dead replica, or still starting, is waited for, and a
    request that lost a replica is retried (deployments/stage_calls.py)."""
    if state is None:
        return "it is not deployed"
    if state.status == DEPLOY_FAILED:
        return f"it failed to deploy: {state.message}".strip()
    return None


def not_ready(state: StageState | None) -> str | None:
    """Why the stage is not ready to serve, or None: failed, or without a running replica."""
    if problem := failed(state):
        return problem
    if state.running == 0:
        return f"no replica is running yet ({state.status}) {state.message}".strip()
    return None


class StageWatch:
    """The stages' states, fetched from the controller at most once per `max_age_s`. A
    request reads the last states fetched while a fresh fetch runs in the background, so no
    request waits on the controller but the first one."""

    def __init__(self, fetch: Callable[[], Awaitable[dict[str, StageState]]], stages: Iterable[str],
                 max_age_s: float = 1.0):
        self._fetch = fetch
        self.stages = tuple(stages)
        self._max_age_s = max_age_s
        self._states: dict[str, StageState] | None = None
        self._error = ""
        self._fetched_at = float("-inf")
        self._refresh: asyncio.Future | None = None

    async def failed_stages(self, stages: Iterable[str]) -> dict[str, str]:
        """{stage: why} for those of `stages` that failed to deploy. While the states are
        unknown (the controller did not answer), none: the request's own calls will tell."""
        states = await self._current()
        if states is None:
            return {}
        return _problems(failed, states, stages)

    async def unready_stages(self) -> dict[str, str]:
        """{stage: why} for every stage that is not ready to serve."""
        states = await self._current()
        if states is None:
            return {"controller": f"the stages' states are unknown: {self._error}"}
        return _problems(not_ready, states, self.stages)

    async def _current(self) -> dict[str, StageState] | None:
        refresh = self._refresh
        if refresh is None and time.monotonic() - self._fetched_at > self._max_age_s:
            refresh = self._refresh = asyncio.ensure_future(self._update())
        if self._states is None and refresh is not None:
            await asyncio.shield(refresh)
        return self._states

    async def _update(self) -> None:
        try:
            self._states = await self._fetch()
        except Exception as error:  # keep the last states; try again after max_age_s
            self._error = f"{type(error).__name__}: {error}"
        finally:
            self._fetched_at = time.monotonic()
            self._refresh = None


def _problems(check: Callable[[StageState | None], str | None], states: dict[str, StageState],
              stages: Iterable[str]) -> dict[str, str]:
    found = {stage: check(states.get(stage)) for stage in stages}
    return {stage: problem for stage, problem in found.items() if problem}


def serve_stage_states(app_name: str) -> dict[str, StageState]:
    """Each deployment of the app as Serve's controller reports it (a blocking call)."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {name: StageState(getattr(d.status, "value", d.status), d.replica_states.get("RUNNING", 0),
                             d.message or "")
            for name, d in app.deployments.items()}
