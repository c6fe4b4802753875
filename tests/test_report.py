"""Progress lines, --report JSON (and the output's 'report' attribute), --check after a run, and
the durable-progress / --resume path without Slurm."""
import json
import os
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest

from conftest import FA_LONG, mpirun_cmd, run_fa
from reference import attention_f64, random_inputs, rel_err, write_inputs


def make_input(tmp_path, B=1, N=300, H=4, Hkv=2, D=32):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, B, N, N, H, Hkv, D)
    inp = tmp_path / "in.h5"
    write_inputs(inp, q, k, v)
    return inp, (q, k, v)


def test_report_and_check(tmp_path):
    inp, (q, k, v) = make_input(tmp_path, B=2)
    out, rep = tmp_path / "out.h5", tmp_path / "r.json"
    p = run_fa(["-i", inp, "-o", out, "--causal", "--lse", "--chunk", "64", "--report", rep,
                "--check", "25"], nranks=3)
    assert p.returncode == 0, p.stderr
    assert "check: PASS" in p.stdout
    r = json.loads(rep.read_text())
    c = r["config"]
    assert (c["B"], c["Nq"], c["Nk"], c["H"], c["Hkv"], c["D"]) == (2, 300, 300, 4, 2, 32)
    assert c["causal"] is True and c["ranks"] == 3 and c["chunk"] == 64 and c["backend"] == "cpu"
    assert len(r["per_rank"]) == 3
    # the ranks' visible pairs add up to the causal triangle of both batch elements, all heads
    pairs = sum(x["work_pairs"] for x in r["per_rank"])
    assert pairs == 2 * 4 * 300 * 301 / 2
    assert r["flops"] == 4 * 32 * pairs
    assert 0 < r["phases_s"]["compute"] <= r["elapsed_s"]
    # every rank's phases are disjoint intervals of its run: their sum fits in the elapsed time
    # (sync: waiting for the other ranks in the reads' and writes' agreements, kept out of read
    # and write; counted in both, 3 oversubscribed ranks would overflow the elapsed time)
    assert r["phases_s"]["sync"] >= 0
    for x in r["per_rank"]:
        parts = ("setup_s", "read_s", "compute_s", "merge_wait_s", "finalize_s", "write_s", "sync_s")
        assert all(x[k] >= 0 for k in parts) and x["finalize_s"] > 0
        if not r["io_thread"]:
            assert sum(x[k] for k in parts) <= r["elapsed_s"] * 1.001 + 1e-3
            assert x["io_exposed_s"] >= x["read_s"] + x["write_s"] - 1e-3   # all of it waited for
        else:   # FA_IO_THREAD=1: reads and writes on their own thread, beside the rank's own
            own = ("setup_s", "compute_s", "merge_wait_s", "finalize_s", "io_exposed_s")
            assert sum(x[k] for k in own) <= r["elapsed_s"] * 1.001 + 1e-3
            assert x["read_s"] + x["write_s"] <= r["elapsed_s"] * 1.001 + 1e-3
        assert 0 < x["read_kv_s"] <= x["read_s"]
    assert r["bytes"]["merge_network"] > 0
    assert r["imbalance_compute_max_over_mean"] >= 1.0
    assert r["check"]["pass"] is True and r["check"]["rows"] == 25
    assert r["check"]["rel_err"] <= 1e-5
    # the floor: the largest of the slowest rank's compute and its bytes over its best rates
    fl = r["floor"]
    terms = {"compute": fl["compute_s"], "read": fl["read_s"], "write": fl["write_s"]}
    assert fl["s"] == max(terms.values()) and terms[fl["critical"]] == fl["s"]
    assert fl["compute_s"] == max(x["compute_s"] for x in r["per_rank"]) or \
        abs(fl["compute_s"] - max(x["compute_s"] for x in r["per_rank"])) <= 1e-6
    assert abs(fl["achieved"] - fl["s"] / r["elapsed_s"]) <= 1e-6 and 0 < fl["achieved"] <= 1
    assert fl["read_gbps"] > 0 and fl["write_gbps"] > 0
    # o (float32, as q) and lse written once; every rank read its keys, and the query chunks
    assert fl["bytes_written"] == 2 * 300 * 4 * (32 * 4 + 4)
    assert fl["bytes_read"] >= 2 * 300 * 2 * 32 * 4 * 2 + 2 * 300 * 4 * 32 * 4
    assert f"floor {fl['s']:.3f} s ({fl['critical']}" in p.stderr, p.stderr
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["report"]) == r
        assert abs(f.attrs["check_rel_err"] - r["check"]["rel_err"]) <= 1e-8 * r["check"]["rel_err"]
        o = f["o"][...]
    assert rel_err(o, attention_f64(q, k, v, True)[0]) <= 1e-5


