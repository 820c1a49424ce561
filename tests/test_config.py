"""serve_config.yaml says what it means: Ray silently drops keys it does not know, so every key
is checked here against Ray's own schema, and the graph's resource requests are checked too. So
are the environment variables docs/operations.md recommends and the app sets, which Ray ignores as
silently when unknown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing

import pytest
from pydantic import BaseModel
from ray.serve._private.build_app import build_app as build_deployments
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

import deployments.app as app_module
from deployments.config import SiglipAppArgs, TextEncoderConfig, VisionEncoderConfig
from deployments.testing.local_cluster import QUIET_CONTROL_PLANE
from tests.support.apps import USER_CONFIG_MODELS

# Fields Ray types as plain dicts, with the model that really reads them.
DICT_FIELD_MODELS = {"autoscaling_config": AutoscalingConfig, "args": SiglipAppArgs}


def _nested_model(annotation) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as Optional[List[Model]]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        if (found := _nested_model(argument)) is not None:
            return found
    return None


def unknown_keys(data: dict, model: type[BaseModel], path: str = "") -> list[str]:
    """Every key in `data` that `model` (recursively) does not define."""
    found = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        field = model.model_fields.get(key)
        if field is None:
            found.append(where)
            continue
        if key == "user_config":
            nested = USER_CONFIG_MODELS.get(data.get("name"))
            if nested is None:
                found.append(f"{where} (no deployment reads a user_config)")
                continue
        else:
            nested = DICT_FIELD_MODELS.get(key) or _nested_model(field.annotation)
        if nested is None:
            continue
        for index, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, dict):
                found += unknown_keys(item, nested, f"{where}[{index}]" if isinstance(value, list) else where)
    return found


def test_every_key_in_serve_config_is_one_ray_or_the_app_reads(serve_config):
    ServeDeploySchema.model_validate(serve_config)
    assert unknown_keys(serve_config, ServeDeploySchema) == []


def test_the_key_check_catches_misspelled_and_renamed_keys(serve_config):
    broken = {**serve_config, "applications": [dict(serve_config["applications"][0])]}
    deployments = [dict(d) for d in broken["applications"][0]["deployments"]]
    deployments[0]["max_concurrent_queries"] = 100  # the pre-2.10 name, silently ignored by Ray
    deployments[1] = {**deployments[1], "autoscaling_config": {"target_num_ongoing_requests_per_replica": 4}}
    deployments[2] = {**deployments[2], "user_config": {"max_batchsize": 8}}
    broken["applications"][0]["deployments"] = deployments
    ServeDeploySchema.model_validate(broken)  # Ray itself accepts all three...
    found = unknown_keys(broken, ServeDeploySchema)
    assert any(key.endswith("max_concurrent_queries") for key in found)
    assert any(key.endswith("target_num_ongoing_requests_per_replica") for key in found)
    assert any(key.endswith("user_config.max_batchsize") for key in found)


def _deployment_configs(serve_config) -> dict[str, dict]:
    return {d["name"]: d for d in serve_config["applications"][0]["deployments"]}


@pytest.mark.parametrize("name", sorted(USER_CONFIG_MODELS))
def test_encoder_batches_fit_within_max_ongoing_requests(serve_config, name):
    """Ray never lets a batch hold more calls than max_ongoing_requests."""
    deployment = _deployment_configs(serve_config)[name]
    batching = USER_CONFIG_MODELS[name].model_validate(deployment["user_config"])
    assert deployment["max_ongoing_requests"] >= max(map(batching.max_batch_size_on, batching.AUTO_MAX_BATCH_SIZE))


@pytest.mark.parametrize("config_model", [VisionEncoderConfig, TextEncoderConfig])
def test_auto_batch_size_is_smaller_on_a_cpu_and_a_number_wins_everywhere(config_model):
    auto = config_model.model_validate({"max_batch_size": "auto"})
    assert auto.max_batch_size_on("cpu") < auto.max_batch_size_on("cuda")
    fixed = config_model.model_validate({"max_batch_size": 5})
    assert fixed.max_batch_size_on("cpu") == fixed.max_batch_size_on("cuda") == 5
    with pytest.raises(ValueError):
        config_model.model_validate({"max_batch_size": "big"})


def _built(args: SiglipAppArgs):
    return {d.name: d for d in build_deployments(app_module.build_app(args), name="siglip").deployments}


def _cluster(monkeypatch, **resources: float) -> None:
    monkeypatch.setattr(app_module.ray, "cluster_resources", lambda: resources)


def test_on_two_cores_the_graph_fits_and_the_encoders_do_not_autoscale(serve_config, monkeypatch):
    _cluster(monkeypatch, CPU=2.0, memory=8 * 2**30)
    built = _built(SiglipAppArgs.model_validate(serve_config["applications"][0]["args"]))
    assert set(built) == {"Ingress", "ImagePreprocessor", "VisionEncoder", "TextEncoder", "ScoreFusion", "Collections"}
    assert sum(d.ray_actor_options["num_cpus"] * d.num_replicas for d in built.values()) <= 2
    assert all(d._deployment_config.autoscaling_config is None for d in built.values())
    assert built["VisionEncoder"].num_replicas == built["TextEncoder"].num_replicas == 2


def test_encoders_ask_for_a_gpu_only_when_the_cluster_has_one(monkeypatch):
    def gpus_per_stage(args: SiglipAppArgs) -> dict[str, float]:
        return {name: d.ray_actor_options.get("num_gpus", 0) for name, d in _built(args).items()}

    _cluster(monkeypatch, CPU=16.0, GPU=2.0)
    with_gpus = gpus_per_stage(SiglipAppArgs())
    assert with_gpus["VisionEncoder"] == with_gpus["TextEncoder"] == 1
    assert with_gpus["ImagePreprocessor"] == with_gpus["Ingress"] == with_gpus["ScoreFusion"] == 0

    _cluster(monkeypatch, CPU=2.0)
    assert gpus_per_stage(SiglipAppArgs())["VisionEncoder"] == 0
    # An autoscaling cluster may start with no GPU node: an explicit value wins.
    assert gpus_per_stage(SiglipAppArgs(encoder_gpus=0.5))["TextEncoder"] == 0.5


def test_app_args_reject_unknown_keys():
    with pytest.raises(ValueError):
        SiglipAppArgs.model_validate({"modle": "x"})
    with pytest.raises(ValueError):
        TextEncoderConfig.model_validate({"cache_sizes": 1})


def read_in_a_fresh_process(env: dict[str, str], expressions: list[str]) -> list:
    """`expressions`, over Serve's modules, evaluated in a new Python process with `env` set, as
    a Ray process started with those variables reads them."""
    script = ("import json, sys; from ray.serve._private import constants, handle_options, replica; "
              "from ray.serve._private.request_router import replica_wrapper; "
              "print(json.dumps([eval(expression) for expression in sys.argv[1:]]))")
    read_back = subprocess.run([sys.executable, "-c", script, *expressions], env={**os.environ, **env},
                               capture_output=True, text=True, check=True)
    return json.loads(read_back.stdout.splitlines()[-1])


def test_ray_reads_every_variable_of_the_quiet_control_plane():
    """Ray ignores a variable it does not know, as it does a YAML key: docs/operations.md's advice for
    small machines must still reach Serve after a Ray upgrade."""
    # Where Ray 2.60 keeps each variable's value.
    read_as = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "constants.CONTROL_LOOP_INTERVAL_S",
               "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "constants.RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"}
    assert set(read_as) == set(QUIET_CONTROL_PLANE)
    assert read_in_a_fresh_process(QUIET_CONTROL_PLANE, list(read_as.values())) == \
        [float(QUIET_CONTROL_PLANE[name]) for name in read_as]


def test_serve_reads_every_variable_of_the_apps_runtime_env(serve_config):
    """The app's replicas start with these variables: their stage calls go over Serve's gRPC
    transport, and neither end of a call caps its message below what the limits let through."""
    env_vars = serve_config["applications"][0]["runtime_env"]["env_vars"]
    expected = [("RAY_SERVE_USE_GRPC_BY_DEFAULT", "handle_options.DynamicHandleOptions()._by_reference", False),
                ("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH",  # the caller's cap on answers
                 "replica_wrapper.RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", 2**31 - 1),
                ("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH",  # the replica's cap on calls
                 "replica.RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", 2**31 - 1)]
    assert set(env_vars) == {name for name, _, _ in expected}
    assert read_in_a_fresh_process(env_vars, [expression for _, expression, _ in expected]) == \
        [value for _, _, value in expected]


def test_the_running_ingress_sends_its_stage_calls_over_grpc(serve_url):
    """The app's runtime_env reached its replicas: the Ingress's handles use Serve's gRPC
    transport (a DeploymentHandle keeps the transport of the process that made it)."""
    from deployments.testing.local_cluster import ask_each_replica

    def handles_by_reference(ingress) -> list[bool]:
        return [handle.handle_options._by_reference
                for handle in (ingress._preprocessor, ingress._vision, ingress._text, ingress._fusion)]

    answers = ask_each_replica("siglip", "Ingress", handles_by_reference)
    assert answers
    for answer in answers:
        assert answer == [False] * 4


def test_the_cpu_stages_run_without_torch(serve_url):
    """The Ingress, the preprocessor and ScoreFusion never import torch or transformers: each
    of their replicas would carry about 180 MB more, and the preprocessor scales to hundreds."""
    from deployments.testing.local_cluster import ask_each_replica

    def heavy_modules(_) -> list[str]:
        import sys

        return [name for name in ("torch", "transformers") if name in sys.modules]

    for deployment in ("Ingress", "ImagePreprocessor", "ScoreFusion"):
        answers = ask_each_replica("siglip", deployment, heavy_modules)
        assert answers and all(answer == [] for answer in answers), (deployment, answers)
    assert ask_each_replica("siglip", "VisionEncoder", heavy_modules)[0] == ["torch", "transformers"]
