"""TrainedFacts <-> the `info` of a stored model's spec.json: the same keys as before the
facts were typed, and a round trip that loses nothing."""

from __future__ import annotations

import pytest

from compressor.errors import InputError
from compressor.workflows.facts import TrainedFacts

FACTS = TrainedFacts(
    accuracy=0.98,
    val_accuracy=0.97,
    params=1000,
    macs=20000,
    removed_blocks=["layer1.0"],
    train_seconds=4.5,
    epoch_seconds=1.5,
    epochs=3,
    device="cpu",
    bn_recalibration={"layers": 2, "batches": 20, "images": 640},
    dataset="digits",
    input_shape=[1, 16, 16],
    extra={"variant": "ticket", "criterion": "grasp", "prune_seconds": 0.4},
)


def test_info_is_flat_with_the_stage_keys_beside_the_facts() -> None:
    info = FACTS.to_info()
    assert "extra" not in info
    assert info["variant"] == "ticket" and info["criterion"] == "grasp"
    assert info["accuracy"] == 0.98 and info["removed_blocks"] == ["layer1.0"]
    assert len(info) == 12 + 3


def test_round_trip_through_info() -> None:
    assert TrainedFacts.from_info(FACTS.to_info(), "m") == FACTS


def test_older_stored_models_without_the_later_facts_still_load() -> None:
    info = FACTS.to_info()
    for key in ("device", "bn_recalibration", "dataset", "input_shape"):
        del info[key]
    facts = TrainedFacts.from_info(info, "m")
    assert facts.device is None and facts.dataset is None and facts.accuracy == 0.98


def test_a_stored_model_without_its_accuracy_names_what_is_missing() -> None:
    info = FACTS.to_info()
    del info["accuracy"]
    with pytest.raises(InputError, match="runs/x/model records no accuracy of its training"):
        TrainedFacts.from_info(info, "runs/x/model")
