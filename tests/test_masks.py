"""Masks (issue #18): --window-size, packed documents (cu_seqlens), --softcap, --alibi, end to end
under mpirun against an fp64 reference written here from the definitions (not the engines'
code): a query row i of document d (rows [q0, q1), keys [k0, k1)) sits at key position
p = i + k1 - q1, sees the keys j of its document with p - L <= j <= p + R (-1: unbounded), and the
score s = scale q.k becomes C tanh(s / C) (softcap), then s - slope_h |p - j| (ALiBi).

Tolerance: max |o - ref| / max |ref| <= max(1e-5, 8 u kappa) with u = 2^-24 and kappa the
conditioning of the weights: the largest |score| among the keys that carry weight (within 60 of
the row's maximum), plus 0.45 C for softcap (the most a raw score's rounding moves a capped one);
lse within the same, relative to max(1, |lse|). Rows that see no key: o = 0, lse = -inf."""
import h5py
import numpy as np
import pytest

from conftest import run_fa
from mask_reference import masked_f64, std_slopes, write_masked
from reference import from_bf16_bits, random_inputs, rel_err, to_bf16_bits, write_inputs

U = 2.0 ** -24


def run_job(tmp_path, inp, nranks, args, name="out"):
    out = tmp_path / f"{name}_{nranks}.h5"
    p = run_fa(["--input", inp, "--output", out, "--lse", "--force"] + [str(a) for a in args],
               nranks=nranks)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        return f["o"][...], f["lse"][...], dict(f.attrs), out, p.stderr


def assert_close(o, lse, ref, what):
    ro, rlse, kappa = ref
    tol = max(1e-5, 8 * U * kappa)
    assert np.all(np.isfinite(o)), f"{what}: non-finite o"
    err = rel_err(o, ro)
    assert err <= tol, f"{what}: o rel err {err:.3e} > {tol:.1e} (kappa {kappa:.1f})"
    seen = np.isfinite(rlse)
    assert np.array_equal(np.isfinite(lse), seen), f"{what}: rows that see no key differ"
    lerr = np.max(np.abs(lse[seen] - rlse[seen]) / np.maximum(1, np.abs(rlse[seen]))) if seen.any() else 0
    assert lerr <= tol, f"{what}: lse err {lerr:.3e} > {tol:.1e}"
    none = ~seen.transpose(0, 2, 1)               # [B, Nq, H]
    assert (o[none] == 0).all(), f"{what}: a row that sees no key has o != 0"


# ---- windows ----------------------------------------------------------------------------------
@pytest.mark.parametrize("left,right,nq,nk,h,hkv,nranks", [
    (0, 0, 97, 97, 4, 2, 1),          # a key each: the diagonal
    (1, 0, 150, 211, 6, 2, 3),        # Nq < Nk, GQA
    (16, -1, 211, 150, 4, 1, 2),      # Nq > Nk (rows before the keys see none), MQA
    (-1, 5, 120, 120, 2, 2, 4),
    (7, 9, 173, 190, 6, 3, 7),
    (1000, 0, 90, 130, 4, 2, 2),      # wider than N: causal
    (0, -1, 64, 64, 2, 1, 3),
])
def test_window(tmp_path, left, right, nq, nk, h, hkv, nranks):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 2, nq, nk, h, hkv, 32)
    write_inputs(tmp_path / "in.h5", q, k, v)
    o, lse, attrs, _, _ = run_job(tmp_path, tmp_path / "in.h5", nranks,
                                  ["--window-size", f"{left},{right}", "--chunk", "37"])
    assert_close(o, lse, masked_f64(q, k, v, left, right), f"window {left},{right}")
    assert attrs["window_left"] == left and attrs["window_right"] == right
    assert attrs["causal"] == int(right == 0)