@pytest.mark.parametrize("nranks,extra", [(1, []), (2, ["--no-nccl"]), (2, ["--mode", "taylor"])])
def test_merge_said_once(tmp_path, nranks, extra):
    """The merge path is decided once, in the plan: --verbose's plan line, the output's plan
    attribute, the report's plan and the report's merge section say the same path and reason
    (a CPU job merges through MPI because of its backend, --no-nccl or not)."""
    inp, _ = make_input(tmp_path)
    out, rep = tmp_path / "out.h5", tmp_path / "r.json"
    p = run_fa(["-i", inp, "-o", out, "--backend", "cpu", "--verbose", "--report", rep] + extra,
               nranks=nranks)
    assert p.returncode == 0, p.stderr
    r = json.loads(rep.read_text())
    with h5py.File(out, "r") as f:
        attr = json.loads(f.attrs["plan"])
    assert attr["merge"] == r["plan"]["merge"]
    m = attr["merge"]
    assert (m["value"], m["from"], m["why"]) == ("mpi", "default", "cpu backend")
    assert (r["merge"]["path"], r["merge"]["why"], r["merge"]["nccl"]) == ("mpi", "cpu backend", False)
    lines = [l for l in p.stderr.splitlines() if l.startswith("fa_long: plan: chunk")]
    assert len(lines) == 1 and ", merge mpi (cpu backend), " in lines[0], p.stderr


def test_progress_lines(tmp_path):
    inp, _ = make_input(tmp_path, N=400)
    out = tmp_path / "out.h5"
    env = {"FA_PROGRESS_INTERVAL": "0.000001"}
    p = run_fa(["-i", inp, "-o", out, "--chunk", "50"], nranks=2, env=env)
    assert p.returncode == 0, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.startswith("fa_long: chunk ")]
    assert lines and lines[-1].startswith("fa_long: chunk 8/8 (100.0%)"), p.stderr
    assert all("TFLOP/s" in l and "ETA" in l for l in lines)
    p = run_fa(["-i", inp, "-o", tmp_path / "q.h5", "--chunk", "50", "-q"], nranks=2, env=env)
    assert p.returncode == 0 and "fa_long:" not in p.stderr, p.stderr


