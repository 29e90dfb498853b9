"""TensorRT version strings and what each release can do (no TensorRT needed)."""

from __future__ import annotations

import pytest

from deploy.errors import DeployConfigError
from deploy.tensorrt.version import (
    TrtVersion,
    capabilities,
    parse_trt_version,
    version_from_banner_number,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8.6.1", TrtVersion(8, 6, 1)),
        ("10.3.0.26", TrtVersion(10, 3, 0, 26)),
        ("10.12", TrtVersion(10, 12, 0)),
        ("11.1.0", TrtVersion(11, 1, 0)),
        ("8.6.1.post1", TrtVersion(8, 6, 1)),
        (" 10.3.0+cuda12 ", TrtVersion(10, 3, 0)),
    ],
)
def test_version_strings_parse(text: str, expected: TrtVersion) -> None:
    assert parse_trt_version(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8.4.3", "TensorRT 8.4.3 is not supported; deploy needs TensorRT 8.5 or newer"),
        ("7.2.3.4", "not supported"),
        ("ten", "'ten' is not a version number"),
        ("", "is not a version number"),
        ("10", "is not a version number"),
    ],
)
def test_unsupported_or_unparseable_versions_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(DeployConfigError, match=message):
        parse_trt_version(text)


def test_versions_order_and_print() -> None:
    assert parse_trt_version("10.12") > parse_trt_version("10.3.0.26")
    assert str(parse_trt_version("10.3.0.26")) == "10.3.0.26"
    assert str(parse_trt_version("10.12")) == "10.12.0"


def test_same_release_ignores_a_missing_build_number_but_not_a_different_one() -> None:
    assert parse_trt_version("10.3.0").same_release(parse_trt_version("10.3.0.26"))
    assert not parse_trt_version("10.3.0.26").same_release(parse_trt_version("10.3.0.30"))
    assert not parse_trt_version("10.3.0").same_release(parse_trt_version("10.3.1"))


@pytest.mark.parametrize(
    ("number", "expected"),
    [(8601, "8.6.1"), (100300, "10.3.0"), (101200, "10.12.0"), (110100, "11.1.0")],
)
def test_trtexec_banner_numbers_use_both_schemes(number: int, expected: str) -> None:
    # NV_TENSORRT_VERSION: major*1000+minor*100+patch before 10, major*10000+... from 10.
    assert str(version_from_banner_number(number)) == expected


def test_capabilities_8_6_needs_explicit_batch_and_has_no_strong_typing() -> None:
    caps = capabilities("8.6.1")
    assert caps.explicit_batch_flag and caps.precision_flags and caps.calibrators
    assert not caps.bf16 and not caps.strongly_typed_available
    assert not caps.precision_flags_deprecated and not caps.calibrators_deprecated
    assert caps.trtexec_precision_flags and not caps.trtexec_strongly_typed_flag
    assert not caps.default_cuda_graph and caps.default_data_transfers


def test_capabilities_10_x_deprecations_arrive_in_10_1_and_10_12() -> None:
    v10_0, v10_3, v10_12 = capabilities("10.0.1"), capabilities("10.3.0"), capabilities("10.12")
    assert not any(c.explicit_batch_flag for c in (v10_0, v10_3, v10_12))
    assert not v10_0.calibrators_deprecated and v10_3.calibrators_deprecated
    assert not v10_3.precision_flags_deprecated and v10_12.precision_flags_deprecated
    assert all(c.precision_flags and c.bf16 and c.strongly_typed_available for c in (v10_3, v10_12))
    assert not v10_12.strongly_typed_only and v10_12.trtexec_strongly_typed_flag


def test_capabilities_11_is_strongly_typed_only_with_new_trtexec_defaults() -> None:
    caps = capabilities("11.1.0")
    assert caps.strongly_typed_only and not caps.precision_flags and not caps.calibrators
    assert not caps.trtexec_precision_flags and not caps.trtexec_strongly_typed_flag
    assert caps.default_cuda_graph and caps.default_spin_wait and not caps.default_data_transfers


def test_jetpack_5_tensorrt_8_5_is_accepted_without_builder_optimization_level() -> None:
    assert capabilities("8.5.2.2").builder_optimization_level is False
    assert capabilities("8.6.1").builder_optimization_level is True
