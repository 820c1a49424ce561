"""A two-stage app for tests/test_routing.py: Caller makes `calls` calls to Replier at once, and
answers which Replier replica took each."""

from __future__ import annotations

import asyncio

from ray import serve

from deployments.routing import SPREADING_OPTIONS


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0})
class Replier:
    def __init__(self):
        self._replica = serve.get_replica_context().replica_id.unique_id

    async def __call__(self) -> str:
        await asyncio.sleep(0.05)  # the calls of one request overlap, as a stage's do
        return self._replica


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Caller:
    def __init__(self, replier):
        self._replier = replier

    async def __call__(self, calls: int) -> list[str]:
        return await asyncio.gather(*[self._replier.remote() for _ in range(calls)])


def build_probe_app(args: dict):
    """args: {"spreading": bool}: Replier behind the app's router, or behind Ray's default."""
    replier = Replier.options(**SPREADING_OPTIONS) if args["spreading"] else Replier
    return Caller.bind(replier.bind())
