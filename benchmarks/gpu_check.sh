#!/usr/bin/env bash
# One-shot GPU check, for the first machine with a CUDA device (all in one call, <= 8 min):
#   1. the project's own setup (make's .venv; nothing else is installed),
#   2. the CUDA-marked tests (pytest -m cuda),
#   3. the benchmark suite on cuda: DenseCRF loss value + gradient at N=12 and N=1
#      (K=21, 256²), and a DeepLabV3+ MobileNet training step at batch 12 on 513² crops
#      with and without the DenseCRF term,
#   4. a RESULTS.md entry (benchmarks/run.py --record) naming the GPU, and the aims checked:
#      N=12 case <= 10 ms, DenseCRF term < 10% of the training step.
# Without a CUDA device it says so and exits 0 before installing anything.
# Usage: bash benchmarks/gpu_check.sh      (from anywhere; env BUDGET_S overrides the 480 s)
set -uo pipefail
cd "$(dirname "$0")/.."
budget=${BUDGET_S:-480}
start=$SECONDS
left() { echo $(( budget - (SECONDS - start) )); }

py=.venv/bin/python
has_gpu() {
  if [ -x "$py" ]; then
    "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
  else
    [ "${CUDA_VISIBLE_DEVICES-unset}" != "" ] && command -v nvidia-smi >/dev/null 2>&1 \
      && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
  fi
}
if ! has_gpu; then
  echo "gpu_check: no CUDA device visible on this machine (torch.cuda.is_available() is false" \
       "or nvidia-smi lists no GPU); nothing to check. Run it on a machine with a GPU."
  exit 0
fi

echo "gpu_check: [1/4] setup (.venv)"
make -s .venv/.rloss-installed || { echo "gpu_check: setup failed"; exit 1; }
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: torch in .venv sees no CUDA device (a CPU-only torch?):"
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  exit 1
fi
"$py" -c 'import torch; p = torch.cuda.get_device_properties(0); print("gpu_check:", p.name, f"{p.total_memory / 2**30:.0f} GiB,", "torch", torch.__version__)'

status=0
echo "gpu_check: [2/4] CUDA tests"
timeout $(( $(left) / 3 )) "$py" -m pytest -m cuda -q -p no:cacheprovider || status=1

echo "gpu_check: [3/4] benchmarks on cuda (and [4/4] the RESULTS.md entry)"
out=$(mktemp -d)
timeout $(( $(left) - 10 )) "$py" benchmarks/run.py --device cuda --suites crf step \
    --step-batch 12 --step-size 513 --repeats 10 --record --out "$out" || status=1
if [ -f "$out/latest.json" ]; then
  "$py" - "$out/latest.json" <<'PY' || status=1
import json, statistics, sys
rows = json.load(open(sys.argv[1]))
med = {}
for r in rows:
    s, res = r["spec"], r["result"]
    if "times_ms" not in res:
        print(f"gpu_check: {s['suite']} failed: {res.get('error')}")
        continue
    key = (s["suite"], tuple(s.get("shape", ())), s.get("with_crf"))
    med[key] = statistics.median(res["times_ms"])
ok = True
n12 = med.get(("crf", (12, 21, 256, 256), None))
if n12 is not None:
    good = n12 <= 10.0
    ok &= good
    print(f"gpu_check: DenseCRF N=12 K=21 256² value+grad {n12:.2f} ms (aim <= 10 ms): {'met' if good else 'NOT met'}")
a, b = med.get(("step", (), False)), med.get(("step", (), True))
if a and b:
    share = (b - a) / b
    good = share < 0.10
    ok &= good
    print(f"gpu_check: training step B=12 513² {a:.1f} ms, with DenseCRF {b:.1f} ms: the term is {100 * share:.1f}% of the step (aim < 10%): {'met' if good else 'NOT met'}")
sys.exit(0 if ok else 2)
PY
fi
echo "gpu_check: done in $(( SECONDS - start )) s (status $status); the entry is at the top of benchmarks/RESULTS.md"
exit $status
