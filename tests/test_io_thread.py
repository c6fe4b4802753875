"""The pipeline's I/O thread (dist/io_worker.c, issue 16 item 2): chunk i+1's queries are read
and the groups' rows written while chunk i computes, the next batch element's keys read once the
last one's chunks have computed. The thread changes when the file is touched, never what is
computed: FA_IO_THREAD=1 (the default beside a GPU) and 0 (in series, the CPU engine's default)
give the same bits at every rank count and way of reading queries; a stop on a signal and its
resume hold on the thread; a bad value found by a read that ran ahead is still one line, exit 2
on every rank, nothing left behind."""
import json

import h5py
import numpy as np
import pytest

from conftest import fa_lines, leftovers, run_fa
from test_resume import stop_with_usr1
from reference import attention_f64, random_inputs, rel_err, write_inputs


def job(tmp_path, inp, name, nranks, env, extra=(), chunk=37):
    """One run with --lse, its report: (o, lse, report)."""
    out = tmp_path / f"{name}.h5"
    rep = tmp_path / f"{name}.json"
    p = run_fa(["-i", inp, "-o", out, "--lse", "--chunk", str(chunk), "--report", rep, "-q", *extra],
               nranks=nranks, env=env)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        o, lse = f["o"][...], f["lse"][...]
    return o, lse, json.loads(rep.read_text())


@pytest.mark.parametrize("nranks,q_read,extra", [
    (1, None, ()),
    (3, None, ("--causal",)),              # the node's first rank reads for the others
    (3, "shared", ()),                     # a slice each, gathered on the I/O communicator
    (2, "rank", ("--causal",)),
])
def test_thread_gives_the_same_bits(tmp_path, nranks, q_read, extra):
    rng = np.random.default_rng()
    # 2 batch elements, Nq not a multiple of the chunk: the keys of element 1 are read after
    # element 0's last chunk, and its first queries after them
    q, k, v = random_inputs(rng, 2, 301, 211, 4, 2, 24)
    inp = tmp_path / "in.h5"
    write_inputs(inp, q, k, v)
    env = {"FA_Q_READ": q_read} if q_read else {}
    o1, l1, r1 = job(tmp_path, inp, "thread", nranks, {**env, "FA_IO_THREAD": "1"}, extra)
    o0, l0, r0 = job(tmp_path, inp, "series", nranks, {**env, "FA_IO_THREAD": ""}, extra)
    assert r1["io_thread"] is True and r0["io_thread"] is False
    assert r1["plan"]["io_thread"] == {"value": 1, "from": "environment"}
    assert r0["plan"]["io_thread"] == {"value": 0, "from": "default"}   # the CPU engine's
    assert np.array_equal(o1, o0) and np.array_equal(l1, l0)
    ro, rl = attention_f64(q, k, v, "--causal" in extra)
    seen = np.isfinite(rl)                 # causal with Nq > Nk: the first rows see no key
    assert (np.isneginf(l1) == ~seen).all()
    assert rel_err(o1, ro) <= 1e-5 and rel_err(l1[seen], rl[seen]) <= 1e-5
    # the bytes each way are the same whoever moved them
    for key in ("bytes_read", "bytes_written"):
        assert r1["floor"][key] == r0["floor"][key] > 0
    assert r1["phases_s"]["io_exposed"] >= 0 and r0["phases_s"]["io_exposed"] > 0


@pytest.mark.parametrize("var,value", [("FA_IO_THREAD", "yes"), ("FA_DIRECT_READ", "on"),
                                       ("FA_FUSED_READ", "2"), ("FA_MPI_ENV", "2"),
                                       ("FA_GPU_WARMUP", "soon"), ("FA_CRC32", "fast")])
def test_bad_io_setting_refused(tmp_path, var, value):
    """The I/O and start-up settings take 0 or 1 (early or late, auto or zlib): anything else is
    one line naming the variable and what it takes, exit 2 on every rank, nothing written."""
    rng = np.random.default_rng()
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, *random_inputs(rng, 1, 20, 20, 2, 1, 8))
    p = run_fa(["-i", inp, "-o", out], nranks=2, env={var: value})
    assert p.returncode == 2, p.stderr
    lines = fa_lines(p.stderr)
    want = {"FA_GPU_WARMUP": "expected early or late", "FA_CRC32": "expected auto or zlib"}
    assert len(lines) == 1 and f"{var}={value}" in lines[0] and want.get(var, "expected 1") in lines[0], p.stderr
    assert leftovers(tmp_path, out) == []


