#!/usr/bin/env bash
# The main job on a fresh machine: set up, generate the embedded speech corpus, train a dense and
# a block-pruned model, and print the paper-style table (about 20 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/bsrnn main "$@"
