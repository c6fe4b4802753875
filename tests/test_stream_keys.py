"""Streamed keys (issue 22 item 4; dist/pipeline.c): a batch element's keys are read in blocks of
FA_KEY_READ_ROWS rows, each handed to the engine as it arrives, and the element's first chunk is
computed on the blocks already there (attn_queries.keys FIRST / MORE / LAST), continuing its
state. The default beside a GPU; the CPU engine takes it under FA_STREAM_KEYS=1, which these
tests use to run the pipeline's streamed path where CI runs (no GPU): the same result as the
keys read whole (within the reordering bound: the CPU engine's tiles start anew at a block's
edge), against fp64, at 1-3 ranks, with and without the I/O thread, under masks, with the
report saying how the keys came; a bad value in a late block is one line, exit 2; a stop and
--resume of a streamed run. Keys through a ring of blocks (plan.key_ring, for engines that copy
the rows they are handed: the GPU's) run here through build/tests/test_key_ring's mock engine on
3 ranks; the CPU engine keeps its shard, and the report and --verbose say where the keys went."""
import json

import h5py
import numpy as np
import pytest

from conftest import fa_lines, leftovers, run_c_test, run_fa
from mask_reference import masked_f64, write_masked
from reference import assert_reordered, attention_f64, order_bound, random_inputs, rel_err
from reference import write_inputs
from test_io_thread import job as io_thread_job
from test_resume import stop_with_usr1


def job(tmp_path, inp, name, nranks, env, extra=()):
    return io_thread_job(tmp_path, inp, name, nranks, env, extra, chunk=41)


