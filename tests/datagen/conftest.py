"""Fixtures of the data-generator tests."""

import pytest
from datagen_helpers import tiny_config


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """The tiny config generated once, uninterrupted, with one worker."""
    from transip_openmm.data.generate import generate

    out = tmp_path_factory.mktemp("reference")
    generate(tiny_config(), out, workers=1, progress=False)
    return out
