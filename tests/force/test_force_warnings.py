"""Warnings at setup: a charge/multiplicity outside the model's training data."""

from __future__ import annotations

import logging

import pytest
from force_helpers import ELEMENTS, make_model
from transip_openmm.export.topology_io import topology_from_numbers

from transip_openmm import TransIPForce
from transip_openmm.artifacts import save_checkpoint


@pytest.fixture(scope="module")
def neutral_singlet_model(tmp_path_factory):
    """A float32 export whose checkpoint says it saw only neutral singlets."""
    from transip_openmm.export.exporter import export_checkpoint

    folder = tmp_path_factory.mktemp("trained")
    model = make_model()
    save_checkpoint(folder / "m.ckpt", {"model_config": model.config_dict, "model_state": model.state_dict(),
                                        "elements": ELEMENTS, "training_charge_multiplicity": [(0, 1), (0, 1)]})
    meta = export_checkpoint(folder / "m.ckpt", folder / "m.pt")
    assert meta["charge_multiplicity"]["trained_on"] == [[0, 1]]
    return folder / "m.pt"


def _warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "charge" in r.getMessage()]


@pytest.mark.parametrize("numbers, charge, multiplicity, warned", [
    ([8, 1], -1, 1, True),     # hydroxide: charged
    ([8, 1], 0, 2, True),      # OH radical: open shell
    ([8, 1, 1], 0, 1, False),  # water: what it was trained on
])
def test_untrained_charge_or_multiplicity_is_warned_about(neutral_singlet_model, numbers, charge, multiplicity,
                                                          warned, caplog):
    with caplog.at_level(logging.WARNING, logger="transip_openmm.force"):
        TransIPForce(neutral_singlet_model, topology_from_numbers(numbers), charge=charge, multiplicity=multiplicity)
    messages = _warnings(caplog)
    assert len(messages) == int(warned)
    if warned:
        assert "trained only on (charge, multiplicity) (+0, 1)" in messages[0]


def test_unrecorded_training_data_warns_only_for_charged_or_open_shell(generic32, caplog):
    """Files exported before the training charges were recorded: unknown, said for ions/radicals only."""
    with caplog.at_level(logging.WARNING, logger="transip_openmm.force"):
        TransIPForce(generic32, topology_from_numbers([8, 1, 1]))
        assert _warnings(caplog) == []
        TransIPForce(generic32, topology_from_numbers([8, 1]), charge=-1)
    messages = _warnings(caplog)
    assert len(messages) == 1 and "does not record the charges and multiplicities" in messages[0]
