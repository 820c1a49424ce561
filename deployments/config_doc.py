"""Writes docs/configuration.md from the code, so that the settings' documentation has one
source: the pydantic field descriptions in deployments/config.py (and the models it nests),
the values serve_config.yaml ships, and Ray's own descriptions of its deployment options.

    python -m deployments.config_doc            # rewrite docs/configuration.md
    python -m deployments.config_doc --check    # exit 1 if the committed file is out of date

Documentation tooling only: nothing on the serving path imports it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from deployments.config import SiglipAppArgs, TextEncoderConfig, VisionEncoderConfig
from deployments.core.checkpoint import MODEL_ENV_VAR
from deployments.core.collection_rules import COLLECTIONS_URI_ENV_VAR
from deployments.gate import API_KEY_DIGESTS_ENV_VAR, API_KEYS_ENV_VAR, API_KEYS_FILE_ENV_VAR
from deployments.sizing import CPU_SHARE, MAX_CPU_ENCODER_REPLICAS, STAGES, Cluster, size_graph

REPO = Path(__file__).resolve().parent.parent
SERVE_CONFIG = REPO / "serve_config.yaml"
OUTPUT = REPO / "docs" / "configuration.md"

ENVIRONMENT = {
    MODEL_ENV_VAR: "Hub id or local folder of the checkpoint to serve; wins over `args.model`.",
    COLLECTIONS_URI_ENV_VAR: "Where the collections live (a folder or an s3://, gs://, az:// URI); "
                             "wins over `args.collections.uri`.",
    API_KEYS_ENV_VAR: "Comma-separated API keys. Set (or one of the two below): every `/v1` route "
                      "needs `Authorization: Bearer <key>`. Unset: `/v1` is open.",
    API_KEYS_FILE_ENV_VAR: "A file with one API key per line (`#` starts a comment), e.g. a "
                           "mounted secret.",
    API_KEY_DIGESTS_ENV_VAR: "Comma-separated SHA-256 digests (hex) of API keys, for a config "
                             "that must not hold the keys themselves; `siglip-serve` sends "
                             f"`{API_KEYS_ENV_VAR}` this way.",
}

ENCODER_CONFIGS = {"VisionEncoder": VisionEncoderConfig, "TextEncoder": TextEncoderConfig}


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _value(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`"


def model_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """(dotted name, field) for each leaf setting of `model`, nested models flattened."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from model_fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def _settings_table(model: type[BaseModel]) -> list[str]:
    rows = ["| setting | default | what it does |", "|---|---|---|"]
    for name, field in model_fields(model):
        rows.append(f"| `{name}` | {_value(field.get_default(call_default_factory=True))} | "
                    f"{_one_line(field.description)} |")
    return rows


def _auto_batch_sizes(config: type[VisionEncoderConfig | TextEncoderConfig]) -> str:
    sizes = ", ".join(f"{size} on {device}" for device, size in config.AUTO_MAX_BATCH_SIZE.items())
    return f"`auto` is {sizes}."


