"""TensorRT versions and what each one can do, decided without importing TensorRT.

The same request means different things across TensorRT releases, so the builder and the
trtexec command line ask `capabilities(version)` instead of testing version numbers inline.
Every threshold below was read in NVIDIA's TensorRT sources (github.com/NVIDIA/TensorRT,
tags v8.6.1, v10.x, v11.0, v11.1):

- 8.6: `NetworkDefinitionCreationFlag.EXPLICIT_BATCH` is needed for ONNX networks (python
  samples/common.py); no BF16 flag, no strongly typed networks. trtexec 8.6 already takes
  `--memPoolSize=workspace:N` (MiB); its `--workspace` and `--explicitBatch` are deprecated
  (`--explicitBatch` "has no effect", sampleOptions.cpp).
- 9.x: BuilderFlag.BF16 and NetworkDefinitionCreationFlag.STRONGLY_TYPED appear.
- 10.0: networks are always explicit batch. 10.1: INT8 calibrators deprecated ("superseded by
  explicit quantization", NvInfer.h). 10.12: BuilderFlag kFP16/kBF16/kINT8 deprecated
  ("superseded by strong typing", NvInfer.h).
- 11.0: FP16/BF16/INT8 builder flags, EXPLICIT_BATCH and the calibrators are gone from the
  python bindings (pyCore.cpp); STRONGLY_TYPED stays as a deprecated no-op. trtexec 11 drops
  --fp16/--bf16/--int8/--best, enables CUDA graphs, spin wait and no data transfers by default
  (--noCudaGraph, --noSpinWait, --includeDataTransfers turn them off) and always profiles in a
  separate run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from deploy.errors import DeployConfigError

# Oldest release we build for: JetPack 5 (L4T r34/r35) ships TensorRT 8.5.2 (jetson-containers
# packages/tensorrt/config.py); 8.5 already has the tensor-name API (set_input_shape,
# set_tensor_address, execute_async_v3) that the runner uses. 8.6 arrives with JetPack 6.0.
OLDEST_SUPPORTED = (8, 5)

_VERSION = re.compile(
    r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?"  # 10.3 / 10.3.0 / 10.3.0.26
    r"(?:[.+-]?[A-Za-z][\w.+-]*)?\s*$"  # a local or post suffix: 8.6.1.post1, 10.3.0+cuda12
)


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT release as numbers; `build` is the fourth field when the string had one."""

    major: int
    minor: int
    patch: int = 0
    build: int | None = None

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        return text if self.build is None else f"{text}.{self.build}"

    def at_least(self, major: int, minor: int = 0) -> bool:
        return (self.major, self.minor) >= (major, minor)

    def same_release(self, other: TrtVersion) -> bool:
        """Same major.minor.patch, and the same build when both strings name one."""
        if (self.major, self.minor, self.patch) != (other.major, other.minor, other.patch):
            return False
        return self.build is None or other.build is None or self.build == other.build


def parse_trt_version(text: str | TrtVersion) -> TrtVersion:
    """Parse "8.6.1", "10.3.0.26", "10.12", "11.1.0" (or pass a TrtVersion through).

    Raises DeployConfigError for text that is not a version and for releases older than 8.5.
    """
    if isinstance(text, TrtVersion):
        version = text
    else:
        match = _VERSION.match(str(text))
        if match is None:
            raise DeployConfigError(
                f"TensorRT version {text!r} is not a version number like 10.3.0 or 8.6.1"
            )
        major, minor, patch, build = match.groups()
        version = TrtVersion(
            int(major), int(minor), int(patch or 0), None if build is None else int(build)
        )
    if (version.major, version.minor) < OLDEST_SUPPORTED:
        oldest = ".".join(map(str, OLDEST_SUPPORTED))
        raise DeployConfigError(
            f"TensorRT {version} is not supported; deploy needs TensorRT {oldest} or newer "
            "(JetPack 5.0.2+, or an NVIDIA container from 22.10 on)"
        )
    return version


def version_from_banner_number(number: int) -> TrtVersion:
    """The number trtexec prints as "[TensorRT v100300]" -> 10.3.0.

    NV_TENSORRT_VERSION is major*1000 + minor*100 + patch up to 9.x (8.6.1 -> 8601) and
    major*10000 + minor*100 + patch from 10.0 (NvInferRuntimeBase.h), so 4 digits mean the
    old scheme.
    """
    if number < 10000:
        major, rest = divmod(number, 1000)
    else:
        major, rest = divmod(number, 10000)
    minor, patch = divmod(rest, 100)
    return parse_trt_version(f"{major}.{minor}.{patch}")


@dataclass(frozen=True)
class TrtCapabilities:
    """What one TensorRT release offers, as the builder and trtexec need to know it."""

    version: TrtVersion
    explicit_batch_flag: bool  # create_network needs EXPLICIT_BATCH (8.x, 9.x)
    precision_flags: bool  # BuilderFlag.FP16/BF16/INT8 exist (< 11)
    precision_flags_deprecated: bool  # ...and are deprecated (10.12 <= v < 11)
    bf16: bool  # BF16 exists (as a builder flag before 11, as a graph type always after 9)
    strongly_typed_available: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (>= 9)
    strongly_typed_only: bool  # every network is strongly typed (>= 11)
    calibrators: bool  # IInt8Calibrator classes exist (< 11); we never use them
    calibrators_deprecated: bool  # deprecated in favour of Q/DQ (10.1 <= v < 11)
    # trtexec: workspace is always --memPoolSize=workspace:<MiB> (8.6 deprecates --workspace).
    trtexec_precision_flags: bool  # --fp16/--int8 (and --bf16 from 9) accepted (< 11)
    trtexec_strongly_typed_flag: bool  # --stronglyTyped means something (9 <= v < 11)
    # trtexec 11 defaults: CUDA graph on, spin wait on, data transfers off, separate profile run.
    trtexec_defaults_v11: bool
    # IBuilderConfig.builder_optimization_level / --builderOptimizationLevel exist (>= 8.6).
    builder_optimization_level: bool = True

    @property
    def default_cuda_graph(self) -> bool:
        return self.trtexec_defaults_v11

    @property
    def default_spin_wait(self) -> bool:
        return self.trtexec_defaults_v11

    @property
    def default_data_transfers(self) -> bool:
        return not self.trtexec_defaults_v11


def capabilities(version: str | TrtVersion) -> TrtCapabilities:
    """What TensorRT `version` can do; DeployConfigError when unparseable or older than 8.5."""
    v = parse_trt_version(version)
    v11 = v.at_least(11)
    return TrtCapabilities(
        version=v,
        explicit_batch_flag=not v.at_least(10),
        precision_flags=not v11,
        precision_flags_deprecated=v.at_least(10, 12) and not v11,
        bf16=v.at_least(9),
        strongly_typed_available=v.at_least(9),
        strongly_typed_only=v11,
        calibrators=not v11,
        calibrators_deprecated=v.at_least(10, 1) and not v11,
        trtexec_precision_flags=not v11,
        trtexec_strongly_typed_flag=v.at_least(9) and not v11,
        trtexec_defaults_v11=v11,
        builder_optimization_level=v.at_least(8, 6),
    )
