"""deploy/kuberay holds together without a Kubernetes cluster: the RayService serves what
serve_config.yaml says, its fields are KubeRay's, the Kubernetes objects inside it and beside
it validate against Kubernetes' own schemas, and its pods fit the graph the app sizes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments import kuberay
from deployments.config import SiglipAppArgs
from deployments.sizing import STAGES, Cluster, size_graph
from tests.support.kuberay_schema import RayService

ROOT = Path(__file__).resolve().parents[1]
RAYSERVICE = yaml.safe_load(kuberay.MANIFEST.read_text())
MODEL_CACHE = list(yaml.safe_load_all((ROOT / "deploy" / "kuberay" / "model-cache.yaml").read_text()))
CLUSTER = RAYSERVICE["spec"]["rayClusterConfig"]
GROUPS = {group["groupName"]: group for group in CLUSTER["workerGroupSpecs"]}
# The oldest Kubernetes that KubeRay 1.4 supports, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.28", kubernetes_validate.latest_version())


def _serve_config() -> dict:
    return yaml.safe_load(RAYSERVICE["spec"]["serveConfigV2"])


def _pod_templates() -> dict[str, dict]:
    return {"head": CLUSTER["headGroupSpec"]["template"],
            **{name: group["template"] for name, group in GROUPS.items()}}


def _containers() -> dict[str, dict]:
    return {group: template["spec"]["containers"][0] for group, template in _pod_templates().items()}


def test_the_manifest_serves_serve_config_yaml_with_the_kubernetes_args():
    assert kuberay.main(["--check"]) == 0, "run python -m deployments.kuberay"
    expected = yaml.safe_load(kuberay.SERVE_CONFIG.read_text())
    app = expected["applications"][0]
    app["args"].update(kuberay.KUBERNETES_ARGS, served_model_name=app["args"]["model"])
    assert _serve_config() == expected


def test_a_serve_config_edit_is_caught_and_rewritten_in_the_block_alone(tmp_path):
    edited = tmp_path / "serve_config.yaml"
    edited.write_text(kuberay.SERVE_CONFIG.read_text().replace("request_timeout_s: 60", "request_timeout_s: 45"))
    manifest = tmp_path / "rayservice.yaml"
    manifest.write_text(kuberay.MANIFEST.read_text())
    paths = ["--serve-config", str(edited), "--manifest", str(manifest)]
    assert kuberay.main(["--check", *paths]) == 1
    assert kuberay.main(paths) == 0 and kuberay.main(["--check", *paths]) == 0
    rewritten = yaml.safe_load(manifest.read_text())
    assert yaml.safe_load(rewritten["spec"].pop("serveConfigV2"))["applications"][0]["args"]["request_timeout_s"] == 45
    original = yaml.safe_load(kuberay.MANIFEST.read_text())
    original["spec"].pop("serveConfigV2")
    assert rewritten == original
    # Comments outside the block stay as written.
    assert manifest.read_text().splitlines()[:16] == kuberay.MANIFEST.read_text().splitlines()[:16]


def test_serve_and_the_app_accept_the_serve_config():
    config = _serve_config()
    ServeDeploySchema.model_validate(config)
    app = config["applications"][0]
    # Serve drops unknown keys silently; the app's own args model refuses them.
    args = SiglipAppArgs.model_validate(app["args"])
    assert (args.device, args.encoder_gpus) == ("cuda", 0.5)
    assert {deployment["name"] for deployment in app["deployments"]} <= set(STAGES)
    # KubeRay's serve Service sends traffic to port 8000 of the pods.
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}


def test_the_rayservice_has_kuberays_fields_and_types():
    RayService.model_validate(RAYSERVICE)


def test_a_misspelled_or_mistyped_field_is_caught():
    broken = yaml.safe_load(kuberay.MANIFEST.read_text())
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplica"] = 1
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    with pytest.raises(ValueError, match=r"(?s)rayStartParams\.num-cpus.*minReplica"):
        RayService.model_validate(broken)
    template = broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]
    template["spec"]["containers"][0]["readinessProbe"]["periodSecs"] = 5
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecs"):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "broken"},
                                      "template": template}, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kubernetes_objects_validate_against_kubernetes_schemas(version):
    for document in MODEL_CACHE:
        kubernetes_validate.validate(document, version, strict=True)
    # Each group's pod template, as the PodTemplate object Kubernetes has for exactly that.
    for group, template in _pod_templates().items():
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": f"siglip-{group}"}, "template": template},
                                     version, strict=True)


def test_a_head_without_replicas_an_autoscaled_gpu_group_and_a_cpu_group():
    assert CLUSTER["rayVersion"] == ray.__version__
    assert CLUSTER["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert CLUSTER["enableInTreeAutoscaling"] is True
    gpu, cpu = GROUPS["gpu"], GROUPS["cpu"]
    assert 1 <= gpu["minReplicas"] < gpu["maxReplicas"] and 0 <= cpu["minReplicas"] < cpu["maxReplicas"]
    gpu_resources = _containers()["gpu"]["resources"]
    assert gpu_resources["limits"]["nvidia.com/gpu"] == gpu_resources["requests"]["nvidia.com/gpu"] == "1"
    assert all("nvidia.com/gpu" not in _containers()[group]["resources"]["limits"] for group in ("head", "cpu"))


def test_every_pod_runs_the_projects_image_with_the_model_volume_and_the_key_secret():
    version = next(line.split('"')[1] for line in (ROOT / "pyproject.toml").read_text().splitlines()
                   if line.startswith("version ="))
    dockerfile_base = next(line.split()[1] for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
                           if line.startswith("FROM "))
    assert dockerfile_base.startswith(f"rayproject/ray:{CLUSTER['rayVersion']}-")
    claim = next(document for document in MODEL_CACHE if document["kind"] == "PersistentVolumeClaim")
    job = next(document for document in MODEL_CACHE if document["kind"] == "Job")
    download = job["spec"]["template"]["spec"]["containers"][0]
    for group, container in _containers().items():
        assert container["image"].endswith(f"/siglip-serve:{version}") and container["image"] == download["image"]
        volumes = {volume["name"]: volume for volume in _pod_templates()[group]["spec"]["volumes"]}
        mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
        env = {variable["name"]: variable["value"] for variable in container["env"]}
        keys_folder, _ = env["SIGLIP_API_KEYS_FILE"].rsplit("/", 1)
        assert "secret" in mounts[keys_folder]
        model_volume = next(volume for path, volume in mounts.items() if env["SIGLIP_MODEL"].startswith(path + "/"))
        assert model_volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        # The folder the download Job fills, seen through the same volume.
        assert env["SIGLIP_MODEL"].removeprefix("/models") in download["command"][-1]


def test_worker_probes_ask_the_services_health_endpoints():
    for group in GROUPS:
        container = _containers()[group]
        assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
        script = container["livenessProbe"]["exec"]["command"][-1]
        assert "http://127.0.0.1:8000/health/live" in script
        subprocess.run(["bash", "-n", "-c", script], check=True)  # it parses


def test_one_gpu_pod_holds_the_whole_graph_at_its_minimum():
    """Head plus the GPU group's first pod must start every stage; the autoscaler adds pods for
    the rest."""
    sizing = size_graph(Cluster(cpus=0, gpus=0, memory_bytes=0), kuberay.KUBERNETES_ARGS["encoder_gpus"], None)
    cpus = sum(stage["ray_actor_options"]["num_cpus"] * stage["autoscaling_config"]["min_replicas"]
               for stage in sizing.stages.values())
    gpus = sum(stage["ray_actor_options"]["num_gpus"] * stage["autoscaling_config"]["min_replicas"]
               for stage in sizing.stages.values())
    limits = _containers()["gpu"]["resources"]["limits"]
    assert cpus <= float(limits["cpu"]) and gpus <= float(limits["nvidia.com/gpu"])
