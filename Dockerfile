# syntax=docker/dockerfile:1
#
# One image definition, two bases, chosen by a build argument:
#
#   docker build -t lld:server .                              # x86-64/arm64 GPU server
#   docker build -t lld:jetson --build-arg TARGET=jetson .    # on a Jetson Orin (JetPack 6)
#   docker build --build-arg SERVER_IMAGE=nvcr.io/nvidia/pytorch:<yy.mm>-py3 .   # another release
#
# Needs BuildKit (the default builder since Docker Engine 23): it builds only the base stage
# that TARGET names. The legacy builder would also pull the other base, which fails on x86-64
# for the arm64-only Jetson image.
#
# Never built here: the machines this project is developed and tested on have no Docker
# engine, so tests/test_dockerfile.py checks the structure of this file, not an image.

# server | jetson
ARG TARGET=server

# GPU server: NVIDIA's PyTorch container (NGC), which carries CUDA, cuDNN, PyTorch and
# TensorRT with its Python bindings. Release 25.12, per NVIDIA's release notes
# (https://docs.nvidia.com/deeplearning/frameworks/pytorch-release-notes/rel-25-12.html):
# CUDA 13.1.0, PyTorch 2.10.0a0+b4e4ee81d3, Python 3.12 (torch in
# /usr/local/lib/python3.12/dist-packages), and a pip constraints file at
# /etc/pip/constraint.txt that pins every package the image was built with. Its TensorRT
# version was NOT verified from NVIDIA's notes (the list did not survive in the copy read);
# third-party reports give TensorRT 10.14.1.48 for 25.11. The build prints the version it
# finds. CUDA 13 needs a recent driver (R580 class); with an older driver pass an older
# SERVER_IMAGE.
ARG SERVER_IMAGE=nvcr.io/nvidia/pytorch:25.12-py3

# Jetson: the iGPU variant of the same NGC PyTorch container (`-py3-igpu` tags, arm64), which
# carries a CUDA build of PyTorch for the Jetson's integrated GPU. Release 24.12 because NGC's
# 24.12 releases are on CUDA 12.6.3 (NVIDIA's Triton compatibility matrix, 24.12 row), the
# CUDA 12.6 of JetPack 6.1/6.2 (L4T R36.4); later releases move to CUDA 12.8+ and 13. This
# tag is pulled and run on Jetson Orin boards in public projects, but NVIDIA's page for the
# iGPU image was not read: its CUDA, Python (3.12 expected) and TensorRT versions are
# unverified, and the build prints what it finds. Not JetPack 5: NVIDIA's last l4t-pytorch images
# (nvcr.io/nvidia/l4t-pytorch:r35.2.1-pth2.0-py3) have Python 3.8 and PyTorch 2.0, and this
# project needs Python >= 3.10 (its dataclasses use kw_only) and torch >= 2.4. For JetPack 5,
# copy a `compressor bundle` to the device instead (README).
ARG JETSON_IMAGE=nvcr.io/nvidia/pytorch:24.12-py3-igpu

FROM ${SERVER_IMAGE} AS base-server
ARG SERVER_IMAGE
LABEL org.opencontainers.image.base.name="${SERVER_IMAGE}"
# The project's extras to install: the pipeline, and NVML (nvidia-ml-py), which gives
# `deploy` power and energy readings on a discrete GPU.
ENV LLD_TARGET=server \
    LLD_EXTRAS="pipeline nvml"

FROM ${JETSON_IMAGE} AS base-jetson
ARG JETSON_IMAGE
LABEL org.opencontainers.image.base.name="${JETSON_IMAGE}"
# No NVML on a Jetson: `deploy` reads power from tegrastats.
ENV LLD_TARGET=jetson \
    LLD_EXTRAS="pipeline"

FROM base-${TARGET} AS app

LABEL org.opencontainers.image.title="layer-lottery-deploy" \
      org.opencontainers.image.description="Layer pruning at init, ONNX/INT8/FP16 export, TensorRT deployment"

# The base images run Python as the distribution's interpreter, which Ubuntu 24.04 marks as
# externally managed; inside a container that interpreter is the environment, so pip may
# install into it (PIP_BREAK_SYSTEM_PACKAGES on the pip commands only).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/layer-lottery-deploy

