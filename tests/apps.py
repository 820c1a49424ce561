"""Extra copies of the app, deployed beside the test session's one for a single test module."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def app_beside(serve_config: dict, name: str, route_prefix: str, modify) -> Iterator[None]:
    """Deploys a modified copy of the app beside the session's one (Serve's config is declarative,
    so both are sent), and removes it afterwards. `modify(app_config)` edits the copy in place."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    def deploy(applications: list[dict]) -> None:
        _get_global_client().deploy_apps(
            ServeDeploySchema.model_validate({"applications": applications}), _blocking=True)

    session_app = serve_config["applications"][0]
    copy_app = copy.deepcopy(session_app)
    copy_app.update(name=name, route_prefix=route_prefix)
    modify(copy_app)
    deploy([session_app, copy_app])
    try:
        yield
    finally:
        deploy([session_app])
