#!/usr/bin/env bash
# Set up bsrnn on a fresh Debian machine: the TTS engines and data packages the embedded speech
# corpus needs (apt), then a virtualenv with the pinned CPU torch and the package (pip).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# espeak-ng, flite: the two TTS engines; wordnet-base: the prompts; pocketsphinx-testdata: a
# small real-speech evaluation set; sox: inspecting and converting audio by hand; g++ and
# libgomp1: the block-sparse CPU kernel is compiled once per machine on first use; libjemalloc2: the
# allocator training processes run with (glibc malloc fragments under changing batch shapes).
$SUDO apt-get install -y -qq --no-install-recommends espeak-ng flite wordnet-base pocketsphinx-testdata sox g++ libgomp1 libjemalloc2 >/dev/null
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
echo "bsrnn set up: $(.venv/bin/python -c 'import torch, bsrnn; print("bsrnn", bsrnn.__version__, "torch", torch.__version__)')"