# Dependencies first, from pyproject.toml alone (the core dependencies plus the extras in
# LLD_EXTRAS), so that editing the source does not reinstall them. The base image's torch (NVIDIA's CUDA build) must survive: a plain
# `pip install .` could replace it with a PyPI wheel (CPU-only on a Jetson). So torch is left
# out of the list, and its installed version is also passed as a constraint, because
# torch-pruning depends on torch too; NGC images from 25.03 on also set PIP_CONSTRAINT to
# their own constraints file, which pip applies as well. TensorRT is not a dependency of the
# project, so pip never touches it. onnxruntime is the CPU package on both targets: `deploy`
# uses onnxruntime's CPU provider, and the GPU paths are TensorRT and torch; PyPI has
# onnxruntime wheels for aarch64 (CPU). The project's constraints.txt is not used here: it
# pins the CPU versions the tests ran with (numpy 2.4, torch 2.13), which conflict with what
# the NVIDIA images are built with. Reading pyproject.toml needs tomllib (Python >= 3.11;
# both default bases have 3.12). No cuda-python: the images' torch gives the TensorRT runner
# its GPU buffers.
COPY pyproject.toml ./
RUN set -eu; \
    python3 -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' \
        > /tmp/keep-base.txt \
      || { echo "the base image has no torch; use an NVIDIA PyTorch image" >&2; exit 1; }; \
    python3 -c 'import os, re, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; deps = p["dependencies"] + [d for e in os.environ["LLD_EXTRAS"].split() for d in p["optional-dependencies"][e]]; print(*dict.fromkeys(d for d in deps if re.match(r"[A-Za-z0-9._-]+", d).group().lower() not in ("torch", "layer-lottery-deploy")), sep=chr(10))' \
        > /tmp/project-deps.txt; \
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir \
        -c /tmp/keep-base.txt -r /tmp/project-deps.txt; \
    after="torch==$(python3 -c 'import importlib.metadata as m; print(m.version("torch"))')"; \
    if [ "$after" != "$(cat /tmp/keep-base.txt)" ]; then \
        echo "pip replaced the base image's torch: $(cat /tmp/keep-base.txt) -> $after" >&2; \
        exit 1; \
    fi

# The project itself, without dependencies (all installed above). A regular install, not
# editable, so `compressor` and `deploy` are console scripts on PATH; the source tree stays
# here for recipes/ and benchmarks/.
COPY . .
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --no-deps . \
    && python3 -c 'from importlib.metadata import requires, version; from packaging.requirements import Requirement; import os; extras = os.environ["LLD_EXTRAS"].split(); reqs = [Requirement(r) for r in requires("layer-lottery-deploy")]; wanted = [r for r in reqs if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras)]; bad = [str(r) for r in wanted if not r.specifier.contains(version(r.name), prereleases=True)]; assert not bad, "unsatisfied: " + ", ".join(bad)'

# A non-root user with a fixed UID. Files the container writes into a bind mount belong to
# this UID on the host, so build with --build-arg APP_UID=$(id -u) --build-arg
# APP_GID=$(id -g) when yours is not 1000. Ubuntu 24.04 bases already have a user `ubuntu`
# with UID 1000; it is removed so that `app` can take the UID.
ARG APP_UID=1000
ARG APP_GID=1000
RUN set -eu; \
    if [ "${APP_UID}" = 0 ]; then echo "APP_UID must not be 0 (root)" >&2; exit 1; fi; \
    existing="$(getent passwd "${APP_UID}" | cut -d: -f1)"; \
    if [ -n "$existing" ]; then userdel "$existing"; fi; \
    getent group "${APP_GID}" > /dev/null || groupadd --gid "${APP_GID}" app; \
    useradd --uid "${APP_UID}" --gid "${APP_GID}" --create-home --shell /bin/bash app; \
    mkdir -p /workspace/runs /workspace/results; \
    chown "${APP_UID}:${APP_GID}" /workspace /workspace/runs /workspace/results

# Results: `compressor` writes under runs/ and `deploy bench` under results/ (also engines/,
# bundle/, report/), all relative to this directory. Mount host directories over them to
# take results out of the container (README, "Docker"): -v "$PWD/runs:/workspace/runs".
WORKDIR /workspace
USER ${APP_UID}:${APP_GID}

# Smoke check as the user that will run them: both console scripts start (neither imports
# torch for --help). Then the versions found, for the build log: printed, not required,
# because importing CUDA libraries during a build can fail where the GPU driver is only
# mounted at `docker run` time (Jetson).
RUN compressor --help > /dev/null \
    && deploy --help > /dev/null \
    && python3 -c 'import importlib.metadata as m; found = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in m.distributions()}; names = ("torch", "tensorrt", "onnxruntime", "onnx", "torch-pruning", "numpy"); print("versions:", *(n + " " + found.get(n, "not installed") for n in names), sep="\n  ")'

# The base image's ENTRYPOINT (NVIDIA's, which prints the container banner and checks the
# driver) stays; the command defaults to the CLI's help.
CMD ["compressor", "--help"]
