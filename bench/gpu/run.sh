#!/usr/bin/env bash
# The prepared GPU run (issue 11; bench/gpu/README.md): installs what the bare device lacks from the
# carried folder bench/gpu/carry/ (filled here by `.venv/bin/python bench/gpu/run.py --prepare`), then
# runs bench/gpu/run.py within 9 minutes in all, installs included. Extra arguments go to run.py.
#   bash bench/gpu/run.sh [--budget-s 540] [--iters stage1_iters=1000,stage2_iters=400,alp_iters=1000]
set -euo pipefail
t0=$(date +%s)
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
site=/tmp/omniseg-gpu-site
if ! "$PY" -c "import pycocotools, faster_coco_eval" 2>/dev/null; then
  if compgen -G "bench/gpu/carry/wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      bench/gpu/carry/wheels/*.whl || echo "run.sh: installing the carried wheels failed" >&2
  else
    echo "run.sh: pycocotools / faster-coco-eval missing and bench/gpu/carry/wheels/ is empty (run --prepare here)" >&2
  fi
fi
# the carried MiniLM package is used only where the real one is not installed
export PYTHONPATH="$PWD:$site:${PYTHONPATH:-}:$PWD/bench/gpu/carry/site"
budget=$((${BUDGET_S:-540} - ($(date +%s) - t0)))
exec "$PY" bench/gpu/run.py --budget-s "$budget" "$@"
