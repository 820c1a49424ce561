"""The smallest Ray Serve app there is, for measuring what Serve itself costs per request:
`GET /health` goes from the proxy to one replica, `POST /body` also reads a small body there
(the replica fetches it from the proxy: one more round trip), `GET /hop` adds one handle call
to a second replica that returns at once. `benchmarks/hop_latency.py` deploys it beside the
graph."""

from fastapi import FastAPI, Request
from ray import serve

api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Echo:
    async def __call__(self, value: int) -> int:
        return value


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Front:
    def __init__(self, echo):
        self._echo = echo

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @api.post("/body")
    async def body(self, request: Request) -> dict:
        return {"bytes": len(await request.body())}

    @api.get("/hop")
    async def hop(self) -> dict:
        return {"value": await self._echo.remote(1)}


app = Front.bind(Echo.bind())
