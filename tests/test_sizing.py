"""The graph sized from the cluster it is built on (deployments/sizing.py), without Ray: fixed
counts on CPUs alone, a full batch per vision replica let in at once, never more CPU asked for
than the cluster has nor more replicas than its memory holds; autoscaling on GPUs, at the GPU's
batch sizes. tests/test_placement.py and tests/test_api.py check what Serve actually runs."""

from __future__ import annotations

import pytest

from deployments.config import TextEncoderConfig, VisionEncoderConfig
from deployments.sizing import CPU_SHARE, STAGES, Cluster, size_graph

GIB = 2**30
SO400M_BYTES = 3_511_000_000


def _total_cpus(stages: dict) -> float:
    return sum(o["ray_actor_options"]["num_cpus"] * o["num_replicas"] for o in stages.values())


def test_a_two_core_machine_gets_a_single_thread_encoder_pair_per_core():
    sizing = size_graph(Cluster(cpus=2, gpus=0, memory_bytes=11 * GIB), 0, SO400M_BYTES)
    counts = {name: options["num_replicas"] for name, options in sizing.stages.items()}
    assert counts == {"Ingress": 1, "ImagePreprocessor": 1, "VisionEncoder": 2, "TextEncoder": 2, "ScoreFusion": 1,
                      "Collections": 1}
    assert sizing.torch_threads == 1
    assert sizing.stages["Ingress"]["max_ongoing_requests"] == 2 * VisionEncoderConfig.AUTO_MAX_BATCH_SIZE["cpu"]
    assert not any("autoscaling_config" in options for options in sizing.stages.values())
    assert not any(options["ray_actor_options"]["num_gpus"] for options in sizing.stages.values())


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 6, 8, 16, 64, 2.5])
def test_the_app_never_asks_for_more_than_its_share_of_the_cpus(cpus):
    sizing = size_graph(Cluster(cpus=cpus, gpus=0, memory_bytes=1000 * GIB), 0, SO400M_BYTES)
    assert _total_cpus(sizing.stages) <= CPU_SHARE * cpus + 1e-3
    encoders = sizing.stages["VisionEncoder"]["num_replicas"]
    assert 1 <= encoders <= cpus and encoders * sizing.torch_threads <= max(1, cpus)
    assert all(options["ray_actor_options"]["num_cpus"] > 0 for options in sizing.stages.values())


def test_a_big_machine_gets_fewer_replicas_with_more_threads():
    sizing = size_graph(Cluster(cpus=16, gpus=0, memory_bytes=1000 * GIB), 0, SO400M_BYTES)
    assert sizing.stages["VisionEncoder"]["num_replicas"] == 4 and sizing.torch_threads == 4
    assert sizing.stages["ImagePreprocessor"]["num_replicas"] == 4


def test_replicas_are_as_many_as_the_memory_holds():
    small = Cluster(cpus=8, gpus=0, memory_bytes=5 * GIB)
    assert size_graph(small, 0, SO400M_BYTES).stages["TextEncoder"]["num_replicas"] == 1
    assert size_graph(small, 0, SO400M_BYTES).torch_threads == 8
    # Weights not known (a hub id not yet downloaded): the cores decide.
    assert size_graph(small, 0, None).stages["TextEncoder"]["num_replicas"] == 4
    # Never none, even where not even one pair fits: Ray then reports the shortage.
    assert size_graph(Cluster(cpus=8, gpus=0, memory_bytes=GIB), 0, SO400M_BYTES).stages[
        "VisionEncoder"]["num_replicas"] == 1


def test_with_gpus_every_stage_autoscales_and_encoders_scale_on_a_full_gpu_batch(serve_config):
    sizing = size_graph(Cluster(cpus=64, gpus=4, memory_bytes=400 * GIB), 1.0, SO400M_BYTES)
    assert sizing.torch_threads is None
    assert set(sizing.stages) == set(STAGES)
    shipped = {d["name"]: d for d in serve_config["applications"][0]["deployments"]}
    for name, options in sizing.stages.items():
        scaling = options["autoscaling_config"]
        assert "num_replicas" not in options
        assert scaling["min_replicas"] == 1 and scaling["upscale_delay_s"] < scaling["downscale_delay_s"]
        max_ongoing = options.get("max_ongoing_requests") or shipped[name]["max_ongoing_requests"]
        assert scaling["target_ongoing_requests"] <= max_ongoing, name
        assert options["ray_actor_options"]["num_gpus"] == (1.0 if name.endswith("Encoder") else 0)
    for name, config in (("VisionEncoder", VisionEncoderConfig), ("TextEncoder", TextEncoderConfig)):
        assert sizing.stages[name]["autoscaling_config"]["target_ongoing_requests"] == \
            config.AUTO_MAX_BATCH_SIZE["cuda"]


def test_serve_config_leaves_the_sized_options_to_the_sizing(serve_config):
    """Ray gives the file precedence: a count or request in it would undo the sizing."""
    sized = {"num_replicas", "autoscaling_config", "ray_actor_options"}
    for deployment in serve_config["applications"][0]["deployments"]:
        assert not sized & set(deployment), deployment["name"]
    assert "Ingress" not in {d["name"] for d in serve_config["applications"][0]["deployments"]}
