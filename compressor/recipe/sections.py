"""A recipe: one YAML file whose sections map one to one onto the stage configs.

Unknown keys are errors that name the key and its section, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.configs import MAX_SEED, config_kwargs
from compressor.data.config import DataConfig
from compressor.errors import ConfigError, InputError
from compressor.models.pretrained import weights_sha256
from compressor.models.source import factory_kwargs, resolve_target, split_target
from compressor.models.spec import ModelSpec
from compressor.prune.layers import LayerPruneConfig
from compressor.prune.shrink import ShrinkConfig
from compressor.recipe.experiment import ExperimentConfig
from compressor.training.config import TrainConfig
from deploy.config_fields import (
    check_fields,
    flag,
    names,
    real,
    rule,
    whole,
    wholes,
)
from deploy.errors import UnsafePathError
from deploy.paths import read_regular_bytes
from export.config import PARITY_RTOL, ExportConfig
from export.errors import ExportError
from export.quantize import QuantizeConfig
from export.trt_ops import parse_trt_version

RECIPE_VERSION = 1
MAX_RECIPE_VALUES = 100_000  # values in a recipe once YAML aliases are expanded


def _whole(minimum: int, *, optional: bool = False) -> dict[str, Any]:
    return whole(minimum, optional=optional, noun="a whole number")


@dataclass(frozen=True, kw_only=True)
class ModelSection:
    """A zoo model (`name`, `width`) or any model a factory builds (`factory`, `kwargs`)."""

    name: str | None = field(  # zoo name (default resnet56); with `factory`, a display name
        default=None, metadata=rule(lambda v: v is None or isinstance(v, str), "a model name")
    )
    # Channel multiplier of the zoo ResNets (default 1.0).
    width: float | None = field(default=None, metadata=real(0, above=True, optional=True))
    factory: str | None = None  # "path/to/file.py:function" or "package.module:function"
    kwargs: dict[str, Any] = field(  # factory keyword arguments
        default_factory=dict, metadata=rule(lambda v: isinstance(v, dict), "a mapping")
    )
    # num_classes and in_channels come from the dataset (for a factory: when it takes them).
    # Pretrained theta_0 (compressor/models/pretrained.py): a .safetensors file or a
    # torch.save state dict, read with weights_only (never unpickled); relative to the
    # working directory.
    weights: str | None = field(
        default=None,
        metadata=rule(lambda v: v is None or (isinstance(v, str) and v != ""), "a file path"),
    )
    # false: load the tensors that fit and keep the rest (e.g. a new 10-class head) at their
    # seeded initial values, listed in a warning and the dense model's info; true: refuse.
    weights_strict: bool = field(default=True, metadata=flag())
    # The file's SHA-256: recipe.json records it (a resume with another file is refused);
    # given here, a file with another hash is refused.
    weights_sha256: str | None = field(
        default=None,
        metadata=rule(
            lambda v: v is None or (isinstance(v, str) and re.fullmatch(r"[0-9a-fA-F]{64}", v)),
            "64 hex digits",
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, ConfigError, "model.{name}: ")
        if self.weights is None and (not self.weights_strict or self.weights_sha256 is not None):
            raise ConfigError(
                "model.weights_strict, model.weights_sha256: only with model.weights (a file)"
            )
        if self.factory is None:
            if self.kwargs:
                raise ConfigError(
                    "model.kwargs: only for a model.factory; zoo models take model.width"
                )
            object.__setattr__(self, "name", self.name or "resnet56")
            object.__setattr__(self, "width", 1.0 if self.width is None else self.width)
            return
        split_target(self.factory)
        if self.width is not None:
            raise ConfigError(
                "model.width: only for zoo models; pass the factory's own arguments in model.kwargs"
            )

    def to_dict(self) -> dict[str, Any]:
        """As recipe.json records it: the weights keys only when set (so runs recorded before
        them still resume), then with the file's SHA-256, so a resume with another file is
        refused even under the same name."""
        out = {key: _plain(getattr(self, key)) for key in ("name", "width", "factory", "kwargs")}
        if self.weights is not None:
            out["weights"] = self.weights
            out["weights_sha256"] = (self.weights_sha256 or weights_sha256(self.weights)).lower()
            if not self.weights_strict:
                out["weights_strict"] = False
        return out

    def trusted_factory(self) -> str | None:
        """The factory a stored model may call when loaded for this recipe (store.py)."""
        if self.factory is None:
            return None
        return resolve_target(self.factory)

    def spec(self, num_classes: int, in_channels: int) -> ModelSpec:
        """The dense model's spec; a factory's file path is made absolute here."""
        if self.factory is None:
            kwargs = {"num_classes": num_classes, "in_channels": in_channels}
            return ModelSpec(model=str(self.name), kwargs={**kwargs, "width": self.width})
        target = resolve_target(self.factory)
        return ModelSpec(
            model=self.name or self.factory,
            kwargs=factory_kwargs(target, self.kwargs, num_classes, in_channels),
            factory=target,
        )


@dataclass(frozen=True, kw_only=True)
class ExportSection:
    opset: int = 18  # ONNX opset: 18 for TensorRT 10/11; 17 (TensorRT 8.5/8.6, JetPack 5)
    exporter: str = "dynamo"  # opset 17 needs "torchscript": dynamo always writes 18+
    # Allowed max |onnxruntime - torch| on the logits: parity_atol + parity_rtol * max |logit|.
    parity_atol: float = 1e-4  # the absolute part
    parity_rtol: float = PARITY_RTOL  # relative to the largest |logit|: rounding grows with it
    # Beside each model.onnx: an INT8 QDQ graph (TensorRT's explicit quantization), an FP16
    # and a BF16 graph (what strongly typed TensorRT 11 needs for FP16 / BF16; the BF16 one at
    # opset 22, where ONNX Conv takes bfloat16), each checked on real data.
    int8: bool = field(default=True, metadata=flag())
    fp16: bool = field(default=True, metadata=flag())
    bf16: bool = field(default=True, metadata=flag())
    calibration_method: str = "minmax"  # minmax, entropy or percentile
    calibration_samples: int = 256  # training images the INT8 ranges are calibrated on
    # Where the INT8 file's Q/DQ pairs go: "tensorrt" (as TensorRT fuses them) or "all".
    qdq_placement: str = "tensorrt"
    # The classifier in INT8? null: the placement's choice (tensorrt: float, all: INT8).
    quantize_classifier: bool | None = None
    # TensorRT version the readiness check of each ONNX file is made against.
    trt_version: str = "10"

    def __post_init__(self) -> None:
        """Check every value now, so a typo fails before training, not after it: the flags
        here, the rest by the export configs they go to (their rules are written there)."""
        check_fields(self, ConfigError, "export.{name}: ")
        checks = (
            ("exporter", lambda: ExportConfig(exporter=self.exporter)),
            ("opset", lambda: ExportConfig(opset=self.opset, exporter=self.exporter)),
            ("parity_atol", lambda: ExportConfig(parity_atol=self.parity_atol)),
            ("parity_rtol", lambda: ExportConfig(parity_rtol=self.parity_rtol)),
            ("calibration_method",
             lambda: QuantizeConfig(calibration_method=self.calibration_method)),
            ("calibration_samples",
             lambda: QuantizeConfig(calibration_samples=self.calibration_samples)),
            ("qdq_placement", lambda: QuantizeConfig(qdq_placement=self.qdq_placement)),
            ("quantize_classifier",
             lambda: QuantizeConfig(quantize_classifier=self.quantize_classifier)),
            ("trt_version", lambda: parse_trt_version(str(self.trt_version))),
        )  # fmt: skip
        for key, check in checks:
            try:
                check()
            except (ExportError, ValueError, TypeError) as exc:
                # "QuantizeConfig.calibration_samples: must be ..." -> "must be ..."
                reason = re.sub(rf"^[\w.]*{key}: ", "", str(exc))
                raise ConfigError(f"export.{key}: {reason}") from exc

    def export_config(self) -> ExportConfig:
        """The FP32 export and parity settings of this section (export/onnx_export.py)."""
        return ExportConfig(
            opset=self.opset,
            exporter=self.exporter,
            parity_atol=self.parity_atol,
            parity_rtol=self.parity_rtol,
        )


@dataclass(frozen=True, kw_only=True)
class BenchSection:
    backends: tuple[str, ...] = field(  # CPU; torch also on CUDA if present
        default=("onnxruntime", "torch"), metadata=names(expected="a list of names")
    )
    # With "tensorrt" in backends (a GPU machine with TensorRT): engines of these precisions
    # are built from each variant's FP32 / FP16 / BF16 / INT8 QDQ ONNX and timed side by side
    # (fp16, bf16 and int8 need the export flag of the same name on).
    trt_precisions: tuple[str, ...] = field(
        default=("fp32", "fp16", "int8"), metadata=names(expected="a list of names")
    )
    batch_sizes: tuple[int, ...] = field(
        default=(1, 8), metadata=wholes(expected="whole numbers >= 1")
    )
    # Intra-op threads for both backends (None: library default).
    threads: int | None = field(default=None, metadata=_whole(1, optional=True))
    warmup_iters: int = field(default=20, metadata=_whole(0))
    # Timed iterations per model and batch (interleaved across models).
    iterations: int = field(default=200, metadata=_whole(1))

    def __post_init__(self) -> None:
        check_fields(self, ConfigError, "bench.{name}: ")
        unknown = sorted(set(self.backends) - {"onnxruntime", "torch", "tensorrt"})
        if unknown:
            raise ConfigError(
                f"bench.backends: unknown backend(s) {unknown}; use onnxruntime, torch, tensorrt"
            )
        bad = sorted(set(self.trt_precisions) - {"fp32", "fp16", "bf16", "int8"})
        if bad or not self.trt_precisions:
            raise ConfigError(
                f"bench.trt_precisions: unknown precision(s) {bad or '(none given)'}; "
                "use fp32, fp16, bf16, int8"
            )


@dataclass(frozen=True, kw_only=True)
class ReportSection:
    """The accuracy check of `compressor run` (compressor/workflows/accuracy_check.py)."""

    # In percentage points of test accuracy (5 = five points, not 0.05): a variant further
    # below dense, or within 2 points of chance, is marked not comparable and `run` exits 3.
    max_accuracy_drop: float = field(
        default=5.0,
        metadata=real(
            0, 100, expected="a number of percentage points in [0, 100] (5 = five points)"
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, ConfigError, "report.{name}: ")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str = "default"
    seed: int = 0  # initial weights theta_0 (dense and ticket start from the same)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=lambda: DataConfig(name="digits", image_size=16))
    prune: LayerPruneConfig = field(default_factory=lambda: LayerPruneConfig(fraction=0.6))
    # lr 0.1 without warm-up diverges on a ResNet-56 here (val loss 4e7 in epoch 1).
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=15, lr=0.05, warmup_epochs=2)
    )
    shrink: ShrinkConfig = field(default_factory=ShrinkConfig)
    export: ExportSection = field(default_factory=ExportSection)
    bench: BenchSection = field(default_factory=BenchSection)
    # The grid of `compressor lottery` (compressor/workflows/lottery/experiment.py);
    # `compressor run` ignores it.
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    report: ReportSection = field(default_factory=ReportSection)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": RECIPE_VERSION, "name": self.name, "seed": self.seed}
        for section in ("model", "data", "prune", "train", "shrink", "export", "bench"):
            value = getattr(self, section)
            out[section] = value.to_dict() if hasattr(value, "to_dict") else _plain(value)
        # Left out at its default, so runs recorded before it existed still resume.
        if self.experiment != ExperimentConfig():
            out["experiment"] = self.experiment.to_dict()
        if self.report != ReportSection():  # the same, for runs made before the check
            out["report"] = _plain(self.report)
        return out


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    return obj


def _section(cls: type, data: Any, section: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"recipe: section '{section}' must be a mapping, got {data!r}")
    try:
        if hasattr(cls, "from_dict"):
            return cls.from_dict(data)
        values = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in config_kwargs(cls, data, section).items()
        }
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        # A value of a type no validator expected (a list where a number goes): still the
        # recipe's fault, so a ConfigError naming the section rather than a traceback.
        raise ConfigError(f"{section}: invalid value ({type(exc).__name__}: {exc})") from exc


_SECTIONS = {
    "model": ModelSection,
    "data": DataConfig,
    "prune": LayerPruneConfig,
    "train": TrainConfig,
    "shrink": ShrinkConfig,
    "export": ExportSection,
    "bench": BenchSection,
    "experiment": ExperimentConfig,
    "report": ReportSection,
}


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"recipe: expected a mapping at the top level, got {type(data).__name__}")
    known = {"version", "name", "seed", *_SECTIONS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"recipe: unknown key(s) {unknown}; known: {sorted(known)}")
    version = data.get("version", RECIPE_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError(
            f"recipe: version must be the number {RECIPE_VERSION}, got {version!r} "
            f"({type(version).__name__}); write `version: {RECIPE_VERSION}` without quotes"
        )
    if version != RECIPE_VERSION:
        raise ConfigError(
            f"recipe: version {version} is not supported; this version of compressor reads "
            f"version {RECIPE_VERSION} recipes"
        )
    default = Recipe()
    name, seed = data.get("name", default.name), data.get("seed", default.seed)
    if isinstance(name, bool) or not isinstance(name, str | int | float) or str(name) == "":
        raise ConfigError(f"recipe: name must be a non-empty text, got {name!r}")
    if not str(name).isprintable():  # a newline or tab would break the report's header
        raise ConfigError(f"recipe: name must be one line of printable text, got {name!r}")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED):
        raise ConfigError(f"recipe: seed must be a whole number in [0, {MAX_SEED}], got {seed!r}")
    kwargs: dict[str, Any] = {"name": str(name), "seed": seed}
    for key, cls in _SECTIONS.items():
        if key in data:
            kwargs[key] = _section(cls, data[key] or {}, key)
    return Recipe(**kwargs)


def _recipe_loader():  # noqa: ANN202 - a yaml.SafeLoader subclass
    """SafeLoader that reads `1e-3` and `1.0e10` as floats.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent (`1.0e-3`),
    so the usual `lr: 1e-3` would arrive as a string; YAML 1.2 and every user expect a float.
    """
    import re

    import yaml

    class RecipeLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN202
            """A key given twice is an error: YAML would keep the last one, silently."""
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, Hashable) and key in seen:
                    raise ConfigError(
                        f"key {key!r} is given twice (lines {seen[key]} and {line}); YAML "
                        "would keep the last one silently: keep one"
                    )
                if isinstance(key, Hashable):
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    RecipeLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:\d[\d_]*)?\.?\d*[eE][-+]?\d+$"),
        list("-+0123456789."),
    )
    return RecipeLoader


MAX_RECIPE_BYTES = 1 << 20


def load_recipe(path: str | Path | None) -> Recipe:
    """Read a YAML recipe; None gives the embedded default (ResNet-56 on the digits)."""
    if path is None:
        return Recipe()
    import yaml

    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise InputError(f"recipe {path} is a directory; give the recipe's YAML file")
        if not path.exists():
            raise InputError(f"recipe file not found: {path}")
    try:  # a FIFO or device is refused, not read; a recipe is a few kilobytes
        text = read_regular_bytes(path, "recipe", max_bytes=MAX_RECIPE_BYTES).decode("utf-8-sig")
    except UnsafePathError as exc:
        raise InputError(str(exc)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"recipe {path} is not UTF-8 text (byte {exc.start}); is it the right file?"
        ) from exc
    try:
        data = yaml.load(text, Loader=_recipe_loader())
    except ConfigError as exc:  # a duplicate key
        raise ConfigError(f"recipe {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    except RecursionError as exc:  # thousands of nested brackets: no recipe looks like that
        raise ConfigError(f"recipe {path} is nested too deeply to be a recipe") from exc
    if data is None or data == {}:
        raise ConfigError(
            f"recipe {path} is empty; write the settings to change (see recipes/quick.yaml), "
            "or leave out the recipe argument for the embedded default"
        )
    _check_expanded_size(data, path)
    return recipe_from_dict(data)


def _check_expanded_size(data: Any, path: Path) -> None:
    """YAML aliases of aliases expand ten lines into billions of values (the "billion laughs"):
    harmless as shared references here, but saving the recipe or a spec would never end."""
    seen, stack = 0, [data]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_RECIPE_VALUES:
            raise ConfigError(
                f"recipe {path} expands to more than {MAX_RECIPE_VALUES:,} values (YAML aliases "
                "repeating aliases?); a recipe holds a few dozen"
            )
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
