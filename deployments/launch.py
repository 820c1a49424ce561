"""`siglip-serve`: Ray's `serve run`, which also carries the shell's SIGLIP_* variables to the
replicas.

`serve run serve_config.yaml` sends only the file to Ray. When it starts Ray itself, the
replicas inherit its environment; when Ray already runs (`ray start`, RAY_ADDRESS), they never
see it, and `SIGLIP_MODEL=... serve run` served the default model. This command writes the
variables into each application's `runtime_env.env_vars` in a copy of the file, then runs
`serve run` on the copy with the same options. API keys travel as their SHA-256 digests
(SIGLIP_API_KEY_SHA256), so that no key is stored in the deployed config, which Ray's
dashboard and `serve config` show.

    SIGLIP_MODEL=./my-checkpoint RAY_ADDRESS=auto siglip-serve serve_config.yaml
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path
from typing import Mapping

import yaml

from deployments.core.checkpoint import MODEL_ENV_VAR
from deployments.core.collection_rules import COLLECTIONS_URI_ENV_VAR
from deployments.gate import API_KEY_DIGESTS_ENV_VAR, API_KEYS_ENV_VAR, API_KEYS_FILE_ENV_VAR, key_digest

def replica_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the replicas need, from the shell's: local paths made absolute (replicas
    do not run in the shell's folder), keys replaced by their digests."""
    env = {}
    for name in (MODEL_ENV_VAR, API_KEYS_FILE_ENV_VAR):
        if value := environ.get(name):
            env[name] = os.path.abspath(value) if os.path.exists(value) else value
    if uri := environ.get(COLLECTIONS_URI_ENV_VAR):  # a folder that may not exist yet
        env[COLLECTIONS_URI_ENV_VAR] = uri if "://" in uri else os.path.abspath(uri)
    digests = [key_digest(key.strip()).hex() for key in environ.get(API_KEYS_ENV_VAR, "").split(",")
               if key.strip()]
    if given := environ.get(API_KEY_DIGESTS_ENV_VAR, "").strip():
        digests.append(given)
    if digests:
        env[API_KEY_DIGESTS_ENV_VAR] = ",".join(digests)
    elif API_KEYS_ENV_VAR in environ:
        env[API_KEYS_ENV_VAR] = environ[API_KEYS_ENV_VAR]  # set but empty: the Ingress refuses it
    return env


def with_environment(config: dict, env: Mapping[str, str]) -> dict:
    """A copy of the Serve config whose applications get `env`, over what the file sets."""
    config = copy.deepcopy(config)
    for app in config.get("applications", []):
        runtime_env = app.setdefault("runtime_env", {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env}
    return config


def main(argv: list[str] | None = None) -> None:
    from ray.serve.scripts import run

    argv = list(sys.argv[1:] if argv is None else argv)
    configs = [i for i, arg in enumerate(argv) if arg.endswith((".yaml", ".yml")) and os.path.isfile(arg)]
    if not configs:  # an import path, or --help: built in this process, which has the variables
        return run.main(args=argv, prog_name="siglip-serve")
    config_path = Path(argv[configs[0]])
    config = with_environment(yaml.safe_load(config_path.read_text()), replica_environment(os.environ))
    with tempfile.TemporaryDirectory(prefix="siglip-serve-") as folder:
        # Same name as the user's file: `serve run` prints it.
        copied = Path(folder) / config_path.name
        copied.write_text(yaml.safe_dump(config, sort_keys=False))
        argv[configs[0]] = str(copied)
        run.main(args=argv, prog_name="siglip-serve")


if __name__ == "__main__":
    main()