@pytest.mark.parametrize("nranks", [1, 3])
@pytest.mark.parametrize("where", ["q_late", "q_batch1", "k_batch1"])
def test_bad_value_in_a_read_ahead(tmp_path, nranks, where):
    """A NaN that only a read running ahead of compute meets: in the queries of the last chunk,
    in the first queries of batch element 1 (read right after its keys), or in batch element 1's
    keys (read once element 0's chunks have computed). One line naming the dataset and the
    index, exit 2 on every rank, no output and no lock; a partial only where the rows before the
    bad one were checkpointed, as in series."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 2, 300, 200, 4, 2, 16)
    name, idx = {"q_late": ("q", (0, 290, 1, 3)), "q_batch1": ("q", (1, 2, 3, 0)),
                 "k_batch1": ("k", (1, 150, 1, 5))}[where]
    t = {"q": q, "k": k, "v": v}[name]
    t[idx] = np.nan
    inp = tmp_path / "in.h5"
    write_inputs(inp, q, k, v)
    left = {}
    for mode in ("1", "0"):                 # on the I/O thread, in series
        d = tmp_path / mode
        d.mkdir()
        out = d / "out.h5"
        p = run_fa(["-i", inp, "-o", out, "--chunk", "40", "--lse"], nranks=nranks,
                   env={"FA_IO_THREAD": mode})
        assert p.returncode == 2, p.stderr
        lines = fa_lines(p.stderr)
        assert len(lines) == 1, p.stderr
        assert f"'{name}'" in lines[0] and "[" + ", ".join(map(str, idx)) + "]" in lines[0], lines[0]
        assert not out.exists()
        left[mode] = sorted(leftovers(d, out))
        if left[mode]:           # rows before the bad one were checkpointed: a resumable partial
            assert left[mode] == [".out.h5.partial"], left[mode]
            with h5py.File(d / ".out.h5.partial", "r") as f:
                done = int(f.attrs["chunks_done"])
            per_b = -(-300 // 40)            # chunks of a batch element
            bad = idx[0] * per_b + (idx[1] // 40 if name == "q" else 0)
            assert 0 < done <= bad, (done, bad)   # nothing from the bad chunk on
    assert left["1"] == left["0"], left     # the thread keeps what the series run keeps


def test_stop_and_resume_on_the_thread(tmp_path):
    """SIGUSR1 mid-run with the writes behind compute: the partial holds a complete prefix (its
    checkpoint queued after the writes), and --resume on the thread ends bit-identical to an
    uninterrupted run in series."""
    rng = np.random.default_rng()
    inp = tmp_path / "in.h5"
    q, k, v = random_inputs(rng, 2, 3000, 700, 4, 2, 32)
    write_inputs(inp, q, k, v)
    args = ["-i", inp, "-o", tmp_path / "out.h5", "--chunk", "25", "--lse", "--causal"]
    on = {"FA_IO_THREAD": "1"}
    partial, done = stop_with_usr1(args + ["--resume"], 2, env=on)
    with h5py.File(partial, "r") as f:        # the rows of the prefix are in the file
        o_part = f["o"][...]
    per_b = -(-3000 // 25)
    b, r = divmod(done, per_b)
    rows = (slice(None), slice(0, 3000)) if b >= 1 else (slice(0, 1), slice(0, r * 25))
    ref = tmp_path / "ref.h5"
    assert run_fa(args[:2] + ["-o", ref] + args[4:] + ["-q"], nranks=2,
                  env={"FA_IO_THREAD": "0"}).returncode == 0
    with h5py.File(ref, "r") as f:
        o_ref, l_ref = f["o"][...], f["lse"][...]
    assert np.array_equal(o_part[rows], o_ref[rows])
    p = run_fa(args + ["--resume"], nranks=2, env=on)
    assert p.returncode == 0 and f"from chunk {done}" in p.stderr, p.stderr
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert np.array_equal(f["o"][...], o_ref) and np.array_equal(f["lse"][...], l_ref)
