"""One shared export of the tiny residual CNN, so the suite stays fast.

The dynamo exporter takes a second or more per export, so the default export is made once
per session and tests that change a model work on a copy.
"""

from __future__ import annotations

import pytest
import torch

from export import ExportConfig, export_onnx
from tests.export.tiny_models import (
    INPUT_SHAPE,
    PARITY_SAMPLES,
    USER_METADATA,
    Exported,
    make_tiny_resnet,
)


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The default export (dynamo) of the tiny model, parity-checked on 200 random inputs."""
    model = make_tiny_resnet()
    generator = torch.Generator().manual_seed(1)
    parity_inputs = torch.randn(PARITY_SAMPLES, *INPUT_SHAPE, generator=generator)
    folder = tmp_path_factory.mktemp("export")
    result = export_onnx(
        model,
        parity_inputs[:1],
        folder / "model.onnx",
        ExportConfig(),
        parity_inputs=parity_inputs,
        metadata=USER_METADATA,
    )
    return Exported(model=model, result=result, parity_inputs=parity_inputs, folder=folder)
