#!/usr/bin/env bash
# Runs the server tests N times (default 20) while one busy process per core hogs the CPU, and counts the
# iterations that failed: a test that asserts once instead of polling with a deadline shows up here.
#   scripts/flake-loop.sh [N] [pytest paths...]
# FLAKE_HOGS=K starts K busy processes instead (0: the machine is already busy, e.g. with trainings).
# A failed iteration's whole output is kept in $FLAKE_OUT (default: a temporary folder; each failure line names the file).
set -uo pipefail
cd "$(dirname "$0")/.."
n=${1:-20}
shift || true
paths=("$@")
[[ ${#paths[@]} -gt 0 ]] || paths=(tests/test_server_*.py tests/test_request_log.py tests/test_request_rules.py)
hogs=()
for _ in $(seq "${FLAKE_HOGS:-$(nproc)}"); do
  python3 -c "while True: pass" &
  hogs+=($!)
done
trap '[[ ${#hogs[@]} -eq 0 ]] || kill "${hogs[@]}" 2>/dev/null' EXIT
fails=0
keep=${FLAKE_OUT:-$(mktemp -d)}
mkdir -p "$keep"
for i in $(seq "$n"); do
  if out=$(.venv/bin/python -m pytest -q -p no:cacheprovider "${paths[@]}" 2>&1); then
    echo "iteration $i: ok: $(tail -1 <<<"$out")"
  else
    fails=$((fails + 1))
    echo "iteration $i: FAILED: $(grep -E '^FAILED|^ERROR' <<<"$out" | head -5) (output: $keep/iteration-$i.log)"
    printf '%s\n' "$out" > "$keep/iteration-$i.log"
  fi
done
echo "$fails of $n iterations failed"
[[ $fails -eq 0 ]]
