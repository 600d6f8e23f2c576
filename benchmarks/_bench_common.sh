# Sourced by the run_*_bench.sh scripts: the repository root, the interpreter and the common overrides
# (PYTHON, DEVICE, ONLY, SKIP_EXISTING, DTYPES; each script documents them and its own).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
DEVICE="${DEVICE:-cpu}"
ONLY="${ONLY:-}"
SKIP_EXISTING="${SKIP_EXISTING:-0}"
DTYPES="${DTYPES:-fp32 bf16}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# skip NAME FILE: true when ONLY excludes NAME, or SKIP_EXISTING=1 and FILE exists (and says so).
skip() {
  if [ -n "$ONLY" ] && [[ "$1" != *"$ONLY"* ]]; then return 0; fi
  if [ "$SKIP_EXISTING" = 1 ] && [ -f "$2" ]; then
    echo "== $1: exists, skipped"
    return 0
  fi
  return 1
}

# approx_dir HEADS: the factor-4 ApproxNet of the demo's BBC teacher with HEADS heads (12 is the demo's
# own; run_approx_heads.sh distils the others).
approx_dir() {
  if [ "$1" = 12 ]; then echo artifacts/demo/approx-bbc-f4; else echo "artifacts/approx_heads/bbc-f4-h$1"; fi
}