def test_window_equals_causal(tmp_path):
    """--window-size -1,0 is --causal, and --causal --window-size 1000000,0 too: same output."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 130, 160, 4, 2, 16)
    write_inputs(tmp_path / "in.h5", q, k, v)
    a = run_job(tmp_path, tmp_path / "in.h5", 2, ["--causal"], "a")[0]
    b = run_job(tmp_path, tmp_path / "in.h5", 2, ["--window-size", "-1,0"], "b")[0]
    c = run_job(tmp_path, tmp_path / "in.h5", 2, ["--causal", "--window-size", "1000000,0"], "c")[0]
    assert np.array_equal(a, b) and rel_err(c, a) <= 1e-6


# ---- packed documents ---------------------------------------------------------------------------
def test_documents_shared(tmp_path):
    """cu_seqlens for queries and keys, documents of length 0 and 1, every batch element."""
    rng = np.random.default_rng()
    N = 157
    cu = np.array([0, 0, 1, 40, 40, 101, 102, N], dtype=np.int32)
    q, k, v = random_inputs(rng, 2, N, N, 4, 2, 32)
    write_masked(tmp_path / "in.h5", q, k, v, cu_seqlens=cu)
    for nranks, extra in ((1, []), (3, ["--causal"]), (4, ["--window-size", "3,2"])):
        o, lse, attrs, _, _ = run_job(tmp_path, tmp_path / "in.h5", nranks, extra + ["--chunk", "29"])
        left, right = (-1, 0) if extra == ["--causal"] else (3, 2) if extra else (-1, -1)
        assert_close(o, lse, masked_f64(q, k, v, left, right, cu, cu), f"documents {extra} x{nranks}")
        assert attrs["documents"] == len(cu) - 1


def test_documents_q_k_per_batch(tmp_path):
    """cu_seqlens_q and cu_seqlens_k [B, ndocs+1], Nq != Nk, causal inside each document
    (bottom-right: a document with more queries than keys has rows that see nothing)."""
    rng = np.random.default_rng()
    Nq, Nk = 120, 170
    cq = np.array([[0, 30, 30, 100, 120], [0, 5, 60, 61, 120]], dtype=np.int64)
    ck = np.array([[0, 10, 50, 150, 170], [0, 70, 70, 71, 170]], dtype=np.int64)
    q, k, v = random_inputs(rng, 2, Nq, Nk, 6, 2, 24)
    write_masked(tmp_path / "in.h5", q, k, v, cu_seqlens_q=cq, cu_seqlens_k=ck)
    for nranks, shard in ((2, "contiguous"), (3, "zigzag"), (5, "striped")):
        o, lse, _, _, _ = run_job(tmp_path, tmp_path / "in.h5", nranks,
                                  ["--causal", "--shard", shard, "--chunk", "41"])
        assert_close(o, lse, masked_f64(q, k, v, -1, 0, cq, ck), f"documents q/k {shard} x{nranks}")


# ---- softcap and ALiBi --------------------------------------------------------------------------
def test_softcap_large_magnitude(tmp_path):
    """Inputs x12: raw scores in the thousands, capped at +-30."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 140, 181, 4, 2, 64, magnitude=12.0)
    write_inputs(tmp_path / "in.h5", q, k, v)
    for nranks, extra in ((1, []), (3, ["--causal"])):
        o, lse, attrs, _, _ = run_job(tmp_path, tmp_path / "in.h5", nranks,
                                      extra + ["--softcap", "30"])
        assert_close(o, lse, masked_f64(q, k, v, -1, 0 if extra else -1, softcap=30.0),
                     f"softcap {extra}")
        assert attrs["softcap"] == 30.0