def test_progress_live_under_mpirun(tmp_path):
    """mpirun at a terminal (a pseudo-terminal from script(1)): rank 0's stderr is a pipe to
    mpirun, yet the line is live, rewritten in place with \\r, from the first chunk on; the first
    chunk's line has no ETA (its time holds the start-up); with mpirun's stderr a pipe, plain
    lines."""
    import shlex
    inp, _ = make_input(tmp_path, N=1200)
    cmd = mpirun_cmd(2) + [str(FA_LONG), "-i", str(inp), "-o", str(tmp_path / "o.h5"), "--causal",
                           "--chunk", "40", "-f"]
    p = subprocess.run(["script", "-qec", " ".join(shlex.quote(c) for c in cmd), "/dev/null"],
                       capture_output=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stdout + p.stderr
    live = p.stdout.decode().replace("\r\n", "\n")       # bytes: \r kept as it is
    assert "\rfa_long: chunk 1/30 (3.3%)" in live and "ETA --:--" in live, repr(live[:400])
    assert "\rfa_long: chunk 30/30 (100.0%)" in live, repr(live[-600:])
    q = subprocess.run(cmd[:-1] + ["-o", str(tmp_path / "p.h5")], capture_output=True, timeout=300,
                       env=dict(os.environ, FA_PROGRESS_INTERVAL="0.000001"))
    assert q.returncode == 0 and b"\r" not in q.stderr and b"fa_long: chunk 1/30" in q.stderr, q.stderr
    # a batch run shorter than 2 s at the default interval writes no progress line at all
    q = subprocess.run(cmd[:-1] + ["-o", str(tmp_path / "p2.h5")], capture_output=True, timeout=300)
    assert q.returncode == 0 and b"fa_long: chunk" not in q.stderr, q.stderr


def test_stop_and_resume_without_slurm(tmp_path):
    """SIGUSR1 to mpirun: fa_long stops after the chunks in flight (exit 75) and keeps them in
    .out.h5.partial; --resume finishes; the result equals an uninterrupted run bit for bit."""
    inp, _ = make_input(tmp_path, N=12000, H=4, Hkv=2, D=64)
    out, ref = tmp_path / "out.h5", tmp_path / "ref.h5"
    args = ["-i", inp, "--causal", "--lse", "--chunk", "50"]
    env = dict(os.environ, OMP_NUM_THREADS="1", FA_PROGRESS_INTERVAL="0.05",
               FA_CHECKPOINT_SECONDS="0.2")
    cmd = mpirun_cmd(2) + [str(FA_LONG)] + [str(a) for a in args] + ["-o", str(out), "--resume"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    err = ""
    for line in proc.stderr:               # signal once the first chunks are done
        err += line
        if line.startswith("fa_long: chunk"):
            proc.send_signal(signal.SIGUSR1)
            break
    err += proc.stderr.read()
    proc.wait(timeout=120)
    partial = tmp_path / ".out.h5.partial"
    if proc.returncode == 0:       # finished before the signal landed: nothing to resume
        assert out.exists() and not partial.exists()
    else:
        assert proc.returncode == 75, err
        assert "stopped on a signal" in err and partial.exists() and not out.exists()
        with h5py.File(partial, "r") as f:
            assert 0 < f.attrs["chunks_done"] < 240
        p = run_fa(args + ["-o", out, "--resume"], nranks=2)
        assert p.returncode == 0 and "resuming" in p.stderr, p.stderr
        assert not partial.exists()
    p = run_fa(args + ["-o", ref, "-q"], nranks=2)
    assert p.returncode == 0
    with h5py.File(out, "r") as a, h5py.File(ref, "r") as b:
        assert np.array_equal(a["o"][...], b["o"][...])
        assert np.array_equal(a["lse"][...], b["lse"][...])
    # a finished output: --resume has nothing to do; another job's partial is refused
    p = run_fa(args + ["-o", out, "--resume"], nranks=2)
    assert p.returncode == 0 and "nothing to resume" in p.stderr
    other = tmp_path / "other.h5"
    p = run_fa(["-i", inp, "-o", other, "--chunk", "40", "--resume", "-q"], nranks=1)
    assert p.returncode == 0
    os.rename(other, tmp_path / ".x.h5.partial")
    p = run_fa(args + ["-o", tmp_path / "x.h5", "--resume"], nranks=2)
    assert p.returncode == 2 and "another job" in p.stderr, p.stderr


def test_threads_share_the_node(tmp_path):
    """Ranks on one node split its CPUs unless OMP_NUM_THREADS or --threads says otherwise; the
    report says how many threads a rank ran and why; several threads a rank on too few CPUs warn."""
    inp, (q, k, v) = make_input(tmp_path, N=200)
    ncpu = len(os.sched_getaffinity(0))
    env = {k_: v_ for k_, v_ in os.environ.items() if k_ != "OMP_NUM_THREADS"}

    def job(nranks, extra=(), omp=None):
        out, rep = tmp_path / "out.h5", tmp_path / "r.json"
        e = dict(env, **({"OMP_NUM_THREADS": str(omp)} if omp else {}))
        cmd = mpirun_cmd(nranks) + [str(FA_LONG), "-i", str(inp), "-o", str(out), "-f",
                                    "--report", str(rep)] + list(extra)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=e)
        assert p.returncode == 0, p.stderr
        with h5py.File(out, "r") as f:
            assert rel_err(f["o"][...], attention_f64(q, k, v)[0]) < 1e-5
        return json.loads(rep.read_text())["config"], p.stderr

    c, err = job(1)
    assert (c["threads_per_rank"], c["threads_from"], c["node_ranks"]) == (ncpu, "node share", 1)
    c, err = job(2)
    assert (c["threads_per_rank"], c["threads_from"]) == (max(1, ncpu // 2), "node share")
    assert c["node_ranks"] == 2 and c["node_cpus"] == ncpu and "oversubscribed" not in err
    c, err = job(2, omp=ncpu + 1)
    assert (c["threads_per_rank"], c["threads_from"]) == (ncpu + 1, "OMP_NUM_THREADS")
    warn = [l for l in err.splitlines() if "oversubscribed" in l]
    assert len(warn) == 1 and "OMP_NUM_THREADS" in warn[0] and f"{ncpu} CPUs" in warn[0], err
    c, err = job(2, ["--threads", "1"], omp=ncpu + 1)
    assert (c["threads_per_rank"], c["threads_from"]) == (1, "--threads")
    assert "oversubscribed" not in err, err


def test_small_chunks_warn_with_the_rate(tmp_path):
    """k and v in h5py-style tiny gzip chunks: after the run, one warning each naming the file,
    the dataset, the chunk shape and filter, the measured key-read rate, and an h5repack line;
    the same data stored contiguous (or in large chunks) gives no warning."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 600, 900, 4, 2, 32)
    small, big = tmp_path / "small.h5", tmp_path / "big.h5"
    with h5py.File(small, "w") as f:
        f["q"] = q
        f.create_dataset("k", data=k, chunks=(1, 64, 1, 16), compression="gzip")
        f.create_dataset("v", data=v, chunks=(1, 64, 1, 16), compression="gzip")
    with h5py.File(big, "w") as f:
        f["q"] = q
        f["k"] = k
        f.create_dataset("v", data=v, chunks=(1, 900, 2, 32))
    p = run_fa(["-i", small, "-o", tmp_path / "o1.h5"], nranks=2)
    assert p.returncode == 0, p.stderr
    warn = [l for l in p.stderr.splitlines() if "stored in chunks" in l]
    assert len(warn) == 2 and "dataset 'k'" in warn[0] and "dataset 'v'" in warn[1], p.stderr
    assert all("[1, 64, 1, 16]" in w and "deflate" in w and " MB/s" in w and "h5repack" in w
               and "small.h5" in w for w in warn), warn
    p = run_fa(["-i", big, "-o", tmp_path / "o2.h5"], nranks=2)
    assert p.returncode == 0 and "stored in chunks" not in p.stderr, p.stderr
    with h5py.File(tmp_path / "o1.h5") as a, h5py.File(tmp_path / "o2.h5") as b:
        assert np.array_equal(a["o"][...], b["o"][...])


# ---- the whole job (issue 22): from the process's start to the committed output ----------------
TIMELINE = ("process", "mpi_init", "start", "gpu_init", "open", "plan", "create", "engine", "read",
            "load_kv", "compute", "merge_wait", "finalize", "write", "sync", "teardown", "attrs",
            "commit", "other")


def whole_job(tmp_path, inp, nranks, io_thread, extra=()):
    """One run under mpirun (nranks > 0) or alone (0); its report, stderr and the wall clock the
    test saw around the whole command."""
    out, rep = tmp_path / "out.h5", tmp_path / "r.json"
    e = dict(os.environ, OMP_NUM_THREADS="1", FA_IO_THREAD=str(io_thread))
    cmd = ([] if nranks == 0 else mpirun_cmd(nranks) + ["-x", "FA_IO_THREAD"]) + \
        [str(FA_LONG), "-i", str(inp), "-o", str(out), "-f", "--lse", "--chunk", "256",
         "--report", str(rep)] + list(extra)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=e)
    outside = time.time() - t0
    assert p.returncode == 0, p.stderr
    return json.loads(rep.read_text()), p.stderr, outside, out


@pytest.mark.parametrize("nranks,io_thread", [(0, 0), (1, 1), (3, 0), (3, 1)])
def test_whole_job_phases_add_up(tmp_path, nranks, io_thread):
    """elapsed_s runs from the process's start (the kernel's, before main and MPI_Init) to the
    committed output: never more than the wall clock around the command, more than the run's old
    elapsed (now elapsed_run_s) by at least MPI_Init and the commit; its time line's phases add
    up to it (what none holds, 'other', is a few percent at most); the summary says the whole
    time and the commit's."""
    inp, _ = make_input(tmp_path, N=2048, H=4, Hkv=2, D=32)
    r, err, outside, _ = whole_job(tmp_path, inp, nranks, io_thread)
    w, tl = r["whole"], r["whole"]["timeline_s"]
    assert w["from"] == "process" and w["committed"] is True
    assert tuple(tl) == TIMELINE
    assert all(tl[k] >= 0 for k in TIMELINE if k != "other"), tl
    el = r["elapsed_s"]
    # the kernel's start is in 1/100 s, truncated: at most 10 ms early
    assert el <= outside + 0.011, (el, outside)
    assert el >= r["elapsed_run_s"] + tl["mpi_init"] + tl["commit"] - 1e-6
    assert tl["process"] > 0 and tl["mpi_init"] > 0 and tl["commit"] > 0 and tl["compute"] > 0
    parts = sum(tl[k] for k in TIMELINE if k != "other")
    assert abs(parts + tl["other"] - el) <= 1e-6 * el, (parts, tl["other"], el)
    assert abs(tl["other"]) <= 0.03 * el + 0.01, tl      # busy 2-core machine: 3% + 10 ms
    # the commit's parts (rank 0's), inside the commit phase; the same in phases_s
    c = r["whole"]["commit"]
    assert c["close_s"] + c["fsync_s"] + c["verify_s"] + c["rename_s"] <= c["s"] + 1e-6
    assert c["fsync_s"] > 0 and abs(r["phases_s"]["commit"] - max(
        x["commit_s"] for x in r["per_rank"])) <= 1e-6
    assert r["phases_s"]["startup"] >= tl["process"] + tl["mpi_init"] + tl["gpu_init"] - 1e-6
    assert max(x["whole_s"] for x in r["per_rank"]) == pytest.approx(el, abs=1e-6)
    assert r["tflops"] == pytest.approx(r["flops"] / el * 1e-12, rel=1e-6)
    line = next(l for l in err.splitlines() if l.startswith("fa_long: B="))
    assert f"{el:.3f} s whole" in line and "from the process's start to the committed output" in line
    if nranks <= 1:
        assert f"(commit {tl['commit']:.3f} s)" in line, line
    assert "fa_long: commit " in err and "MB written were on the disk before it" in err, err


def test_whole_job_from_main_after_a_wrapper(tmp_path):
    """A process that ran something else before exec'ing fa_long (a wrapper ending in `exec`)
    started when the wrapper did: its start is not taken, main()'s is (whole.from 'main'), so
    the wrapper's 11 s are not counted."""
    inp, _ = make_input(tmp_path, N=300)
    out, rep = tmp_path / "out.h5", tmp_path / "r.json"
    p = subprocess.run(["sh", "-c", f"sleep 11; exec {FA_LONG} -i {inp} -o {out} -q --report {rep}"],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr
    r = json.loads(rep.read_text())
    assert r["whole"]["from"] == "main" and r["whole"]["timeline_s"]["process"] == 0
    assert 0 < r["elapsed_s"] < 10, r["elapsed_s"]


def test_write_behind_and_the_floor(tmp_path):
    """Rows reach the disk while later chunks compute: before the commit, a share of the output
    is durable already (bytes_flushed_behind), and the commit's fsync has the rest left
    (left_bytes); the floor's write term counts the bytes at the slower of the write rate and
    the flush rate (a write-behind flush's, or the commit's fsync's when nothing was flushed
    behind). 32 groups of 64 rows on one rank: the write-behind thread has the run's length to
    flush the first ones."""
    inp, _ = make_input(tmp_path, N=2048, H=4, Hkv=2, D=32)
    r, err, _, out = whole_job(tmp_path, inp, 0, 0, ["--chunk", "64"])
    wb, fl, c = r["whole"]["write_behind"], r["floor"], r["whole"]["commit"]
    total = 2048 * 4 * (32 * 4 + 4)                      # o (float32) and lse
    assert wb["on"] is True and wb["bytes_written"] == fl["bytes_written"] == total
    assert 0 < wb["bytes_flushed_behind"] <= total and wb["flush_s"] > 0, wb
    assert c["left_bytes"] == total - wb["bytes_flushed_behind"]
    assert r["phases_s"]["flush"] == pytest.approx(wb["flush_s"], abs=1e-6)
    assert fl["flush_gbps"] is not None and fl["flush_gbps"] > 0
    rate = min(fl["write_gbps"], fl["flush_gbps"]) * 1e9
    assert fl["write_s"] == pytest.approx(total / rate, rel=1e-5)
    mb = wb["bytes_flushed_behind"] / 1e6
    assert f"{mb:.1f} of {total / 1e6:.1f} MB written were on the disk before it" in err, err
    p = run_fa(["check", "--input", inp, "--output", out, "--rows", "all"])
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("how", ["alone", "mpirun2", "user_pml", "off"])
def test_mpi_transport_on_one_node(tmp_path, how):
    """Before MPI_Init (runner/plan.c: plan_mpi_env): on one node Open MPI's point-to-point layer
    is ob1 unless the environment names one, and a process started alone skips the singleton's
    daemon; the report's whole.mpi_transport says which, and the job's result is the same."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 70, 90, 2, 1, 16)
    inp, out, rep = tmp_path / "in.h5", tmp_path / "out.h5", tmp_path / "r.json"
    write_inputs(inp, q, k, v)
    args = ["-i", inp, "-o", out, "--lse", "--report", rep, "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("OMPI_MCA_pml", "OMPI_MCA_ess_singleton_isolated", "FA_MPI_ENV"):
        env.pop(var, None)
    if how == "off":             # FA_MPI_ENV=0: Open MPI's own choices, the same result
        p = run_fa(args, nranks=2, env={"OMPI_MCA_pml": "", "FA_MPI_ENV": "0"})
        want = "Open MPI's own choice (FA_MPI_ENV=0)"
    elif how == "alone":
        p = subprocess.run([str(FA_LONG)] + [str(a) for a in args], capture_output=True, text=True,
                           env=env, timeout=300)
        want = "pml ob1, no singleton daemon (started alone)"
    elif how == "mpirun2":
        p = run_fa(args, nranks=2, env={"OMPI_MCA_pml": ""})
        want = "pml ob1 (one node)"
    else:
        p = run_fa(args, nranks=2, env={"OMPI_MCA_pml": "ob1"})
        want = "pml as OMPI_MCA_pml gives it"
    assert p.returncode == 0, p.stderr
    r = json.loads(rep.read_text())
    assert r["whole"]["mpi_transport"] == want, r["whole"]
    assert r["whole"]["timeline_s"]["mpi_init"] > 0
    with h5py.File(out, "r") as f:
        assert rel_err(f["o"][...], attention_f64(q, k, v)[0]) <= 1e-5
