"""The shipped dashboard and alerts hold against the real tools: promtool checks and unit-tests
the alert rules, and a real Prometheus scrapes the session cluster under a mixed load (classify,
embeddings, rerank, a bad request, an image URL, a replica killed mid-request), then evaluates
every dashboard panel and every alert through its HTTP API. A panel over a metric the service
does not export fails, and so does one that shows no data after that load."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import ray
import yaml

from deployments.testing.local_cluster import replica_actors
from tests.support.apps import app_beside, wait_until_running
from tests.support.image_server import image_server
from tests.support.photos import data_uri, distinct, photos
from tests.support.prometheus import Prometheus, prometheus

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = json.loads((DEPLOY / "grafana" / "siglip.json").read_text())
APP, ROUTE = "siglip_monitored", "/monitored"
STAGES = ("Ingress", "ImagePreprocessor", "VisionEncoder", "TextEncoder", "ScoreFusion")
# Grafana's variables, as the dashboard would fill them in over this test's few minutes.
VARIABLES = {"$application": ".+", "$__rate_interval": "5m"}
RAW = photos()[0][1]


def _panels() -> list[tuple[str, str, list[str]]]:
    """(row, panel title, its PromQL expressions) for every panel of the dashboard."""
    found, row = [], ""
    for panel in DASHBOARD["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        found.append((row, panel["title"], [target["expr"] for target in panel["targets"]]))
    return found


def _filled(expression: str) -> str:
    for variable, value in VARIABLES.items():
        expression = expression.replace(variable, value)
    return expression


def _metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\bray_[a-z0-9_]+", expression))


def test_promtool_checks_and_unit_tests_the_alert_rules():
    for command in (["promtool", "check", "rules", str(ALERTS)],
                    ["promtool", "test", "rules", str(ALERTS.with_name("alerts_test.yaml"))]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_has_a_row_per_concern_and_its_gpu_panels_read_metrics_ray_exports():
    rows = [panel["title"] for panel in DASHBOARD["panels"] if panel["type"] == "row"]
    assert rows == ["Traffic and errors", "Latency", "Stages", "Caches", "GPUs"]
    # This machine has no GPU, so these series cannot appear here: their names are checked
    # against the GPU gauges of Ray's node reporter instead.
    from ray.dashboard.modules.reporter.reporter_agent import METRICS_GAUGES

    gpu_names = {name for row, _, expressions in _panels() if row == "GPUs"
                 for expression in expressions for name in _metric_names(expression)}
    assert gpu_names and {name.removeprefix("ray_") for name in gpu_names} <= set(METRICS_GAUGES)


def _monitored(app: dict) -> None:
    """One replica per stage, image URLs from loopback allowed (the fetch metrics)."""
    app["args"]["image_urls"] = {"allowed_hosts": ["127.0.0.1"], "total_timeout_s": 10}
    configured = {deployment["name"]: deployment for deployment in app["deployments"]}
    for stage in STAGES:
        configured.get(stage) or app["deployments"].append(configured.setdefault(stage, {"name": stage}))
        configured[stage]["num_replicas"] = 1


def _mixed_load(url: str, photo_url: str) -> None:
    uri = data_uri(RAW)
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(2):  # the second time, the image and the labels come from the caches
            assert client.post("/v1/classify", json={"input": [uri], "labels": ["a cat", "a dog"]}).status_code == 200
        assert client.post("/v1/classify", json={"input": [photo_url], "labels": ["a cat"]}).status_code == 200
        assert client.post("/v1/embeddings", json={"input": [{"image": data_uri(distinct(RAW, 1))}]}).status_code == 200
        assert client.post("/v1/rerank", json={"query": "a cat", "documents": ["a", "b"]}).status_code == 200
        assert client.post("/v1/classify", json={"input": ["%%%"], "labels": ["a"]}).status_code == 400


def _kill_the_text_encoder_under_load(url: str, prom: Prometheus) -> None:
    """Requests in flight when the only TextEncoder replica dies are re-sent (a stage retry).
    Most of the load may still be waiting in the Ingress at the kill, so up to three rounds,
    until Prometheus has seen a retry."""
    def embed(i: int) -> int:
        texts = [f"monitored {i} {j} {time.time()}" for j in range(32)]  # never cached
        return httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=120).status_code

    for _ in range(3):
        with ThreadPoolExecutor(16) as pool:
            answers = [pool.submit(embed, i) for i in range(64)]
            while sum(answer.done() for answer in answers) < 8:
                time.sleep(0.01)
            for actor in replica_actors(APP, "TextEncoder"):
                ray.kill(actor, no_restart=True)
            assert [answer.result() for answer in answers] == [200] * 64
        wait_until_running(APP)
        if prom.wait_until(f'ray_siglip_stage_retries_total{{application="{APP}"}}', timeout_s=15):
            return
    raise AssertionError("no request was re-sent after three kills")


@pytest.fixture(scope="module")
def monitored(serve_url, serve_config, metrics_port, tmp_path_factory):
    """Prometheus scraping the session cluster, after the mixed load on a copy of the app."""
    with app_beside(serve_config, APP, ROUTE, _monitored), image_server(RAW) as photos_url:
        wait_until_running(APP)
        workdir = tmp_path_factory.mktemp("prometheus")
        with prometheus([f"127.0.0.1:{metrics_port}"], [ALERTS], workdir) as prom:
            assert prom.wait_until('up{job="ray"} == 1'), "Prometheus cannot scrape the cluster"
            _kill_the_text_encoder_under_load(serve_url + ROUTE, prom)
            # The stages create their metrics on first use, and Prometheus sees no increase in
            # a series' first sample: load once, wait for every series, then load again.
            _mixed_load(serve_url + ROUTE, f"{photos_url}/photo")
            assert prom.wait_until(f'ray_siglip_image_fetch_seconds_count{{application="{APP}"}}')
            _mixed_load(serve_url + ROUTE, f"{photos_url}/photo")
            yield prom


@pytest.mark.parametrize("row, title, expressions",
                         [panel for panel in _panels() if panel[0] != "GPUs"],
                         ids=lambda value: value if isinstance(value, str) else None)
def test_every_panel_shows_data_of_metrics_that_exist(monitored, row, title, expressions):
    for expression in map(_filled, expressions):
        series = monitored.wait_until(expression, timeout_s=30, accept=_has_a_number)
        assert _has_a_number(series), f"{title!r}: {expression} -> {series}"
        missing = _metric_names(expression) - monitored.metric_names()
        assert not missing, f"{title!r} reads metrics nobody exports: {sorted(missing)}"


def _has_a_number(series: list[dict]) -> bool:
    return any(math.isfinite(float(item["value"][1])) for item in series)


def test_the_stage_metrics_name_each_stage(monitored):
    stages = {item["metric"]["deployment"] for item in monitored.wait_until(
        f'sum by (deployment) (ray_siglip_stage_latency_seconds_count{{application="{APP}"}})')}
    assert stages == {"ImagePreprocessor", "VisionEncoder", "TextEncoder", "ScoreFusion"}
    errors = monitored.wait_until(f'ray_siglip_request_errors_total{{application="{APP}"}}')
    assert {item["metric"]["type"] for item in errors} == {"invalid_request_error"}


def test_every_alert_evaluates_and_none_fires_on_a_healthy_service(monitored):
    alerts = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    exported = monitored.metric_names()
    for alert in alerts:
        monitored.query(alert["expr"])  # raises on a PromQL error, naming it
        # Only the autoscaler's metrics are missing on this fixed-size CPU cluster.
        assert _metric_names(alert["expr"]) - exported <= {"ray_serve_autoscaling_desired_replicas"}
    deadline = time.monotonic() + 30
    while not (rules := monitored.rules()) or any(rule.get("lastEvaluation", "").startswith("0001") for rule in rules):
        assert time.monotonic() < deadline, rules
        time.sleep(1)
    assert sorted(rule["name"] for rule in rules) == sorted(alert["alert"] for alert in alerts)
    assert [(rule["name"], rule["health"], rule.get("lastError")) for rule in rules
            if rule["health"] != "ok"] == []
    assert [rule["name"] for rule in rules if rule["state"] == "firing"] == []