@pytest.mark.parametrize("nranks,io_thread,extra", [
    (1, "1", ()),
    (1, "0", ("--causal",)),
    (2, "1", ("--causal",)),
    (3, "1", ()),
    (3, "0", ("--causal",)),
])
def test_streamed_keys_match_whole_keys(tmp_path, nranks, io_thread, extra):
    rng = np.random.default_rng()
    # 2 batch elements, 257 keys: blocks of 37 rows leave a short last block on every rank and
    # an uneven count across ranks (the ranks read as many blocks as the one with the most)
    q, k, v = random_inputs(rng, 2, 203, 257, 4, 2, 24)
    inp = tmp_path / "in.h5"
    write_inputs(inp, q, k, v)
    causal = "--causal" in extra
    base = {"FA_IO_THREAD": io_thread}
    o1, l1, r1 = job(tmp_path, inp, "stream", nranks,
                     {**base, "FA_STREAM_KEYS": "1", "FA_KEY_READ_ROWS": "37"}, extra)
    o0, l0, r0 = job(tmp_path, inp, "whole", nranks, base, extra)
    assert r1["plan"]["stream_keys"] == {"value": 1, "from": "environment"}
    assert r1["plan"]["key_read_rows"] == {"value": 37, "from": "environment"}
    assert r0["plan"]["stream_keys"] == {"value": 0, "from": "default"}   # the CPU's default
    shard = -(-257 // nranks)                 # the largest shard (contiguous or striped)
    assert r1["keys"]["streamed"] is True and r0["keys"]["streamed"] is False
    assert r1["keys"]["blocks"] >= -(-shard // 37) - 1 and r1["keys"]["blocks"] >= 2
    assert np.isfinite(r1["keys"]["first_compute_lead_s"])
    # the engine took float32 on the CPU, whatever the file holds
    assert r1["plan"]["kv_transfer"]["value"] == "float32"
    ro, rl = attention_f64(q, k, v, causal)
    seen = np.isfinite(rl)
    assert (np.isneginf(l1) == ~seen).all() and (np.isneginf(l0) == ~seen).all()
    assert rel_err(o1, ro) <= 1e-5 and rel_err(l1[seen], rl[seen]) <= 1e-5
    ob, lb = order_bound(q, k, v, causal)
    assert_reordered(o1, o0.astype(np.float64), ob, "o")
    assert_reordered(l1, l0.astype(np.float64), lb, "lse")
    # the same bytes read, however the keys came
    assert r1["floor"]["bytes_read"] == r0["floor"]["bytes_read"] > 0


@pytest.mark.parametrize("nranks", [1, 3])
def test_streamed_keys_under_masks(tmp_path, nranks):
    """A window and packed documents of unequal lengths, zigzag and striped shards: pieces
    outside a chunk's visible keys are skipped, the rest folded in as they come."""
    rng = np.random.default_rng()
    B, N = 2, 230
    q, k, v = random_inputs(rng, B, N, N, 4, 1, 16)
    cu = np.array([[0, 17, 17, 150, 230], [0, 1, 99, 100, 230]], dtype=np.int32)
    inp = tmp_path / "in.h5"
    write_masked(inp, q, k, v, cu_seqlens=cu)
    env = {"FA_IO_THREAD": "1", "FA_STREAM_KEYS": "1", "FA_KEY_READ_ROWS": "29"}
    o, lse, r = job(tmp_path, inp, "masked", nranks, env, ("--window-size", "40,3"))
    ro, rl, _ = masked_f64(q, k, v, 40, 3, cu, cu)
    seen = np.isfinite(rl)
    assert (np.isneginf(lse) == ~seen).all()
    assert rel_err(o, ro) <= 1e-5 and rel_err(lse[seen], rl[seen]) <= 1e-5
    assert r["keys"]["streamed"] is True and r["keys"]["blocks"] >= 2


@pytest.mark.parametrize("nranks", [1, 2])
def test_bad_value_in_a_late_key_block(tmp_path, nranks):
    """A NaN in a block read while the first chunk already computes: one line naming the
    dataset and the index, exit 2 on every rank, no output left."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 120, 300, 2, 1, 16)
    v[0, 281, 0, 7] = np.nan
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, q, k, v)
    p = run_fa(["-i", inp, "-o", out, "--chunk", "50"], nranks=nranks,
               env={"FA_IO_THREAD": "1", "FA_STREAM_KEYS": "1", "FA_KEY_READ_ROWS": "40"})
    assert p.returncode == 2, p.stderr
    lines = fa_lines(p.stderr)
    assert len(lines) == 1 and "'v'" in lines[0] and "[0, 281, 0, 7]" in lines[0], p.stderr
    assert not out.exists() and leftovers(tmp_path, out) == []


def test_streamed_stop_and_resume(tmp_path):
    """SIGUSR1 mid-run of a streamed job over two batch elements; --resume (streamed too) ends
    bit-identical to an uninterrupted streamed run: the blocks and the pieces are the same."""
    rng = np.random.default_rng()
    inp = tmp_path / "in.h5"
    q, k, v = random_inputs(rng, 2, 3000, 700, 4, 2, 32)
    write_inputs(inp, q, k, v)
    args = ["-i", inp, "-o", tmp_path / "out.h5", "--chunk", "25", "--lse", "--causal"]
    env = {"FA_IO_THREAD": "1", "FA_STREAM_KEYS": "1", "FA_KEY_READ_ROWS": "96"}
    partial, done = stop_with_usr1(args + ["--resume"], 2, env=env)
    ref = tmp_path / "ref.h5"
    assert run_fa(args[:2] + ["-o", ref] + args[4:] + ["-q"], nranks=2, env=env).returncode == 0
    with h5py.File(ref, "r") as f:
        o_ref, l_ref = f["o"][...], f["lse"][...]
    p = run_fa(args + ["--resume"], nranks=2, env=env)
    assert p.returncode == 0 and f"from chunk {done}" in p.stderr, p.stderr
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert np.array_equal(f["o"][...], o_ref) and np.array_equal(f["lse"][...], l_ref)


@pytest.mark.parametrize("var,value", [("FA_STREAM_KEYS", "2"), ("FA_TYPED_TRANSFERS", "yes"),
                                       ("FA_KEY_READ_ROWS", "0"), ("FA_KEY_RING", "2"),
                                       ("FA_KEY_RING", "three")])
def test_bad_stream_setting_refused(tmp_path, var, value):
    rng = np.random.default_rng()
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, *random_inputs(rng, 1, 20, 20, 2, 1, 8))
    p = run_fa(["-i", inp, "-o", out], nranks=2, env={var: value})
    assert p.returncode == 2, p.stderr
    lines = fa_lines(p.stderr)
    assert len(lines) == 1 and var in lines[0] and value in lines[0] and "expected" in lines[0], p.stderr
    assert leftovers(tmp_path, out) == []


def test_key_ring_on_three_ranks():
    """build/tests/test_key_ring under mpirun -np 3: each rank's real shard (contiguous, zigzag,
    striped) read through a ring into a mock engine that copies keys: every row the file's, in
    order, once; no block overwritten while the engine holds it; the ring's slots reused; the
    digests the shard's; a read failing after the ring wrapped ends the run on every rank with
    its line, no hang. (Run alone, it plays each rank in turn: tests/test_unit.py.)"""
    out = run_c_test("test_key_ring", 3)
    assert "ring 3: " in out and "injected failure of read 6" in out


@pytest.mark.parametrize("ring", [None, "3"])
def test_cpu_engine_keeps_its_shard(tmp_path, ring):
    """The CPU engine reads its keys where the segments say (pipe_engine.copies_keys 0): streamed
    keys land in a shard of every key, FA_KEY_RING or not; the plan, the report and --verbose
    say so, with the shard's bytes (rank 0's 128 of 257 keys, float32 k and v)."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 2, 60, 257, 4, 2, 24)
    inp, out, rep = tmp_path / "in.h5", tmp_path / "out.h5", tmp_path / "r.json"
    write_inputs(inp, q, k, v)
    env = {"FA_STREAM_KEYS": "1", "FA_KEY_READ_ROWS": "37", **({"FA_KEY_RING": ring} if ring else {})}
    p = run_fa(["-i", inp, "-o", out, "--lse", "--report", rep, "--verbose"], nranks=2, env=env)
    assert p.returncode == 0, p.stderr
    r = json.loads(rep.read_text())
    assert r["plan"]["key_read_ring"] == {"value": 0, "from": "environment" if ring else "default"}
    keys = r["keys"]
    shard = 128 * 2 * 24 * 4 * 2
    assert keys["streamed"] is True and keys["into"] == "shard", keys
    assert keys["shard_bytes"] == shard and keys["host_bytes_saved"] == 0, keys
    assert keys["ring_blocks"] == keys["ring_reads"] == keys["ring_bytes"] == 0, keys
    assert "fa_long: plan: keys read into a shard of every key (rank 0's 128 keys: 0.0 MB), where " \
           "the engine reads them" in p.stderr, p.stderr
    assert "fa_long: rank 0 keys: read into a shard of every key (0.0 MB)" in p.stderr, p.stderr
