"""How the Ingress calls the other stages for one request: the request's calls go out at once,
are cancelled together when the request is abandoned, and are all sent again when a replica
dies under them (inference is idempotent), within the request's timeout. Stage failures
become the client's ApiError."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from ray.exceptions import (NodeDiedError, ObjectLostError, RayActorError, RayTaskError,
                            WorkerCrashedError)
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from deployments.core.images import ImageInputError
from deployments.errors import ApiError
from deployments.metrics import stage_retries

logger = logging.getLogger("ray.serve")

# A replica that died, or its node, under a stage call. Inference is idempotent: send it again.
REPLICA_FAILURES = (RayActorError, ReplicaUnavailableError, WorkerCrashedError, NodeDiedError,
                    ObjectLostError)


@dataclass(frozen=True)
class RequestPolicy:
    timeout_s: float = 60
    retries: int = 3
    retry_backoff_s: float = 0.5
    images_per_call: int = 4
    texts_per_call: int = 8


def call_parts(count: int, most: int) -> list[slice]:
    """`count` items cut into as few calls of at most `most` items as hold them, of sizes that
    differ by one at most: 10 texts at 8 a call go as 5 and 5, not 8 and 2, so that calls on
    separate replicas finish together."""
    calls = -(-count // most)
    bounds = [count * call // calls for call in range(calls + 1)]
    return [slice(start, end) for start, end in zip(bounds, bounds[1:])]


class StageAttempt:
    """The stage calls of one attempt at a request. A request has several calls in flight at
    once (its image parts, its texts), some in coroutines that send the next stage's call when
    one answers. So an attempt that is abandoned (the client went away, the timeout passed, a
    stage failed) cancels every call it sent and every coroutine that would send more: no stage
    works on for no one, and a burst of abandoned requests leaves no backlog."""

    def __init__(self) -> None:
        self._sent: list[DeploymentResponse] = []

    def send(self, method: DeploymentHandle, *args) -> DeploymentResponse:
        response = method.remote(*args)
        self._sent.append(response)
        return response

    async def results(self, responses: Sequence[Awaitable | None]) -> list:
        """The results of the responses, or of coroutines that send more calls through this
        attempt, in order (None stays None)."""
        tasks = [asyncio.ensure_future(r) for r in responses if r is not None]
        try:
            done = iter(await asyncio.gather(*tasks))
        except BaseException:  # CancelledError included: the client went away
            for task in tasks:  # so that no coroutine goes on to send a call
                task.cancel()
            for response in self._sent:
                response.cancel()
            raise
        return [None if r is None else next(done) for r in responses]


StageCalls = Callable[[StageAttempt], Sequence[Awaitable | None]]


async def run_stage_calls(stage_calls: StageCalls, policy: RequestPolicy) -> list:
    """Sends a request's stage calls through a StageAttempt and awaits them, within the request
    timeout. When a replica dies under them, all are sent again, from the first stage: the
    dead replica's results may be lost, and inference is idempotent. Stage errors become the
    client's ApiError."""
    try:
        return await asyncio.wait_for(_with_retries(stage_calls, policy), policy.timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(504, f"The request did not finish within {policy.timeout_s:g} s.",
                       type="timeout_error", code="timeout") from None


async def _with_retries(stage_calls: StageCalls, policy: RequestPolicy) -> list:
    for attempt in range(policy.retries + 1):
        stage_attempt = StageAttempt()
        try:
            return await stage_attempt.results(stage_calls(stage_attempt))
        except Exception as error:
            if bad_image := root_cause(error, ImageInputError):
                raise ApiError(400, str(bad_image), param=bad_image.param, code="invalid_image") from None
            if full := root_cause(error, BackPressureError):
                raise ApiError(full.status_code, "The server is at capacity; retry later.",
                               type="overloaded_error", code="overloaded",
                               retry_after_s=full.retry_after_s or 1) from None
            cause = root_cause(error, REPLICA_FAILURES)
            if cause is None:
                raise
            logger.warning("Attempt %d of %d lost a replica (%s); sending the request again.",
                           attempt + 1, policy.retries + 1, type(cause).__name__)
            stage_retries().inc()
            await asyncio.sleep(policy.retry_backoff_s * 2 ** attempt)
    raise ApiError(503, "A serving stage kept failing; retry later.", type="service_unavailable",
                   code="stage_unavailable", retry_after_s=5)


def root_cause(error: BaseException, kind: type | tuple[type, ...]) -> BaseException | None:
    """The innermost exception of `kind` behind `error`, or None. Ray wraps a stage's exception
    once per stage it crosses (RayTaskError.cause), and Serve re-raises an upstream replica's
    death as a RayServeException whose __cause__ holds it."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, kind):
            found = error
        error = error.cause if isinstance(error, RayTaskError) and error.cause else error.__cause__
    return found