@pytest.mark.parametrize("heads", [8, 6])
def test_alibi_standard(tmp_path, heads):
    """Standard slopes for H a power of two and not."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 150, 150, heads, 2, 32)
    write_inputs(tmp_path / "in.h5", q, k, v)
    o, lse, attrs, _, _ = run_job(tmp_path, tmp_path / "in.h5", 2, ["--causal", "--alibi"])
    assert_close(o, lse, masked_f64(q, k, v, -1, 0, slopes=std_slopes(heads)), "alibi")
    assert attrs["alibi"] == 1


def test_alibi_slopes_from_input(tmp_path):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 100, 133, 4, 4, 32)
    slopes = np.array([0.3, 0.05, 0.0, 1.5], dtype=np.float32)
    write_masked(tmp_path / "in.h5", q, k, v, alibi_slopes=slopes)
    o, lse, attrs, _, _ = run_job(tmp_path, tmp_path / "in.h5", 3, ["--alibi"])
    assert_close(o, lse, masked_f64(q, k, v, slopes=slopes.astype(np.float64)), "alibi slopes")
    assert attrs["alibi"] == 2


def test_everything_at_once_bf16(tmp_path):
    """Window, documents, softcap and ALiBi together, bf16 inputs, 3 ranks, checked by fa_long
    check too. Reference on the bf16-rounded inputs; o in bf16: its rounding joins the tolerance."""
    rng = np.random.default_rng()
    N = 200
    cu = np.array([0, 77, 78, 150, N], dtype=np.int32)
    q, k, v = random_inputs(rng, 1, N, N, 6, 2, 40, magnitude=3.0)
    q, k, v = (from_bf16_bits(to_bf16_bits(x)) for x in (q, k, v))
    write_masked(tmp_path / "in.h5", q, k, v, dtype="bfloat16", cu_seqlens=cu)
    o, lse, attrs, out, _ = run_job(tmp_path, tmp_path / "in.h5", 3,
                                    ["--window-size", "20,0", "--softcap", "10", "--alibi"])
    ro, rlse, kappa = masked_f64(q, k, v, 20, 0, cu, cu, softcap=10.0, slopes=std_slopes(6))
    assert rel_err(o.astype(np.float64), ro) <= 2 ** -8 + 8 * U * kappa
    assert "window 20,0, 4 documents, softcap 10, alibi" == attrs["mask"]
    p = run_fa(["check", "--input", tmp_path / "in.h5", "--output", out, "--rows", "all"])
    assert p.returncode == 0 and "PASS" in p.stdout, p.stdout + p.stderr
    assert "window 20,0, 4 documents, softcap 10, alibi" in p.stdout


def test_check_catches_a_wrong_mask(tmp_path):
    """fa_long check recomputes under the recorded mask: an output whose window attribute is
    changed after the run fails."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 120, 120, 4, 2, 32)
    write_inputs(tmp_path / "in.h5", q, k, v)
    _, _, _, out, _ = run_job(tmp_path, tmp_path / "in.h5", 2, ["--window-size", "8,0"])
    p = run_fa(["check", "--input", tmp_path / "in.h5", "--output", out, "--rows", "all"])
    assert p.returncode == 0 and "PASS" in p.stdout, p.stdout + p.stderr
    with h5py.File(out, "a") as f:
        f.attrs["window_left"] = 9
    p = run_fa(["check", "--input", tmp_path / "in.h5", "--output", out, "--rows", "all"])
    assert p.returncode == 1 and "FAIL" in p.stdout, p.stdout + p.stderr


# ---- resume ------------------------------------------------------------------------------------
def test_resume_key_holds_the_mask(tmp_path):
    """A finished window job is 'complete' for the same mask, and another mask's --resume refuses
    its partial; the resumed masked job equals the uninterrupted one."""
    from test_resume import stop_with_usr1
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 600, 600, 4, 2, 32)
    cu = np.array([0, 250, 251, 600], dtype=np.int64)
    write_masked(tmp_path / "in.h5", q, k, v, cu_seqlens=cu)
    inp, out = tmp_path / "in.h5", tmp_path / "o.h5"
    args = ["-i", inp, "-o", out, "--window-size", "30,0", "--softcap", "5", "--chunk", "20", "--lse"]
    stop_with_usr1(args, 2)
    p = run_fa(["-i", inp, "-o", out, "--window-size", "31,0", "--softcap", "5", "--chunk", "20",
                "--lse", "--resume"], nranks=2)
    assert p.returncode == 2 and "made by another job" in p.stderr, p.stderr
    p = run_fa(args + ["--resume"], nranks=2)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        o = f["o"][...]
        lse = f["lse"][...]
    assert_close(o, lse, masked_f64(q, k, v, 30, 0, cu, cu, softcap=5.0), "resumed")
    p = run_fa(args + ["--resume"], nranks=2)
    assert p.returncode == 0 and "complete" in p.stderr


