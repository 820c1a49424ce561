"""Keeps deploy/kuberay/rayservice.yaml's `serveConfigV2` equal to serve_config.yaml, plus the
few settings that a Kubernetes GPU cluster needs and a laptop must not have. Run it after
editing serve_config.yaml (tests/test_kuberay.py fails until you do):

    python -m deployments.kuberay            # rewrite the manifest's serveConfigV2
    python -m deployments.kuberay --check    # exit 1 if it differs

Only the serveConfigV2 block is rewritten; the rest of the manifest, comments included, is
left as written."""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "serve_config.yaml"
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
APP_IMPORT_PATH = "deployments.app:build_app"

# The app's args on Kubernetes. Serve builds the app as soon as the head is up, often before the
# autoscaler has started a GPU pod, so sizing from the cluster would see no GPU: the GPU sizing
# is chosen here. A vision and a text replica share each GPU. SIGLIP_MODEL points at the model
# volume, so the model id clients send is set to the hub id rather than that path.
KUBERNETES_ARGS = {"device": "cuda", "encoder_gpus": 0.5}

_BLOCK = re.compile(r"^(?P<key>  serveConfigV2: \|\n)(?P<body>(?:    .*\n|\n)*)", re.MULTILINE)


def serve_config_for_kubernetes(serve_config: dict) -> dict:
    config = copy.deepcopy(serve_config)
    apps = [app for app in config["applications"] if app.get("import_path") == APP_IMPORT_PATH]
    if not apps:
        raise ValueError(f"serve_config.yaml has no application with import_path {APP_IMPORT_PATH}")
    for app in apps:
        args = app.setdefault("args", {})
        args.update(KUBERNETES_ARGS)
        args.setdefault("served_model_name", args.get("model"))
    return config


def serve_config_v2(serve_config_text: str) -> str:
    """The serveConfigV2 string for a serve_config.yaml's text."""
    config = serve_config_for_kubernetes(yaml.safe_load(serve_config_text))
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def with_serve_config(manifest: str, serve_config_text: str) -> str:
    match = _BLOCK.search(manifest)
    if match is None:
        raise ValueError("the manifest has no `  serveConfigV2: |` block under spec")
    body = "".join(f"    {line}\n" if line else "\n" for line in serve_config_v2(serve_config_text).splitlines())
    return manifest[:match.start("body")] + body + manifest[match.end("body"):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the manifest differs")
    parser.add_argument("--serve-config", type=Path, default=SERVE_CONFIG)
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    options = parser.parse_args(argv)
    current = options.manifest.read_text()
    wanted = with_serve_config(current, options.serve_config.read_text())
    if options.check:
        if wanted != current:
            print(f"{options.manifest}'s serveConfigV2 differs from {options.serve_config}: "
                  "run python -m deployments.kuberay", file=sys.stderr)
            return 1
        return 0
    options.manifest.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
