"""The registry, its generated page, and the error an unsupported family gets."""

from __future__ import annotations

from pathlib import Path

import pytest
from family_builders import FamilyCase
from test_encoder_decoder import CASES as ENCODER_DECODER_CASES
from test_families import CASES

from hf_fastrm import ArchitectureAdapter, register_architecture
from hf_fastrm.architectures import get_adapter, registered_adapters, supported_model_types, unregister_architecture
from hf_fastrm.architectures.docs import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "supported-models.md"


def case_model_type(case: FamilyCase) -> str:
    """Case names start with the model type they build (``qwen2_vl-video`` builds ``qwen2_vl``); some model types hold
    a dash themselves (``blip-2``), so the longest registered type the name starts with wins."""
    matches = [t for t in supported_model_types() if case.name == t or case.name.startswith(f"{t}-")]
    return max(matches, key=len) if matches else case.name.split("-")[0]


def test_committed_page_is_up_to_date():
    assert DOC.read_text() == render(), (
        "docs/supported-models.md is stale: run `python -m hf_fastrm.architectures.docs > docs/supported-models.md`"
    )


def test_tested_configs_name_the_suites_cases():
    # the shared suite's cases, and the encoder-decoder cases (test_encoder_decoder.py, named by model type)
    model_types = {case.name: case_model_type(case) for case in CASES} | {name: name for name in ENCODER_DECODER_CASES}
    model_types["blip"] = "blip"  # test_blip.py's own cases (its generate() hands generation to the text decoder)
    names = set(model_types)
    listed = set()
    for adapter in {id(a): a for a in registered_adapters().values()}.values():
        for config in getattr(adapter, "tested_configs", ()):
            name = config.split(":")[0]
            assert name in names, f"{type(adapter).__name__} lists {name!r}, which tests/models does not build"
            listed.add(name)
            assert model_types[name] in adapter.model_types
    assert listed == names, f"cases missing from the adapters' tested_configs: {sorted(names - listed)}"


def test_every_case_builds_its_named_model_type():
    # cheap: the name convention above is what the page relies on; one build per model type is in test_families
    for case in CASES:
        assert case_model_type(case) in supported_model_types()


def test_unsupported_family_lists_supported_ones_and_how_to_register():
    class Config:
        model_type = "evolla"

    with pytest.raises(ValueError) as error:
        get_adapter(Config())
    message = str(error.value)
    assert "'evolla' is not supported" in message
    for model_type in supported_model_types():
        assert model_type in message
    assert "ArchitectureAdapter" in message and "register_architecture" in message
    assert "docs/supported-models.md" in message


def test_registering_a_family_and_refusing_duplicates():
    class MyAdapter(ArchitectureAdapter):
        model_types = ("my_vlm",)

        def image_layout(self, config, input_ids, model_kwargs):
            return []

    class Config:
        model_type = "my_vlm"

    register_architecture(MyAdapter)
    try:
        assert isinstance(get_adapter(Config()), MyAdapter)
        with pytest.raises(ValueError, match="already registered"):
            register_architecture(MyAdapter)
        register_architecture(MyAdapter, exist_ok=True)
        with pytest.raises(ValueError, match="already registered"):
            register_architecture(type("Other", (MyAdapter,), {"model_types": ("qwen2_vl",)}))
    finally:
        unregister_architecture("my_vlm")
    assert "my_vlm" not in supported_model_types()