# ---- --no-documents ----------------------------------------------------------------------------
def test_no_documents(tmp_path):
    """--no-documents leaves the input's cu_seqlens out (one line says so): the result is the mask
    without documents, the output records documents = 0 and passes check; --resume tells it from
    the job with documents; a bad table is not even read."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 2, 150, 150, 4, 2, 32)
    cu = np.array([0, 40, 41, 150], dtype=np.int32)
    inp = tmp_path / "in.h5"
    write_masked(inp, q, k, v, cu_seqlens=cu)
    args = ["--window-size", "30,0", "--chunk", "40"]
    o, lse, attrs, out, err = run_job(tmp_path, inp, 2, args + ["--no-documents"])
    assert_close(o, lse, masked_f64(q, k, v, 30, 0), "--no-documents")
    assert attrs["documents"] == 0 and attrs["mask"] == "window 30,0", attrs
    notes = [l for l in err.splitlines() if "--no-documents" in l]
    assert len(notes) == 1 and "cu_seqlens" in notes[0], err
    p = run_fa(["check", "--output", out, "--rows", "all"])
    assert p.returncode == 0 and "PASS" in p.stdout, p.stdout + p.stderr
    # with the documents: another result, another job for --resume
    od, lsed, attrs_d, _, err_d = run_job(tmp_path, inp, 2, args, name="docs")
    assert attrs_d["documents"] == 3 and "--no-documents" not in err_d
    assert_close(od, lsed, masked_f64(q, k, v, 30, 0, cu, cu), "documents")
    assert rel_err(o, od) > 1e-3
    before = out.read_bytes()
    p = run_fa(["-i", inp, "-o", out, "--lse", "--resume", "--no-documents"] + args, nranks=2)
    assert p.returncode == 0 and "complete" in p.stderr, p.stderr
    p = run_fa(["-i", inp, "-o", out, "--lse", "--resume"] + args, nranks=2)
    assert p.returncode == 2 and "complete" not in p.stderr, p.stderr
    assert out.read_bytes() == before
    # a table that would be refused is not read
    bad = tmp_path / "bad.h5"
    write_masked(bad, q, k, v, cu_seqlens=np.array([0, 50, 40, 150], dtype=np.int32))
    p = run_fa(["-i", bad, "-o", tmp_path / "b.h5"] + args, nranks=1)
    assert p.returncode == 2 and "decreases" in p.stderr, p.stderr
    p = run_fa(["-i", bad, "-o", tmp_path / "b.h5", "--no-documents"] + args, nranks=1)
    assert p.returncode == 0, p.stderr


# ---- bad masks ---------------------------------------------------------------------------------
BAD_TABLES = [
    ({"cu_seqlens": np.array([0, 50, 40, 100], dtype=np.int32)}, [], "decreases at index 2"),
    ({"cu_seqlens": np.array([1, 50, 100], dtype=np.int32)}, [], "starts at 1, expected 0"),
    ({"cu_seqlens": np.array([0, 50, 99], dtype=np.int32)}, [], "ends at 99, expected 100"),
    ({"cu_seqlens": np.array([0, 50.0, 100])}, [], "not of an integer type"),
    ({"cu_seqlens": np.zeros((3, 3), dtype=np.int32)}, [], "expected [ndocs+1] or [2, ndocs+1]"),
    ({"cu_seqlens_q": np.array([0, 100], dtype=np.int32)}, [], "but no"),
    ({"alibi_slopes": np.ones(3, dtype=np.float32)}, ["--alibi"], "expected one slope per query head"),
]


@pytest.mark.parametrize("tables,extra,msg", BAD_TABLES)
def test_bad_tables(tmp_path, tables, extra, msg):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 2, 100, 100, 4, 2, 16)
    write_masked(tmp_path / "in.h5", q, k, v, **tables)
    out = tmp_path / "o.h5"
    p = run_fa(["-i", tmp_path / "in.h5", "-o", out] + extra, nranks=3)
    assert p.returncode == 2, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("fa_long:")]
    assert len(lines) == 1 and msg in lines[0] and "in.h5" in lines[0], p.stderr
    assert list(tables)[0] in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".o.h5*"))


@pytest.mark.parametrize("args,msg", [
    (["--window-size", "-2,0"], "expected >= 0, or -1"),
    (["--window-size", "5"], "is not LEFT,RIGHT"),
    (["--window-size", "3,x"], "is not LEFT,RIGHT"),
    (["--softcap", "0"], "not a number > 0"),
    (["--softcap", "-3"], "not a number > 0"),
    (["--causal", "--window-size", "4,2"], "causal means RIGHT = 0"),
    (["--mode", "taylor", "--window-size", "4,0"], "--mode taylor computes full or causal"),
    (["--mode", "taylor", "--alibi"], "--mode taylor computes full or causal"),
    (["--compare", "--softcap", "3"], "drop --compare"),
])
def test_bad_options(tmp_path, args, msg):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 50, 50, 2, 1, 16)
    write_inputs(tmp_path / "in.h5", q, k, v)
    out = tmp_path / "o.h5"
    p = run_fa(["-i", tmp_path / "in.h5", "-o", out] + args, nranks=2)
    assert p.returncode == 2, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("fa_long:")]
    assert len(lines) == 1 and msg in lines[0], p.stderr
    assert not out.exists()


def test_unused_slopes_warn(tmp_path):
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 40, 40, 2, 1, 16)
    write_masked(tmp_path / "in.h5", q, k, v, alibi_slopes=np.ones(2, dtype=np.float32))
    p = run_fa(["-i", tmp_path / "in.h5", "-o", tmp_path / "o.h5"])
    assert p.returncode == 0 and "used only with --alibi" in p.stderr, p.stderr
