"""End-to-end --mode taylor: HDF5 in -> fa_long under mpirun -> HDF5 out, against a numpy fp64
implementation of the same formula (first-order Taylor with key centering, kernels/taylor.h).

Tolerance: fp32 inputs and engine, max |o - ref| / max |ref| <= 1e-5 over the rows compared; rows
whose fp64 den/N_i lies within 1e-3 of the floor (0.1) are left out, since fp32 and fp64 may take
different sides of the denominator policy there (the test asserts they are few). lse (log of the
denominator used) within 1e-5 (1 + |ref|).

FA_TAYLOR_BACKEND=cuda runs every test on the CUDA engine (tests/gpu/taylor.sh does); the exact
mode that --compare runs beside it is then bf16, so that test's tolerance widens to 3e-2."""
import os

import h5py
import json

import numpy as np
import pytest

from conftest import run_c_test, run_fa
from reference import attention_f64, random_inputs, write_inputs

TOL = 1e-5
FLOOR = 0.1          # TAYLOR_DEN_FLOOR in kernels/taylor.h
BACKEND = os.environ.get("FA_TAYLOR_BACKEND", "")


def taylor_f64(q, k, v, causal=False, scale=None):
    """The Taylor formula in float64, with the denominator policy of kernels/taylor.h.
    Returns o [B,Nq,H,D], lse [B,H,Nq], ratio = den/N_i [B,Nq,H], kind [B,Nq,H]
    (0 formula, 1 fallback to the mean of the visible v, 3 no key visible)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    B, Nq, H, D = q.shape
    Nk, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    if causal:
        W = (np.arange(Nk)[None, :] <= (np.arange(Nq)[:, None] + Nk - Nq)).astype(np.float64)
    else:
        W = np.ones((Nq, Nk))
    cnt = W.sum(axis=1)
    empty = cnt == 0
    safe = np.where(empty, 1.0, cnt)
    o = np.zeros((B, Nq, H, D))
    lse = np.full((B, H, Nq), -np.inf)
    ratio = np.zeros((B, Nq, H))
    kind = np.zeros((B, Nq, H), dtype=int)
    for b in range(B):
        for h in range(H):
            kk, vv = k[b, :, h // G, :], v[b, :, h // G, :]
            x = scale * (q[b, :, h, :] @ (kk - kk.mean(axis=0)).T) * W
            den = cnt + x.sum(axis=1)
            sv = W @ vv
            ok = den > FLOOR * cnt
            ob = np.where(ok[:, None], (sv + x @ vv) / np.where(ok, den, 1.0)[:, None], sv / safe[:, None])
            ob[empty] = 0.0
            o[b, :, h, :] = ob
            lse[b, h, :] = np.where(empty, -np.inf, np.log(np.where(ok, den, safe)))
            ratio[b, :, h] = np.where(empty, 0.0, den / safe)
            kind[b, :, h] = np.where(empty, 3, np.where(ok, 0, 1))
    return o, lse, ratio, kind


def run_taylor(tmp_path, q, k, v, nranks, causal, extra=(), name="out"):
    inp = tmp_path / "in.h5"
    if not inp.exists():
        write_inputs(inp, q, k, v)
    out = tmp_path / f"{name}_{nranks}.h5"
    args = ["--input", inp, "--output", out, "--mode", "taylor", "--lse", "--force"]
    args += (["--causal"] if causal else []) + list(extra)
    if BACKEND:
        args += ["--backend", BACKEND]
    p = run_fa(args, nranks=nranks)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        return f["o"][...], f["lse"][...], dict(f.attrs), p.stderr


def compare(o, lse, q, k, v, causal):
    """Asserts the run matches the fp64 formula; returns (rel err, rows skipped, fallback rows)."""
    ro, rlse, ratio, kind = taylor_f64(q, k, v, causal)
    assert np.isfinite(o).all(), "output holds NaN or Inf"
    near = (np.abs(ratio - FLOOR) < 1e-3) & (kind != 3)           # [B,Nq,H]
    assert near.mean() < 0.01, f"{near.sum()} rows near the floor: pick other inputs"
    keep = ~near
    diff = np.abs(o - ro)[keep]
    err = float(diff.max() / max(np.abs(ro[keep]).max(), 1e-30))
    assert err <= TOL, f"o rel err {err:.3e} > {TOL:.0e}"
    keep_l = keep.transpose(0, 2, 1)
    assert (np.isneginf(lse) == (kind == 3).transpose(0, 2, 1)).all(), "lse -inf iff no key seen"
    fin = keep_l & np.isfinite(rlse)
    lerr = np.max(np.abs(lse[fin] - rlse[fin]) / (1 + np.abs(rlse[fin])))
    assert lerr <= TOL, f"lse err {lerr:.3e}"
    return err, int(near.sum()), int((kind == 1).sum())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nranks", [1, 2, 3, 4])
def test_rank_counts(tmp_path, nranks, causal):
    """Every rank count 1-4, causal and not, GQA, Nq and chunk not powers of two."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 2, 203, 203, 6, 2, 64)
    o, lse, attrs, _ = run_taylor(tmp_path, q, k, v, nranks, causal, ["--chunk", "50"])
    compare(o, lse, q, k, v, causal)
    assert attrs["ranks"] == nranks and attrs["causal"] == int(causal)


