#!/usr/bin/env bash
# Create (or update) the project environment: Debian's Fashion-MNIST, a venv, pinned pip packages.
# Idempotent and quick when nothing changed: the venv is rebuilt only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-notebooks,onnx,dali,dev}

# 1. Fashion-MNIST, the embedded CPU dataset (MIT licence), from Debian.
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null; then SUDO="sudo"; else
            echo "error: Debian package dataset-fashion-mnist is missing and this user cannot install it;" \
                 "run: apt-get install dataset-fashion-mnist (or pass DATA=<dir with the IDX files>)" >&2
            exit 1
        fi
    fi
    echo "[setup] installing Debian package dataset-fashion-mnist"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# 2. The virtual environment with the pinned packages (torch==2.14.1, torchvision==0.29.1).
stamp="$VENV/.maxq-installed"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1) $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
echo "[setup] installing maxq[$EXTRAS] and pinned dependencies into $VENV (first time: a few minutes)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
echo "$want" > "$stamp"
