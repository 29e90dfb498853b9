#!/usr/bin/env bash
# Set up a virtual environment for this project, keeping any torch already installed in it.
#
#   bash install.sh                      .venv with the pipeline, `compressor` and `deploy`
#                                        (the [pipeline] extra; torch 2.13.0 CPU if no torch)
#   bash install.sh --test               ... plus pytest, ruff, hypothesis, Ray (the suite
#                                        runs the lottery grid on Ray for real) and MkDocs
#                                        (CI builds the docs site)
#   bash install.sh --ray                ... plus Ray: compressor lottery --executor ray
#   bash install.sh --torchvision        ... plus torchvision and timm (torch 2.14.1 +
#                                        torchvision 0.29.1 if the venv has no torch yet)
#   bash install.sh --deploy-only        `deploy` alone, without torch (the [deploy] extra),
#                                        pinned like the rest (Python 3.11 wheels; on a
#                                        Jetson's Python 3.10: pip install -e '.[deploy]');
#                                        with --test, also pytest, ruff and cuda-bindings
#   bash install.sh --venv DIR ...       another venv (made when missing)
#
# Why a script and not one pip line: constraints.txt pins every package we test with, except
# torch. A pin on torch would make pip replace a user's CUDA build (or a torch that matches
# their torchvision) with ours; without any torch spec, pip on a fresh machine would pick the
# newest torch, a multi-GB CUDA build. So torch is installed here only when the venv has none,
# and the script checks afterwards that pip left it alone.
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
test=0
ray=0
torchvision=0
deploy_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) venv="${2:?--venv needs a directory}"; shift 2 ;;
        --test) test=1; shift ;;
        --ray) ray=1; shift ;;
        --torchvision) torchvision=1; shift ;;
        --deploy-only) deploy_only=1; shift ;;
        -h|--help) awk 'NR == 1 { next } /^#$/ && ++blank == 2 { exit } { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option '$1' (use --venv DIR, --test, --ray, --torchvision," \
                "--deploy-only)" >&2
           exit 2 ;;
    esac
done

# The extras to install: [deploy] (no torch) or [pipeline], plus what the flags add.
if [ "$deploy_only" = 1 ]; then
    if [ "$torchvision" = 1 ] || [ "$ray" = 1 ]; then
        echo "install.sh: --deploy-only installs no torch, so --ray and --torchvision (which" \
             "need the pipeline) cannot go with it" >&2
        exit 2
    fi
    extras=deploy
    [ "$test" = 0 ] || extras+=,test  # not Ray: its grid runs the pipeline
else
    extras=pipeline
    [ "$test" = 0 ] || extras+=,test,ray,docs
    [ "$ray" = 0 ] || [ "$test" = 1 ] || extras+=,ray
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
pip=("$py" -m pip install -q --disable-pip-version-check)

torch_version() { "$py" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null; }
has() { "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"; }

if [ "$deploy_only" = 1 ]; then
    # numpy, onnx, onnxruntime and matplotlib; torch is neither installed nor looked for.
    "${pip[@]}" -c constraints.txt -e ".[$extras]"
    found="$(torch_version || true)"
    if [ -n "$found" ]; then
        echo "install.sh: $venv already had torch $found; it was left in place (a new --venv" \
             "DIR makes a venv without it)"
    fi
    echo "install.sh: $venv ready for deploy (no pipeline; \`compressor\` needs" \
         "bash install.sh, or pip install '.[pipeline]')"
    exit 0
fi

before="$(torch_version || true)"
if [ -z "$before" ]; then
    if [ "$torchvision" = 1 ]; then
        # The tested pair: a CUDA build that also runs on the CPU.
        "${pip[@]}" torch==2.14.1 torchvision==0.29.1
    else
        # The CPU wheel: the pipeline's tested torch, and a small download.
        "${pip[@]}" torch==2.13.0
    fi
    before="$(torch_version)"
    echo "install.sh: installed torch $before into $venv"
else
    echo "install.sh: keeping torch $before in $venv"
fi
if [ "$torchvision" = 1 ] && ! has torchvision; then
    echo "install.sh: $venv has torch $before but no torchvision; install the torchvision" \
         "built for that torch (for torch 2.14.1: pip install torchvision==0.29.1), then rerun" >&2
    exit 1
fi

"${pip[@]}" -c constraints.txt -e ".[$extras]"
if [ "$torchvision" = 1 ]; then "${pip[@]}" -c constraints.txt timm; fi

after="$(torch_version)"
if [ "$after" != "$before" ]; then
    echo "install.sh: pip changed torch from $before to $after in $venv; please report this" >&2
    exit 1
fi
echo "install.sh: $venv ready (torch $after)"
