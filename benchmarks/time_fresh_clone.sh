#!/usr/bin/env bash
# What CI does, timed: clone HEAD into a temporary folder with ../shared linked beside it, run `.ci/run`
# (= `make test`: venv, CPU torch, dependencies, the default suite) and write its wall time, pytest's
# summary line and the CPU to a JSON. The clone and its log are removed afterwards.
#
#   bash benchmarks/time_fresh_clone.sh [OUTPUT]   # default benchmarks/results/ci/fresh_clone.json
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTPUT="${1:-$ROOT/benchmarks/results/ci/fresh_clone.json}"
SHARED="$(cd "$ROOT/../shared" 2>/dev/null && pwd)" || { echo "no ../shared beside the checkout" >&2; exit 2; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
git clone -q "$ROOT" "$WORK/main"
ln -s "$SHARED" "$WORK/shared"
LOG="$WORK/ci.log"
mkdir -p "$(dirname "$OUTPUT")"
start=$(date +%s.%N)
status=0
(cd "$WORK/main" && bash .ci/run) >"$LOG" 2>&1 || status=$?
end=$(date +%s.%N)
python3 - "$OUTPUT" "$LOG" "$start" "$end" "$status" "$(git -C "$ROOT" rev-parse HEAD)" <<'EOF'
import json, os, platform, re, sys
output, log, start, end, status, commit = sys.argv[1:]
lines = open(log, encoding="utf-8", errors="replace").read().splitlines()
summary = next((line for line in reversed(lines) if re.search(r"\d+ (passed|failed)", line)), None)
flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
result = {
    "commit": commit, "exit_status": int(status), "wall_s": round(float(end) - float(start), 1),
    "pytest_summary": summary, "log_tail": lines[-3:], "cpu_count": os.cpu_count(), "machine": platform.machine(),
    "cpu_features": sorted({f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f} " in flags}),
    "load_average_after": [round(x, 2) for x in os.getloadavg()],
    "command": "bash benchmarks/time_fresh_clone.sh",
}
tmp = output + ".tmp"
with open(tmp, "w", encoding="utf-8") as handle:
    json.dump(result, handle, indent=1)
    handle.write("\n")
os.replace(tmp, output)
print(json.dumps(result))
EOF
exit "$status"