CASES = {
    # name: (B, Nq, Nk, H, Hkv, D, causal, nranks, extra)
    "mqa_odd_d": (1, 97, 131, 4, 1, 33, False, 3, ["--chunk", "40"]),
    "mqa_odd_d_causal": (1, 97, 131, 4, 1, 33, True, 2, ["--chunk", "40"]),
    "causal_nq_lt_nk": (2, 77, 190, 6, 2, 64, True, 3, ["--chunk", "33"]),
    "causal_nq_gt_nk": (1, 120, 50, 2, 1, 64, True, 2, ["--chunk", "41"]),
    "d128_zigzag": (1, 150, 150, 4, 4, 128, True, 4, ["--shard", "zigzag", "--chunk", "64"]),
    "contiguous_tile8": (1, 130, 170, 4, 2, 16, True, 3, ["--shard", "contiguous", "--tile", "8x64"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_shapes(tmp_path, case):
    B, Nq, Nk, H, Hkv, D, causal, nranks, extra = CASES[case]
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, B, Nq, Nk, H, Hkv, D)
    o, lse, _, _ = run_taylor(tmp_path, q, k, v, nranks, causal, extra)
    compare(o, lse, q, k, v, causal)
    if causal and Nq > Nk:
        assert (o[:, : Nq - Nk] == 0).all(), "rows that see no key must be 0"


def test_denominator_policy(tmp_path):
    """Large |q.k| in causal rows that see few keys: denominators turn negative; those rows get
    the mean of their visible values, are counted in the report, and nothing is NaN/Inf."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 256, 256, 4, 2, 16, magnitude=3.0)
    o, lse, attrs, err = run_taylor(tmp_path, q, k, v, 3, True, ["--chunk", "64"])
    _, _, nfall = compare(o, lse, q, k, v, True)
    assert nfall > 0, "these inputs should produce fallback rows"
    got = int(attrs["taylor_fallback_rows"])
    assert abs(got - nfall) <= 2, f"reported {got} fallback rows, fp64 formula has {nfall}"
    assert f"{got} (row, head) pairs" in err


def test_engine_on_its_communicator():
    """build/tests/test_engine_comm on 2 ranks, each giving the Taylor engine a communicator of
    its own: each comes out as the kernel over its own keys (a collective on MPI_COMM_WORLD would
    mix in the other rank's keys and rows), its row counts come through the engine's stats, and
    the overflow policy is the engine's property."""
    run_c_test("test_engine_comm", 2)


def order_bound(q, k, v, causal, c=8.0):
    """Per element, how far two fp32 evaluations may lie apart when they add the same terms in
    another order. The engine keeps the states z = sum_j kc_j and S = sum_j kc_j (x) v_j
    (kc = k - mu) beside sum_j v_j and the count; the output is
    (sum v + scale q.S) / (cnt + scale q.z). A reordered sum moves by at most ~c*u*sum of the
    absolute terms, so the bound is c*u*(A_num + |o| A_den) / den with
    A_num = sum_j |v_j| + scale sum_d |q_d| sum_j |kc_jd| |v_j| and
    A_den = cnt + scale sum_d |q_d| sum_j |kc_jd| (fp64). Rows near the denominator floor are
    masked (fp32 may take the other side of it), as are rows with no visible key."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    B, Nq, H, D = q.shape
    Nk, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    scale = 1.0 / np.sqrt(D)
    W = (np.arange(Nk)[None, :] <= (np.arange(Nq)[:, None] + Nk - Nq)).astype(np.float64) \
        if causal else np.ones((Nq, Nk))
    cnt = W.sum(axis=1)
    u = 2.0 ** -24
    bound = np.zeros((B, Nq, H, D))
    keep = np.zeros((B, Nq, H), dtype=bool)
    for b in range(B):
        for h in range(H):
            kk, vv = k[b, :, h // G, :], v[b, :, h // G, :]
            kc = kk - kk.mean(axis=0)
            qq = q[b, :, h, :]
            x = scale * (qq @ kc.T) * W
            den = cnt + x.sum(axis=1)
            ok = (den > FLOOR * cnt * (1 + 1e-3)) & (cnt > 0)
            d = np.where(ok, den, 1.0)[:, None]
            o = (W @ vv + x @ vv) / d
            akc = np.abs(kc)
            a_num = W @ np.abs(vv) + scale * np.einsum("id,ij,jd,je->ie", np.abs(qq), W, akc,
                                                       np.abs(vv))
            a_den = cnt + scale * np.einsum("id,ij,jd->i", np.abs(qq), W, akc)
            bound[b, :, h, :] = c * u * (a_num + np.abs(o) * a_den[:, None]) / d
            keep[b, :, h] = ok
    return bound, keep


def test_ranks_agree(tmp_path):
    """1 and 4 ranks agree to rounding: the plain-sum merge of the ranks' states only reorders
    the terms, so each element lies within order_bound of the other run's."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 180, 180, 4, 2, 32)
    o1, _, _, _ = run_taylor(tmp_path, q, k, v, 1, True, ["--chunk", "37"])
    o4, _, _, _ = run_taylor(tmp_path, q, k, v, 4, True, ["--chunk", "37"])
    bound, keep = order_bound(q, k, v, True)
    assert keep.mean() > 0.9
    diff = np.abs(o1.astype(np.float64) - o4)
    bad = keep[..., None] & (diff > bound)
    assert not bad.any(), (f"{bad.sum()} elements apart by more than the reordering bound; "
                           f"worst ratio {np.max(np.where(keep[..., None], diff / bound, 0)):.2f}")


def test_check_taylor(tmp_path):
    """fa_long check --mode taylor: passes on a taylor output (fp32 vs the fp64 formula), prints
    the approximation error against exact attention, and fails on an exact-mode output."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 160, 160, 4, 2, 32)
    run_taylor(tmp_path, q, k, v, 2, True, ["--chunk", "50"])
    inp, out = tmp_path / "in.h5", tmp_path / "out_2.h5"
    p = run_fa(["check", "--mode", "taylor", "--input", inp, "--output", out, "--rows", "all"])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASS" in p.stdout
    line = [l for l in p.stdout.splitlines() if "against exact" in l]
    assert line, p.stdout
    # the approximation error it prints is the one numpy finds
    ro, _ = attention_f64(q, k, v, True)
    with h5py.File(out, "r") as f:
        o = f["o"][...]
    approx = np.max(np.abs(o - ro)) / np.max(np.abs(ro))
    printed = float(line[0].split("rel err")[1].split()[0].rstrip(","))
    assert abs(printed - approx) <= 1e-3 * approx + 1e-6, (printed, approx)
    # the verdict says what passed (the formula), and the approximation's error is a number
    verdict = [l for l in p.stdout.splitlines() if l.startswith("check: PASS")]
    assert len(verdict) == 1 and "against the fp64 Taylor formula" in verdict[0], p.stdout
    said = float(verdict[0].split("approximation itself is")[1].split()[0])
    assert abs(said - approx) <= 1e-3 * approx + 1e-6 and "which no tolerance judges" in verdict[0]
    # run --check on a taylor job checks against the formula (the output's 'mode' attribute)
    _, _, _, err = run_taylor(tmp_path, q, k, v, 1, True, ["--check", "16"], name="checked")
    p2 = run_fa(["check", "--input", inp, "--output", tmp_path / "checked_1.h5", "--rows", "16"])
    assert p2.returncode == 0 and "taylor mode" in p2.stdout, p2.stdout
    # an exact output is not a Taylor output: the formula check fails
    ex = tmp_path / "exact.h5"
    run_fa(["--input", inp, "--output", ex, "--causal"], nranks=1, check=True)
    p = run_fa(["check", "--mode", "taylor", "--input", inp, "--output", ex, "--rows", "16"])
    assert p.returncode == 1 and "FAIL" in p.stdout


def test_compare(tmp_path):
    """--compare: the per-head relative error between the modes as attribute and in the report."""
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 150, 150, 4, 2, 32)
    o, _, attrs, err = run_taylor(tmp_path, q, k, v, 2, True, ["--chunk", "40", "--compare"])
    ro, _ = attention_f64(q, k, v, True)
    rel = np.asarray(attrs["compare_rel_err"])
    assert rel.shape == (4,)
    tol = 3e-2 if BACKEND == "cuda" else 1e-4
    for h in range(4):
        want = np.max(np.abs(o[:, :, h] - ro[:, :, h])) / np.max(np.abs(ro[:, :, h]))
        assert abs(rel[h] - want) <= tol * want + 1e-6, (h, rel[h], want)
    assert "compare" in err and "per head" in err
    assert attrs["mode"] == "taylor" and attrs["compare_mode"] == "exact"
    assert not (tmp_path / "out_2.h5.compare.h5").exists(), "the temporary file must be removed"
    rep = json.loads(attrs["report"])          # the report carries the same per-head errors
    assert rep["compare"]["other_mode"] == "exact"
    assert np.allclose(rep["compare"]["rel_err_per_head"], rel, rtol=1e-8)
