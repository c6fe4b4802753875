#!/bin/sh
# tests/gpu/tune_paged.sh — the tuner on a GPU with a budget that pages (issue 7): paged
# configurations are timed on the real job engine (cm_gpu_time_paged). 32K keys, H 8, Hkv 2, D 128:
# 32 MB of bf16 keys, and 150 MB of device memory, of which ~136 MB go to the chunk buffers, so
# most keys page (bench/NOTES_TUNE.md). Checks: the run succeeds, every timed candidate that pages
# has a positive measured time, the choice is valid under the budget (never defaults that do
# not fit: the first H100 run chose those), and a paged
# configuration is not measured faster than the same chunk's kernel with every key resident by
# more than timing noise (10%): paging can only add waits.
set -u
T=${TMPDIR:-/tmp}/fa_tune_paged.$$
mkdir -p "$T"
trap 'rm -rf "$T"' EXIT
./fa_long tune --backend cuda -n 32K --heads 8 --kv-heads 2 -d 128 --device-mem 150M --top 4 --reps 2 \
    --no-store --verbose > "$T/paged.txt" 2>&1 || { cat "$T/paged.txt"; echo "FAIL: tune with a paging budget"; exit 1; }
./fa_long tune --backend cuda -n 32K --heads 8 --kv-heads 2 -d 128 --top 4 --reps 2 \
    --no-store --verbose > "$T/resident.txt" 2>&1 || { cat "$T/resident.txt"; echo "FAIL: tune without a budget"; exit 1; }
grep -E "^result|^# choice" "$T/paged.txt"
python3 - "$T/paged.txt" "$T/resident.txt" <<'PY'
import sys
def rows(path):
    # fa_long tune prints a '#'-headed table: the header line names the columns (read by name)
    out, cols = [], None
    for l in open(path):
        if l.startswith("#") and l[1:].split()[:1] == ["kind"]:
            cols = l[1:].split()
        elif cols and l.startswith(" ") and len(l.split()) == len(cols):
            out.append(dict(zip(cols, l.split())))
    if cols is None:
        sys.exit(f"FAIL: no '#kind ...' table header in {path}")
    return out
paged, resident = rows(sys.argv[1]), rows(sys.argv[2])
cands = [r for r in paged if r["kind"] in ("cand", "final") and float(r["t_page"]) > 0]
ok = bool(cands) and all(float(r["measured_s"]) > 0 for r in cands)
print(f"  {len(cands)} paged candidates timed on the job engine: {'ok' if ok else 'FAIL'}")
res = {(r["variant"], r["chunk"]): float(r["measured_s"]) for r in resident if r["kind"] in ("cand", "final")}
worse = [r for r in cands if (r["variant"], r["chunk"]) in res and float(r["measured_s"]) < 0.9 * res[(r["variant"], r["chunk"])]]
print(f"  paged measured below 0.9x the resident kernel time: {len(worse)} (expected 0)")
tuned = [r for r in paged if r["kind"] == "tuned"]
valid = len(tuned) == 1 and tuned[0]["critical"] != "invalid" and float(tuned[0]["predicted_s"]) > 0
print(f"  the choice is a valid configuration under the budget: {'ok' if valid else 'FAIL'}")
ok = ok and not worse and valid and float(tuned[0]["measured_s"]) > 0
sys.exit(0 if ok else 1)
PY
rc=$?
[ $rc -eq 0 ] && echo "tests/gpu/tune_paged.sh: all passed" || echo "FAIL: tests/gpu/tune_paged.sh"
exit $rc
