"""Layer pruning, shrinking and the store on models the project did not write.

The four families of the issue: the zoo, torchvision-style ResNet (basic and bottleneck),
MobileNetV2 and a CIFAR ResNet with option-A (zero-padding lambda) shortcuts; plus a small
model with depthwise convs, squeeze-excitation, SiLU and GELU. Definitions: archs.py.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from compressor.errors import ConfigError, InputError, UnsupportedModelError
from compressor.models.blocks import discover_blocks, select_patterns
from compressor.models.spec import ModelSpec, build_model, remove_blocks_
from compressor.models.store import load_model, save_model
from compressor.prune.criteria import CRITERIA, block_scores
from compressor.prune.layers import LayerPruneConfig, prune_at_init
from compressor.prune.shrink import ShrinkConfig, shrink_channels_
from export import ExportConfig, export_onnx
from tests.compressor import archs

ARCHS = Path(archs.__file__).resolve()
X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
LABELS = torch.arange(4) % 10

# name: (factory, kwargs, residual blocks, removable blocks, classifier)
FAMILIES = {
    "zoo_resnet20": (None, {}, 9, 7, "fc"),
    "resnet18": ("tv_resnet18", {"width": 8}, 8, 5, "fc"),
    "resnet50": ("tv_resnet50", {"width": 8}, 16, 12, "fc"),
    "mobilenet_v2": ("tv_mobilenet_v2", {"width_mult": 0.5}, 10, 10, "classifier.1"),
    "option_a_resnet20": ("option_a_resnet", {"depth": 20}, 9, 7, "linear"),
    "exotic": ("exotic_net", {}, 4, 4, "head"),
}


def spec_of(family: str) -> ModelSpec:
    factory, kwargs, *_ = FAMILIES[family]
    if factory is None:
        return ModelSpec(model="resnet20", kwargs={"num_classes": 10, "width": 0.5})
    return ModelSpec(
        model=family, factory=f"{ARCHS}:{factory}", kwargs={"num_classes": 10, **kwargs}
    )


def build(family: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(spec_of(family)).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_are_found_and_removed_physically(family: str) -> None:
    _, _, n_residual, n_removable, _ = FAMILIES[family]
    model = build(family)
    blocks = discover_blocks(model, X)
    assert len(blocks) == n_residual
    removable = [b.name for b in blocks if b.removable]
    assert len(removable) == n_removable
    assert all(b.in_shape == b.out_shape for b in blocks if b.removable)
    assert all(b.reason for b in blocks if not b.removable)
    ticket = copy.deepcopy(model)
    remove_blocks_(ticket, removable, example=X)
    assert ticket(X).shape == (4, 10)
    # Deleted, not replaced: the blocks' modules are gone and no Identity stands in.
    ticket_ids = {id(m) for m in ticket.modules()}
    assert not any(isinstance(m, nn.Identity) for m in ticket.modules())
    survivors = {id(m) for n, m in model.named_modules() if n in removable} & ticket_ids
    assert not survivors
    assert sum(p.numel() for p in ticket.parameters()) == sum(
        p.numel() for p in model.parameters()
    ) - sum(b.params for b in blocks if b.removable)
    assert [b.name for b in discover_blocks(ticket, X) if b.removable] == []


def test_torchvision_names_and_reasons() -> None:
    blocks = {b.name: b for b in discover_blocks(build("resnet50"), X)}
    assert blocks["layer1.0"].reason == "it changes the shape"  # 64 -> 256 channels
    assert blocks["layer3.4"].removable and blocks["layer3.4"].container == "layer3"
    mobilenet = discover_blocks(build("mobilenet_v2"), X)
    # Only InvertedResidual blocks with use_res_connect are residual blocks at all.
    assert {b.name for b in mobilenet} == {
        n for n, m in build("mobilenet_v2").named_modules() if getattr(m, "use_res_connect", False)
    }
    option_a = {b.name: b for b in discover_blocks(build("option_a_resnet20"), X)}
    # The zero-padding lambda shortcut makes a residual block that cannot be removed.
    assert not option_a["layer2.0"].removable and option_a["layer2.0"].reason
    exotic = [b.name for b in discover_blocks(build("exotic"), X)]
    assert "blocks.2" not in exotic  # shape-preserving, but no skip connection
    assert "blocks.3" not in exotic  # stride 2, no skip connection


def test_removed_blocks_are_absent_from_the_exported_onnx(tmp_path: Path) -> None:
    model = build("resnet18")
    blocks = discover_blocks(model, X)
    removed = [b.name for b in blocks if b.removable][:3]
    ticket = copy.deepcopy(model)
    remove_blocks_(ticket, removed, example=X)
    counts = {}
    for name, net in (("dense", model), ("ticket", ticket)):
        path = tmp_path / f"{name}.onnx"
        export_onnx(net, X[:1], path, ExportConfig())
        counts[name] = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    # A BasicBlock is two 3x3 convs and one residual add.
    assert counts["dense"]["Conv"] - counts["ticket"]["Conv"] == 2 * len(removed)
    assert counts["dense"]["Add"] - counts["ticket"]["Add"] == len(removed)
    assert "Identity" not in counts["ticket"]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "zoo_resnet20"])
@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_every_criterion_scores_generic_blocks(family: str, criterion: str) -> None:
    model = build(family)
    removable = [b for b in discover_blocks(model, X) if b.removable]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = block_scores(model, removable, criterion, (X, LABELS), seed=0)
    assert set(scores) == {b.name for b in removable}
    assert all(torch.isfinite(torch.tensor(v)) for v in scores.values())
    assert len(set(scores.values())) > 1  # the scores rank the blocks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "zoo_resnet20"])
def test_shrinking_generic_models_keeps_the_head_and_round_trips(
    family: str, tmp_path: Path
) -> None:
    *_, head = FAMILIES[family]
    spec = spec_of(family)
    model = build(family)
    ticket, result = prune_at_init(model, spec, X, LABELS, LayerPruneConfig(blocks=2))
    result_shrink = shrink_channels_(ticket, X, ShrinkConfig(ratio=0.5, round_to=4))
    assert result_shrink.classifier == head
    assert result_shrink.params_after < result_shrink.params_before
    assert dict(ticket.named_modules())[head].out_features == 10
    assert ticket(X).shape == (4, 10)
    # The store rebuilds the shrunk architecture from the spec (import path + kwargs +
    # removed blocks + shapes) and the weights, with identical outputs.
    stored_spec = result.spec.with_shapes(ticket)
    save_model(ticket, stored_spec, tmp_path / "m")
    loaded = load_model(tmp_path / "m", factory=spec.factory)
    assert loaded.spec.factory == spec.factory
    assert loaded.spec.removed_blocks == result.removed
    ticket.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(X), ticket(X))


def test_option_a_shrinks_inside_blocks_only() -> None:
    model = build("option_a_resnet20")
    result = shrink_channels_(model, X, ShrinkConfig(ratio=0.5, round_to=4))
    # The residual streams are tied to the zero-padding shortcut: left alone, with a reason.
    assert "layer1.0.conv2" in result.ignored and "conv1" in result.ignored
    assert "parameter-free channel change in layer2.0.shortcut" in result.ignored["conv1"]
    assert result.channels["layer1.0.conv1"] == (16, 8)
    assert model(X).shape == (4, 10)


def test_shrink_exclude_leaves_named_layers_alone() -> None:
    model = build("resnet18")
    result = shrink_channels_(model, X, ShrinkConfig(ratio=0.5, round_to=4, exclude=("layer4.*",)))
    assert "layer4.1.conv1" in result.unpruned
    with pytest.raises(ConfigError, match="shrink.exclude: pattern 'layer9.\\*' matches no"):
        shrink_channels_(build("resnet18"), X, ShrinkConfig(exclude=("layer9.*",)))


def test_include_and_exclude_patterns() -> None:
    blocks = discover_blocks(build("resnet50"), X)
    chosen = select_patterns(blocks, include=["layer3.*"], exclude=["layer3.5"])
    assert [b.name for b in chosen if b.removable] == [
        "layer3.1",
        "layer3.2",
        "layer3.3",
        "layer3.4",
    ]
    model = build("resnet50")
    config = LayerPruneConfig(blocks=2, include=("layer2.*",), criterion="synflow")
    _, result = prune_at_init(model, spec_of("resnet50"), X, LABELS, config)
    assert all(name.startswith("layer2.") for name in result.removed)
    with pytest.raises(ConfigError, match="prune.include: pattern 'layer9.\\*' matches no"):
        select_patterns(blocks, include=["layer9.*"])


# ------------------------------------------------------------------------ bad input


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
        )
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


def test_a_model_with_no_removable_block_is_one_line() -> None:
    with pytest.raises(UnsupportedModelError, match="plain has no residual block") as err:
        prune_at_init(Plain(), ModelSpec(model="plain"), X, LABELS, LayerPruneConfig(blocks=1))
    assert "\n" not in str(err.value)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "user_model.py"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "target,error,message",
    [
        ("missing.py:build", InputError, "file not found: missing.py"),
        (
            "no_such_package_xyz.models:build",
            InputError,
            "cannot import module 'no_such_package_xyz.models'",
        ),
        ("build", ConfigError, "expected 'path/to/file.py:function'"),
        ("torch.nn:NoSuchFactory", InputError, "'torch.nn' has no attribute 'NoSuchFactory'"),
    ],
)
def test_factory_paths_that_do_not_resolve(target: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message) as err:
        build_model(ModelSpec(model="user", factory=target))
    assert "\n" not in str(err.value)


def test_factory_that_raises_or_returns_junk(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "def broken(num_classes=10):\n    raise RuntimeError('weights file missing')\n"
        "def junk(num_classes=10):\n    return 42\n",
    )
    with pytest.raises(UnsupportedModelError, match="raised RuntimeError: weights file missing"):
        build_model(ModelSpec(model="u", factory=f"{path}:broken"))
    with pytest.raises(UnsupportedModelError, match="returned a int, not a torch nn.Module"):
        build_model(ModelSpec(model="u", factory=f"{path}:junk"))
    with pytest.raises(ConfigError, match="model.kwargs: cannot call"):
        build_model(ModelSpec(model="u", factory=f"{path}:broken", kwargs={"depth": 3}))
    bad_import = tmp_path / "bad.py"
    bad_import.write_text("import nosuchmodule_abc\n")
    with pytest.raises(InputError, match="importing .*bad.py failed: ModuleNotFoundError"):
        build_model(ModelSpec(model="u", factory=f"{bad_import}:build"))


def test_a_stored_model_only_calls_the_factory_the_caller_names(tmp_path: Path) -> None:
    spec = spec_of("exotic")
    save_model(build_model(spec), spec, tmp_path / "m")
    assert load_model(tmp_path / "m", factory=spec.factory).spec == spec
    document = json.loads((tmp_path / "m" / "spec.json").read_text())
    marker = tmp_path / "pwned"
    document["spec"]["factory"] = "os:system"
    document["spec"]["kwargs"] = {"command": f"touch {marker}"}
    (tmp_path / "m" / "spec.json").write_text(json.dumps(document))
    for trusted in (None, spec.factory):
        with pytest.raises(InputError, match="names the model factory 'os:system'"):
            load_model(tmp_path / "m", factory=trusted)
    assert not marker.exists()  # nothing ran


@pytest.mark.parametrize("name,removable", [("resnet18", 5), ("mobilenet_v2", 10)])
def test_torchvision_models_themselves_when_importable(name: str, removable: int) -> None:
    """The real torchvision classes, through the same factory path a recipe uses."""
    if archs.torchvision_or_none() is None:
        pytest.skip("torchvision cannot be imported here (its build does not match this torch)")
    spec = ModelSpec(model=name, factory=f"torchvision.models:{name}", kwargs={"num_classes": 10})
    model = build_model(spec).eval()
    blocks = discover_blocks(model, X)
    assert sum(b.removable for b in blocks) == removable
    ticket = copy.deepcopy(model)
    remove_blocks_(ticket, [b.name for b in blocks if b.removable][:2], example=X)
    assert ticket(X).shape == (4, 10)


class GRN(nn.Module):
    """ConvNeXt V2's global response normalisation: gamma * (x * Nx) + beta + x."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = x.norm(p=2, dim=(2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.GroupNorm(1, c)
        self.pw1, self.act, self.grn = nn.Conv2d(c, 4 * c, 1), nn.GELU(), GRN(4 * c)
        self.pw2 = nn.Conv2d(4 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(self.grn(self.act(self.pw1(self.norm(self.dw(x))))))


class Tokens(nn.Module):
    """Image -> patch tokens -> a stack of encoder layers -> mean -> logits."""

    def __init__(self, norm_first: bool, aux_head: bool = False) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 32, 4, 4)

        def layer() -> nn.Module:
            return nn.TransformerEncoderLayer(
                32, 4, 64, 0.0, batch_first=True, norm_first=norm_first
            )

        self.blocks = nn.Sequential(*(layer() for _ in range(3)))
        self.head = nn.Linear(32, 10)
        self.aux = nn.Linear(32, 10) if aux_head else None  # never called in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.blocks(tokens).mean(1))


