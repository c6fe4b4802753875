"""fa_long tune and the tune cache end to end (tune/, runner/tune.c), CPU only:
corrupt / foreign / other-device caches are ignored with one warning line and the run is still
right; with no cache a run uses exactly the model's choice (--verbose, and the output's chunk
attribute); tune on a tiny job stores a configuration no slower than the defaults it timed, and a
run then uses it; --tune on a run tunes, stores and runs; GPU tuning without a GPU fails cleanly;
--dtype names the compute type of the key, and a run without its own dtype's entry takes another
dtype's and says so; files of version 1 (merges in flight called `window`) are read and kept."""
import os
import re
import subprocess

import h5py
import pytest

from conftest import FA_LONG, run_fa

SHAPE = ["-n", "1536", "--heads", "8", "--kv-heads", "2", "-d", "64"]


def gen(tmp_path, name="in.h5"):
    inp = tmp_path / name
    p = subprocess.run([str(FA_LONG), "gen", "--output", str(inp)] + SHAPE,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return inp


def tune(args, cache, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([str(FA_LONG), "tune", "--tune-cache", str(cache)] + args,
                          capture_output=True, text=True, timeout=timeout, env=env)


def results(out):
    """The rows of fa_long tune's table, as dicts by the '#kind br bc ...' header's names."""
    cols, rows = None, []
    for line in out.splitlines():
        if line.startswith("#") and line[1:].split()[:2] == ["kind", "br"]:
            cols = line[1:].split()
        elif cols and line.strip() and not line.startswith("#"):
            f = line.split()
            assert len(f) == len(cols), f"a table row with {len(f)} fields under {len(cols)} columns: {line}"
            rows.append(dict(zip(cols, f)))
    return rows


def run_job(tmp_path, inp, cache, extra=(), nranks=1, name="out.h5"):
    # 2 threads per rank whatever the rank count: the thread count is part of the cache's device
    out = tmp_path / name
    p = run_fa(["-i", inp, "-o", out, "--force", "--verbose", "--check", "16"] + list(extra),
               nranks=nranks, env={"FA_TUNE_CACHE": str(cache), "OMP_NUM_THREADS": "2"})
    return p, out


def choice_line(stderr):
    m = re.search(r"tune: (\w+) choice: tile (\d+)x(\d+), (\d+) threads, chunk (\d+) rows, "
                  r"(\d+) merges in flight", stderr)
    assert m, stderr
    return m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(5)), int(m.group(6))


def warnings(stderr):
    return [l for l in stderr.splitlines() if "tune cache" in l and ("ignored" in l)]


def test_no_cache_uses_model_choice(tmp_path):
    inp = gen(tmp_path)
    cache = tmp_path / "none" / "tune.txt"
    p, out = run_job(tmp_path, inp, cache, ["--causal"])
    assert p.returncode == 0, p.stderr
    assert "PASS" in p.stdout + p.stderr
    src, br, bc, chunk, inflight = choice_line(p.stderr)
    assert src == "model"
    assert not warnings(p.stderr) and not cache.exists()
    # the same choice as the model's ranking printed by `tune --predict` (defaults, no timing)
    t = tune(SHAPE + ["--causal", "--predict", "--top", "1"], cache)
    assert t.returncode == 0, t.stderr
    best = results(t.stdout)[0]
    assert (int(best["br"]), int(best["bc"]), int(best["chunk"])) == (br, bc, chunk)
    with h5py.File(out) as f:
        assert int(f.attrs["chunk"]) == chunk


@pytest.mark.parametrize("kind", ["garbage", "truncated", "version", "badvalue"])
def test_bad_cache_ignored_with_one_warning(tmp_path, kind):
    inp = gen(tmp_path)
    cache = tmp_path / "tune.txt"
    # a valid entry for this job first (the key as a run builds it: from --predict's header)
    hdr = tune(SHAPE + ["--predict"], cache).stdout.splitlines()[0]
    key = hdr.split("fa_long tune: ", 1)[1]
    good = f"version = 1\n[{key}]\nbr = 8\nbc = 64\nthreads = 2\nchunk = 512\nwindow = 3\n"
    text = {"garbage": "\x00\x17\xff[[[== not a cache\n" * 5,
            "truncated": good[:good.index("chunk")],
            "version": good.replace("version = 1", "version = 7"),
            "badvalue": good.replace("bc = 64", "bc = sixty-four")}[kind]
    cache.write_text(text, errors="surrogateescape") if kind != "garbage" else cache.write_bytes(text.encode("latin1"))
    p, _ = run_job(tmp_path, inp, cache)
    assert p.returncode == 0, p.stderr
    assert "PASS" in p.stdout + p.stderr
    assert len(warnings(p.stderr)) == 1, p.stderr
    assert choice_line(p.stderr)[0] == "model"
    # and the valid file is used as is
    cache.write_text(good)
    p, out = run_job(tmp_path, inp, cache)
    assert p.returncode == 0 and not warnings(p.stderr), p.stderr
    assert choice_line(p.stderr)[:4] == ("cache", 8, 64, 512)
    with h5py.File(out) as f:
        assert int(f.attrs["chunk"]) == 512


def test_other_device_cache_ignored(tmp_path):
    inp = gen(tmp_path)
    cache = tmp_path / "tune.txt"
    hdr = tune(SHAPE + ["--predict"], cache).stdout.splitlines()[0]
    key = hdr.split("fa_long tune: ", 1)[1]
    other = "cpu Some Other CPU x64 |" + key.split("|", 1)[1]
    cache.write_text(f"version = 1\n[{other}]\nbr = 8\nbc = 64\nthreads = 64\nchunk = 512\nwindow = 3\n")
    p, _ = run_job(tmp_path, inp, cache)
    assert p.returncode == 0, p.stderr
    lines = [l for l in p.stderr.splitlines() if "other devices" in l]
    assert len(lines) == 1, p.stderr
    assert choice_line(p.stderr)[0] == "model"


def test_tune_tiny_job_then_run_uses_it(tmp_path):
    cache = tmp_path / "c" / "tune.txt"
    t = tune(SHAPE + ["--top", "4", "--reps", "3", "--verbose"], cache)
    assert t.returncode == 0, t.stderr
    rows = results(t.stdout)
    tuned = [r for r in rows if r["kind"] == "tuned"][0]
    assert "inflight" in rows[0] and "window" not in rows[0], rows[0]   # merges in flight
    key = lambda r: tuple(r[k] for k in ("br", "bc", "chunk", "inflight", "variant"))
    # each configuration's best timing: first rounds, then the interleaved final rounds
    best, finals = {}, set()
    for r in rows:
        if r["kind"] in ("default", "cand", "default_final", "final") and float(r["measured_s"]) > 0:
            best[key(r)] = min(best.get(key(r), float("inf")), float(r["measured_s"]))
        if r["kind"] == "final":
            finals.add(key(r))
    dkey = key([r for r in rows if r["kind"] == "default"][0])
    assert len(best) >= 2 and finals and any(r["kind"] == "default_final" for r in rows)
    # the stored winner is the defaults unless a finalist's best timing is 2% under theirs, and
    # then the fastest such finalist; its reported time is its best timing
    t, d = float(tuned["measured_s"]), best[dkey]
    assert t == best[key(tuned)]
    if key(tuned) == dkey:
        assert all(best[k] >= 0.98 * d for k in finals)
    else:
        assert key(tuned) in finals and t < 0.98 * d
        assert t == min(best[k] for k in finals)
    text = cache.read_text()
    assert "version = 2" in text and f"br = {tuned['br']}" in text
    assert f"merges_in_flight = {tuned['inflight']}" in text and "window" not in text
    inp = gen(tmp_path)
    p, out = run_job(tmp_path, inp, cache)
    assert p.returncode == 0, p.stderr
    assert "PASS" in p.stdout + p.stderr
    src, br, bc, chunk, _ = choice_line(p.stderr)
    assert (src, br, bc, chunk) == ("cache", int(tuned["br"]), int(tuned["bc"]), int(tuned["chunk"]))
    # two ranks read the same entry: same chunk, same result
    p2, out2 = run_job(tmp_path, inp, cache, nranks=2, name="out2.h5")
    assert p2.returncode == 0, p2.stderr
    assert choice_line(p2.stderr)[0] == "cache"
    with h5py.File(out) as a, h5py.File(out2) as b:
        assert int(a.attrs["chunk"]) == int(b.attrs["chunk"]) == chunk
        assert abs(a["o"][...] - b["o"][...]).max() <= 1e-5 * abs(a["o"][...]).max()


def test_run_with_tune_flag(tmp_path):
    inp = gen(tmp_path)
    cache = tmp_path / "t" / "tune.txt"
    p, _ = run_job(tmp_path, inp, cache, ["--tune", "--causal"])
    assert p.returncode == 0, p.stderr
    assert "tuning first" in p.stderr and cache.exists()
    assert "PASS" in p.stdout + p.stderr
    assert choice_line(p.stderr)[0] == "cache"
    p, _ = run_job(tmp_path, inp, cache, ["--tune", "--causal"])   # second time: nothing to tune
    assert p.returncode == 0 and "tuning first" not in p.stderr


def test_gpu_tune_without_gpu(tmp_path):
    cache = tmp_path / "g.txt"
    t = tune(["--backend", "cuda", "-n", "4096"], cache)
    assert t.returncode == 2, t.stdout + t.stderr
    assert "no CUDA device" in t.stderr
    assert not cache.exists()


def test_ranks_per_node_and_nearest_share(tmp_path):
    """Ranks that share a node get a share of its CPUs (fewer threads than fa_long tune ran
    with): `tune --ranks-per-node 2` tunes for that share, which a 2-rank run then finds; without
    it the run takes the entry of the nearest share and says which. The table has a header."""
    inp = gen(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}   # the node share

    def run2(cache, name):
        p = subprocess.run(["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none"]
                           + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
                           + [str(FA_LONG), "-i", str(inp), "-o", str(tmp_path / name), "--verbose"],
                           capture_output=True, text=True, timeout=300,
                           env=dict(env, FA_TUNE_CACHE=str(cache)))
        assert p.returncode == 0, p.stderr
        return p.stderr

    ncpu = len(os.sched_getaffinity(0))
    share = max(1, ncpu // 2)
    shared = tmp_path / "shared.txt"
    t = subprocess.run([str(FA_LONG), "tune", "--tune-cache", str(shared), "--ranks-per-node", "2",
                        "--top", "2", "--reps", "1"] + SHAPE, capture_output=True, text=True,
                       timeout=300, env=env)
    assert t.returncode == 0, t.stderr
    rows = results(t.stdout)
    assert rows and all(r["threads"] == str(share) for r in rows if r["kind"] == "tuned"), t.stdout
    assert f" x{share} |" in shared.read_text()
    err = run2(shared, "a.h5")
    assert choice_line(err)[0] == "cache" and "nearest" not in err, err
    # tuned with every CPU of the node: the 2-rank run has no entry of its own, takes this one
    whole = tmp_path / "whole.txt"
    t = subprocess.run([str(FA_LONG), "tune", "--tune-cache", str(whole), "--threads", str(2 * share),
                        "--top", "2", "--reps", "1"] + SHAPE, capture_output=True, text=True,
                       timeout=300, env=env)
    assert t.returncode == 0, t.stderr
    err = run2(whole, "b.h5")
    near = [l for l in err.splitlines() if "using the nearest" in l]
    assert len(near) == 1 and f"x{2 * share} |" in near[0] and f"no entry for {share} threads" in near[0], err
    assert choice_line(err)[0] == "cache"


def predict_key(cache, extra=()):
    """The cache key of SHAPE as a run on this machine builds it (from --predict's header)."""
    hdr = tune(SHAPE + ["--predict"] + list(extra), cache).stdout.splitlines()
    return [l for l in hdr if l.startswith("# fa_long tune: ")][0].split("fa_long tune: ", 1)[1]


def test_dtype_is_the_compute_type(tmp_path):
    """tune --dtype: the CPU engine computes in float32 whatever the input's type, so float16 and
    bfloat16 tune its float32 entry and say so; float64 is no choice; on a GPU float32 is none."""
    cache = tmp_path / "t.txt"
    assert "dtype=float32" in predict_key(cache)
    for t in ("float16", "bfloat16"):
        p = tune(SHAPE + ["--predict", "--dtype", t], cache)
        assert p.returncode == 0, p.stderr
        notes = [l for l in p.stdout.splitlines() if l.startswith(f"# --dtype {t}:")]
        assert len(notes) == 1 and "computes in float32" in notes[0], p.stdout
        assert "dtype=float32" in p.stdout and f"dtype={t}" not in p.stdout.replace(notes[0], "")
    p = tune(SHAPE + ["--predict", "--dtype", "float64"], cache)
    assert p.returncode == 2 and "--dtype 'float64' is not float32, float16 or bfloat16" in p.stderr
    p = tune(SHAPE + ["--backend", "cuda", "--dtype", "float32"], cache)
    assert p.returncode == 2 and "computes in bfloat16 or float16" in p.stderr, p.stderr
    assert not cache.exists()


def test_other_dtype_entry_with_one_line(tmp_path):
    """A run whose compute type has no entry takes the entry of another dtype for the same device
    and job, with one line naming it (as the nearest share does); its own entry, once there, wins."""
    inp = gen(tmp_path)
    cache = tmp_path / "tune.txt"
    key = predict_key(cache)
    other = key.replace("dtype=float32", "dtype=bfloat16")
    entry = "br = 8\nbc = 64\nthreads = 2\nchunk = 512\nmerges_in_flight = 4\n"
    cache.write_text(f"version = 2\n[{other}]\n{entry}")
    p, out = run_job(tmp_path, inp, cache)
    assert p.returncode == 0, p.stderr
    lines = [l for l in p.stderr.splitlines() if "using the entry for another type" in l]
    assert len(lines) == 1 and "no entry for float32 compute" in lines[0] and other in lines[0], p.stderr
    assert choice_line(p.stderr) == ("cache", 8, 64, 512, 4)
    with h5py.File(out) as f:
        assert int(f.attrs["chunk"]) == 512
    cache.write_text(f"version = 2\n[{other}]\n{entry}[{key}]\n" + entry.replace("512", "256"))
    p, _ = run_job(tmp_path, inp, cache)
    assert p.returncode == 0 and "another type" not in p.stderr, p.stderr
    assert choice_line(p.stderr) == ("cache", 8, 64, 256, 4)


def test_version_1_cache_read_and_kept(tmp_path):
    """A cache written before merges in flight were renamed (version 1, `window = N`): a run reads
    it (the report's plan says merges_in_flight), and tune adds its entry beside the old one."""
    import json
    inp = gen(tmp_path)
    cache = tmp_path / "tune.txt"
    key = predict_key(cache)
    cache.write_text(f"version = 1\n[{key}]\nbr = 8\nbc = 64\nthreads = 2\nchunk = 512\nwindow = 5\n")
    report = tmp_path / "r.json"
    p, _ = run_job(tmp_path, inp, cache, ["--report", report])
    assert p.returncode == 0 and not warnings(p.stderr), p.stderr
    assert choice_line(p.stderr) == ("cache", 8, 64, 512, 5)
    plan = json.loads(report.read_text())["plan"]
    assert plan["merges_in_flight"] == {"value": 5, "from": "tune cache"} and "window" not in plan
    t = tune(["-n", "512", "--heads", "2", "--kv-heads", "2", "-d", "32", "--top", "1", "--reps", "1"],
             cache)
    assert t.returncode == 0, t.stderr
    text = cache.read_text()
    assert "version = 2" in text and f"[{key}]" in text and "merges_in_flight = " in text
    p, _ = run_job(tmp_path, inp, cache)
    assert p.returncode == 0 and not warnings(p.stderr), p.stderr
    assert choice_line(p.stderr) == ("cache", 8, 64, 512, 5)
