"""docs/configuration.md is generated from the code (python -m deployments.config_doc), so the
settings are documented in one place: the field descriptions. These fail when the committed
file lags behind the code or serve_config.yaml, or when a setting has no description."""

from __future__ import annotations

from deployments import config_doc
from deployments.config import SiglipAppArgs, TextEncoderConfig, VisionEncoderConfig


def test_the_committed_configuration_doc_is_what_the_code_says():
    assert config_doc.OUTPUT.read_text() == config_doc.render(), \
        "docs/configuration.md is out of date: run python -m deployments.config_doc"
    assert config_doc.main(["--check"]) == 0


def test_every_setting_says_what_it_does():
    for model in (SiglipAppArgs, VisionEncoderConfig, TextEncoderConfig):
        undocumented = [name for name, field in config_doc.model_fields(model) if not field.description]
        assert not undocumented, f"{model.__name__}: {undocumented}"
    rendered = config_doc.render()
    for name, _ in config_doc.model_fields(SiglipAppArgs):
        assert f"| `{name}` |" in rendered
