#!/usr/bin/env bash
# The GPU check (issue 16): one prepared run on a bare H100/H200, at most 8 minutes, that
# writes one JSON (bench/device.py) to $OUT/device.json (or --out PATH).
#
#   bench/device.sh                         # on the device, from the repo root
#   bench/device.sh --dry-run --out X.json  # the same driver end to end on CPU, tiny shapes,
#                                           # with the current Python (no install)
#   bench/device.sh --download-wheels DIR   # on a machine with internet: fill DIR with the
#                                           # wheels the device needs (then carry DIR along)
#
# The device has no internet. Python packages come, in this order, from:
#   1. the Python already there, if it imports jax with a GPU backend (and optax, yaml);
#   2. wheels in $WHEELS (default bench/wheels), installed into .venv-device with
#      `pip install --no-index --find-links $WHEELS`.
# raysae itself runs from the checkout (PYTHONPATH), so Ray is not needed on the device.
# Environment: OUT (output dir), WHEELS, PYTHON (interpreter, default python3),
# DEVICE_BUDGET_S (driver's time budget, default 420 s, less what the install took; the
# whole script is capped at 480 s),
# JAX_VERSION (pinned by --download-wheels, default: the version this checkout tests with).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(optax numpy pyyaml fsspec ml_dtypes filelock cloudpickle)
JAX_VERSION=${JAX_VERSION:-0.10.2}
WHEELS=${WHEELS:-bench/wheels}
PYTHON=${PYTHON:-python3}
OUT_PATH=""
DRY=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --out) OUT_PATH="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --download-wheels)
      DIR="$2"; mkdir -p "$DIR"
      # Linux x86_64 wheels for the device's Python (set PY_VERSION if it is not this one's).
      PY_VERSION=${PY_VERSION:-$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')}
      "$PYTHON" -m pip download --dest "$DIR" --only-binary=:all: \
        --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
        --python-version "$PY_VERSION" "jax[cuda12]==$JAX_VERSION" "${PACKAGES[@]}" pip
      echo "wheels in $DIR ($(du -sh "$DIR" | cut -f1)); carry it as bench/wheels or set WHEELS"
      exit 0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "bench/device.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

OUT_PATH=${OUT_PATH:-${OUT:-.}/device.json}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ $DRY == 1 ]]; then
  export JAX_PLATFORMS=cpu
  exec "$PYTHON" bench/device.py --dry-run --out "$OUT_PATH" --budget-s "${DEVICE_BUDGET_S:-600}"
fi

has_gpu_jax() {
  "$1" - <<'EOF' 2>/dev/null
import jax, optax, yaml  # noqa: F401
raise SystemExit(0 if jax.devices()[0].platform == "gpu" else 1)
EOF
}

PY="$PYTHON"
if has_gpu_jax "$PY"; then
  echo "# using the jax already installed for $PY"
elif [[ -d "$WHEELS" ]] && compgen -G "$WHEELS/*.whl" > /dev/null; then
  echo "# installing from $WHEELS into .venv-device (no index)"
  "$PYTHON" -m venv .venv-device
  PY=.venv-device/bin/python
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" "jax[cuda12]" "${PACKAGES[@]}"
  has_gpu_jax "$PY" || { echo "bench/device.sh: jax from $WHEELS sees no GPU" >&2; exit 1; }
else
  echo "bench/device.sh: no GPU-enabled jax for $PYTHON and no wheels in $WHEELS;" \
       "run bench/device.sh --download-wheels $WHEELS on a machine with internet" >&2
  exit 1
fi

"$PY" -c 'import jax; d = jax.devices()[0]; print(f"# {d.device_kind} ({d.platform}), jax {jax.__version__}")'
# 8 minutes in all: what the install took comes off the driver's budget; it stops starting
# sections 60 s before the hard cap, so a slow last section still leaves a JSON.
LEFT=$(( 480 - SECONDS ))
BUDGET=$(( ${DEVICE_BUDGET_S:-420} < LEFT - 60 ? ${DEVICE_BUDGET_S:-420} : LEFT - 60 ))
exec timeout "$LEFT" "$PY" bench/device.py --out "$OUT_PATH" --budget-s "$BUDGET"
