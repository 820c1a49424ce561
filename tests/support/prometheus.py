"""A throwaway Prometheus (Debian's `prometheus` package, which .ci/run installs) scraping the
test cluster, queried through its HTTP API as Grafana and Alertmanager would."""

from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import httpx
import yaml

from deployments.testing.local_cluster import free_port


class Prometheus:
    def __init__(self, url: str):
        self._http = httpx.Client(base_url=url, timeout=10)

    def query(self, expression: str) -> list[dict]:
        """The instant vector of `expression` now; a PromQL error raises, naming it."""
        answer = self._http.get("/api/v1/query", params={"query": expression}).json()
        if answer["status"] != "success":
            raise ValueError(f"{expression!r}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]["result"]

    def metric_names(self) -> set[str]:
        return set(self._http.get("/api/v1/label/__name__/values").json()["data"])

    def rules(self) -> list[dict]:
        groups = self._http.get("/api/v1/rules").json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def wait_until(self, expression: str, timeout_s: float = 60,
                   accept: Callable[[list[dict]], bool] = bool) -> list[dict]:
        """The first answer to `expression` that `accept`s (by default: a non-empty one) within
        `timeout_s`, else the last answer. Ray exports every second and Prometheus scrapes every
        second, so data trails the load by a few seconds."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expression)
            if accept(result) or time.monotonic() > deadline:
                return result
            time.sleep(1)


@contextmanager
def prometheus(targets: list[str], rule_files: list[Path], workdir: Path) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` (host:port) every second, evaluating `rule_files`."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed: apt-get install prometheus (.ci/run does)")
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": targets}]}],
    }))
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "prometheus.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start: {(workdir / 'prometheus.log').read_text()}")
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        process.terminate()
        process.wait(timeout=30)