def test_a_residual_part_inside_a_block_does_not_hide_the_block() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ConvNeXtV2Block(8), ConvNeXtV2Block(8))
    blocks = {b.name: b for b in discover_blocks(model, X)}
    assert blocks["1"].removable and blocks["2"].removable
    assert not blocks["1.grn"].removable  # a residual, but not in a container


@pytest.mark.parametrize("norm_first", [True, False])
def test_pre_and_post_norm_transformer_layers_are_blocks(norm_first: bool) -> None:
    blocks = discover_blocks(Tokens(norm_first).eval(), X)
    assert [b.name for b in blocks if b.removable] == ["blocks.0", "blocks.1", "blocks.2"]


@pytest.mark.parametrize("criterion", ["snip", "grasp", "synflow"])
def test_criteria_on_frozen_unused_and_attention_parameters(criterion: str) -> None:
    """Frozen layers, a head forward never calls, fused attention (GraSP's second
    derivative has no fused kernel): scored, not a crash."""
    torch.manual_seed(0)
    model = Tokens(norm_first=True, aux_head=True)
    model.patch.requires_grad_(False)
    removable = [b for b in discover_blocks(model, X) if b.removable]
    scores = block_scores(model, removable, criterion, (X, LABELS), seed=0)
    assert len(scores) == 3 and all(torch.isfinite(torch.tensor(v)) for v in scores.values())
    assert not model.patch.weight.requires_grad  # the caller's model is untouched


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda s: s["shapes"]["head"]["tensors"].update(weight=[-1, 16]), "shapes of 'head'"),
        (
            lambda s: s["shapes"]["head"]["tensors"].update(weight=[10**7, 10**6]),
            "holds head.weight",
        ),
        (lambda s: s["shapes"]["head"].update(attrs=None), "shapes of 'head'"),
        (lambda s: s.update(shapes=None), "'shapes' must be a mapping"),
        (lambda s: s.update(factory=5), "'factory' must be a string"),
        (lambda s: s.update(removed_blocks="blocks.0"), "'removed_blocks' must be a list"),
    ],
)
def test_a_hand_edited_spec_is_one_line(tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    spec = spec_of("exotic")
    model = build_model(spec)
    save_model(model, spec.with_shapes(model), tmp_path / "m")
    document = json.loads((tmp_path / "m" / "spec.json").read_text())
    edit(document["spec"])
    (tmp_path / "m" / "spec.json").write_text(json.dumps(document))
    with pytest.raises(InputError, match=message.replace("(", r"\(")) as err:
        load_model(tmp_path / "m", factory=spec.factory)
    assert "\n" not in str(err.value)


class InlinePadBlock(nn.Module):
    """Option A written inline: the shortcut is an F.pad in forward, not a module."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        short = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            short = nn.functional.pad(short, (0, 0, 0, 0, self.pad, self.pad))
        return torch.relu(out + short)


def test_an_inline_channel_pad_is_also_left_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.Sequential(
            InlinePadBlock(16, 16, 1), InlinePadBlock(16, 32, 2), InlinePadBlock(32, 32, 1)
        ),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()
    result = shrink_channels_(model, X, ShrinkConfig(ratio=0.5, round_to=4))
    assert "F.pad on the channel axis" in result.ignored["0"]
    assert result.channels["1.0.c2"] == (16, 16) and result.channels["1.0.c1"] == (16, 8)
    assert model(X).shape == (4, 10)