def _flatten(settings: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in settings.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _ray_description(key: str) -> str:
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema

    section, _, field = key.partition(".")
    model = {"autoscaling_config": AutoscalingConfig,
             "ray_actor_options": RayActorOptionsSchema}.get(section, DeploymentSchema)
    info = model.model_fields.get(field if field else section)
    text = _one_line(info.description if info else "")
    return text.split(". ")[0].rstrip(".") + "." if text else ""


def _deployment_sections(app: dict) -> list[str]:
    lines = []
    for deployment in app["deployments"]:
        name = deployment["name"]
        lines += ["", f"### {name}", "", "| setting | shipped value | what it does (Ray's words) |",
                  "|---|---|---|"]
        # user_config is the encoders' own model, documented below from its field descriptions.
        options = {k: v for k, v in deployment.items() if k not in ("name", "user_config")}
        for key, value in _flatten(options):
            lines.append(f"| `{key}` | {_value(value)} | {_ray_description(key)} |")
        if name in ENCODER_CONFIGS:
            config = ENCODER_CONFIGS[name]
            lines += ["", f"`user_config` ({config.__name__}, applied to running replicas "
                          "without a restart):", ""]
            lines += _settings_table(config)
            lines += ["", _auto_batch_sizes(config)]
    return lines


# Clusters as Ray reports them (its `memory` resource is about 70% of the free RAM), serving
# so400m (3.5 GB of float32 weights), for the sizing examples.
EXAMPLE_CLUSTERS = {
    "2 CPUs, 11 GiB (a laptop)": Cluster(cpus=2, gpus=0, memory_bytes=11 * 2**30),
    "16 CPUs, 11 GiB": Cluster(cpus=16, gpus=0, memory_bytes=11 * 2**30),
    "16 CPUs, 90 GiB": Cluster(cpus=16, gpus=0, memory_bytes=90 * 2**30),
    "GPUs (`encoder_gpus` 1)": Cluster(cpus=64, gpus=4, memory_bytes=400 * 2**30),
}
SO400M_BYTES = 3_511_000_000


def _replicas(options: dict) -> str:
    if "num_replicas" in options:
        count = f"{options['num_replicas']}"
    else:
        scaling = options["autoscaling_config"]
        count = (f"{scaling['min_replicas']}-{scaling['max_replicas']}, target "
                 f"{scaling['target_ongoing_requests']}")
    actor = options["ray_actor_options"]
    gpus = f" + {actor['num_gpus']:g} GPU" if actor["num_gpus"] else ""
    cap = f"; at most {options['max_ongoing_requests']} at once" if "max_ongoing_requests" in options else ""
    return f"{count} × {actor['num_cpus']:g} CPU{gpus}{cap}"


def _sizing_section() -> list[str]:
    sizings = {name: size_graph(cluster, 1.0 if cluster.gpus else 0.0, SO400M_BYTES)
               for name, cluster in EXAMPLE_CLUSTERS.items()}
    lines = ["| stage | " + " | ".join(sizings) + " |", "|---|" + "---|" * len(sizings)]
    for stage in STAGES:
        lines.append(f"| {stage} | " + " | ".join(_replicas(s.stages[stage]) for s in sizings.values()) + " |")
    lines.append("| torch threads per encoder replica | "
                 + " | ".join(str(s.torch_threads or "Ray's") for s in sizings.values()) + " |")
    return lines


def render() -> str:
    app = yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by `python -m deployments.config_doc` from deployments/config.py and",
        "serve_config.yaml; tests/test_config_doc.py fails when this file is out of date. -->",
        "",
        "Everything is set in `serve_config.yaml`, which `serve run serve_config.yaml` deploys:",
        "the app's arguments under `args:` (validated by `SiglipAppArgs`; an unknown key is an",
        "error), and each stage's Ray Serve options under `deployments:`. Ray drops unknown keys",
        "there silently; `tests/test_config.py` checks every key the file holds.",
        "",
        "## Environment variables",
        "",
        "| variable | what it does |",
        "|---|---|",
        *[f"| `{name}` | {text} |" for name, text in ENVIRONMENT.items()],
        "",
        "The replicas read them. `serve run` passes on its environment only when it starts Ray",
        "itself. With Ray already running (`ray start`, `RAY_ADDRESS`), start with `siglip-serve",
        "serve_config.yaml` instead: `serve run` with the same options, which also carries these",
        "variables to the replicas (keys as their digests). Or set them in the file's",
        "`runtime_env.env_vars`, or where `ray start` runs on every node.",
        "",
        "## App arguments (`args:`)",
        "",
        *_settings_table(SiglipAppArgs),
        "",
        "## Sizing",
        "",
        "Replica counts, autoscaling and what each replica asks Ray for depend on the machine,",
        "so serve_config.yaml leaves them out: the app builder decides them from the cluster it",
        "deploys on (`deployments/sizing.py`). With GPUs (`encoder_gpus` above 0) every stage",
        "autoscales. On CPUs alone the counts are fixed: one single-thread encoder replica per",
        f"core up to {MAX_CPU_ENCODER_REPLICAS}, then more threads each, and fewer replicas where the weights",
        f"would not fit in Ray's memory; requests for {CPU_SHARE:.0%} of the CPUs in all; and the Ingress",
        "working on enough requests at once to fill each vision replica's batch, the rest",
        "waiting in order. For example, serving so400m:",
        "",
        *_sizing_section(),
        "",
        "Replicas: a count, or autoscaling's range and `target_ongoing_requests`; × the CPUs",
        "(and GPUs) each asks for. Any of these set for a stage under `deployments:` wins, as",
        "Ray gives the file precedence: `num_replicas` (with `autoscaling_config: null` on GPUs),",
        "`autoscaling_config`, `max_ongoing_requests`, `ray_actor_options` (which replaces the",
        "whole dict, so for an encoder include `num_gpus`). Serve's controller log shows the",
        "sizing chosen.",
        "",
        "## Stages (`deployments:`)",
        "",
        "The values serve_config.yaml ships, which do not depend on the machine.",
        *_deployment_sections(app),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/configuration.md differs from what the code says")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python -m deployments.config_doc", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
