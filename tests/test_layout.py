"""--layout bnhd|bhnd and --out-layout (issue #19 item 1): inputs in torch's [B, H, N, D] against
an fp64 numpy reference (shapes that are not powers of two, GQA and MQA, causal with Nq != Nk,
1 and 3 ranks, float32 and bfloat16); the 'layout' attribute on the datasets or the root (a
dataset's beats the root's, the option beats both with a warning); the issue's own file, a
torch tensor pair read as bnhd, which ran silently wrong and is now refused (issue 27: the
README's doubt rule case by case, and check repeating the doubt); --out-layout both ways;
gen --layout, then a run, then check; check taking the layouts from the output's attributes;
the resume key; bad values refused in one line."""
import os

import h5py
import numpy as np
import pytest

from conftest import fa_lines, leftovers, run_fa
from reference import (attention_f64, from_bf16_bits, random_inputs, rel_err, to_bf16_bits,
                       write_inputs)


def bhnd(x):
    """[B, N, heads, D] <-> [B, heads, N, D] (its own inverse)."""
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 1, 3))


def torch_file(path, q, k, v, dtype="float32", attr=None):
    """q, k, v (given as [B, N, heads, D]) stored as torch's [B, heads, N, D]; attr: None, or
    "root" / "datasets" for where the attribute layout = "bhnd" goes."""
    write_inputs(path, bhnd(q), bhnd(k), bhnd(v), dtype=dtype)
    if attr:
        with h5py.File(path, "a") as f:
            for obj in ([f] if attr == "root" else [f["q"], f["k"], f["v"]]):
                obj.attrs["layout"] = "bhnd"


def rounded(x, dtype):
    return from_bf16_bits(to_bf16_bits(x)) if dtype == "bfloat16" else x


BASE = ["--lse", "--chunk", "8", "-q", "--backend", "cpu"]
CASES = {   # B, Nq, Nk, H, Hkv, D, causal
    "gqa_causal": (2, 37, 53, 6, 2, 24, True),
    "mqa": (1, 45, 29, 5, 1, 20, False),
}


@pytest.mark.parametrize("nranks", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", list(CASES))
def test_bhnd_against_fp64(tmp_path, nranks, dtype, case):
    B, Nq, Nk, H, Hkv, D, causal = CASES[case]
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = random_inputs(np.random.default_rng(3), B, Nq, Nk, H, Hkv, D)
    torch_file(inp, q, k, v, dtype=dtype)
    args = ["-i", inp, "-o", out, "--layout", "bhnd", "--out-dtype", "float32"] + BASE
    p = run_fa(args + (["--causal"] if causal else []), nranks=nranks)
    assert p.returncode == 0, p.stderr
    assert not fa_lines(p.stderr), p.stderr               # told: no warning
    o_ref, lse_ref = attention_f64(*(rounded(x, dtype) for x in (q, k, v)), causal=causal)
    with h5py.File(out, "r") as f:
        assert f["o"].shape == (B, H, Nq, D)               # the input's layout
        assert rel_err(bhnd(f["o"][...]), o_ref) <= 2e-6
        assert rel_err(f["lse"][...], lse_ref) <= 2e-6    # [B, H, Nq] as always
        assert f["o"].attrs["layout"] == "bhnd" and f.attrs["layout"] == "bhnd"
        assert [f.attrs[a] for a in ("q_layout", "k_layout", "v_layout")] == ["bhnd"] * 3
    c = run_fa(["check", "--input", inp, "--output", out, "--rows", "all"])
    assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr
    assert "layouts q bhnd, k bhnd, v bhnd, o bhnd" in c.stdout, c.stdout


@pytest.mark.parametrize("nranks", [1, 3])
def test_bhnd_bf16_output_and_small_transfers(tmp_path, nranks):
    """bf16 in, bf16 o (q's type) in bhnd, with transfers capped at 1 KiB so every read and
    write of the run loops."""
    B, Nq, Nk, H, Hkv, D = 1, 70, 70, 4, 2, 16
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = random_inputs(np.random.default_rng(5), B, Nq, Nk, H, Hkv, D)
    torch_file(inp, q, k, v, dtype="bfloat16", attr="datasets")
    p = run_fa(["-i", inp, "-o", out, "--causal"] + BASE, nranks=nranks,
               env={"FA_IO_CAP_BYTES": "1024"})
    assert p.returncode == 0, p.stderr
    o_ref, _ = attention_f64(*(rounded(x, "bfloat16") for x in (q, k, v)), causal=True)
    with h5py.File(out, "r") as f:
        assert f["o"].attrs["dtype"] == "bfloat16" and f["o"].shape == (B, H, Nq, D)
        assert rel_err(bhnd(f["o"][...]), o_ref) <= 1e-2
    c = run_fa(["check", "--output", out, "--rows", "all"])
    assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr


SMALL = (2, 19, 27, 4, 2, 8)


def small_inputs(seed=0):
    return random_inputs(np.random.default_rng(seed), *SMALL)


@pytest.mark.parametrize("where", ["root", "datasets"])
def test_attribute_is_honoured(tmp_path, where):
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = small_inputs()
    torch_file(inp, q, k, v, attr=where)
    p = run_fa(["-i", inp, "-o", out, "--causal"] + BASE, nranks=2)
    assert p.returncode == 0, p.stderr
    assert not fa_lines(p.stderr), p.stderr
    with h5py.File(out, "r") as f:
        assert rel_err(bhnd(f["o"][...]), attention_f64(q, k, v, causal=True)[0]) <= 1e-5


def test_dataset_attribute_beats_root(tmp_path):
    """The root says bnhd, the datasets bhnd: read as bhnd. Then k and v in bnhd (their own
    attribute) beside a bhnd q: each dataset in its own layout; o follows q."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = small_inputs(1)
    torch_file(inp, q, k, v, attr="datasets")
    with h5py.File(inp, "a") as f:
        f.attrs["layout"] = "bnhd"
    o_ref = attention_f64(q, k, v)[0]
    p = run_fa(["-i", inp, "-o", out] + BASE)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        assert rel_err(bhnd(f["o"][...]), o_ref) <= 1e-5
    with h5py.File(inp, "a") as f:                       # k, v back to bnhd, saying so
        for n, x in (("k", k), ("v", v)):
            del f[n]
            f[n] = x
            f[n].attrs["layout"] = "bnhd"
        del f.attrs["layout"]
    p = run_fa(["-i", inp, "-o", out, "-f"] + BASE, nranks=3)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        assert rel_err(bhnd(f["o"][...]), o_ref) <= 1e-5
        assert [f.attrs[a] for a in ("q_layout", "k_layout", "v_layout", "layout")] == \
            ["bhnd", "bnhd", "bnhd", "bhnd"]
    c = run_fa(["check", "--output", out, "--rows", "all"])
    assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr


def test_option_overrides_attribute_with_a_warning(tmp_path):
    """A bnhd file whose attribute wrongly says bhnd: --layout bnhd reads it right and says that
    it overrode the attribute (one warning line naming the dataset)."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = small_inputs(2)
    write_inputs(inp, q, k, v)
    with h5py.File(inp, "a") as f:
        f["q"].attrs["layout"] = "bhnd"
    p = run_fa(["-i", inp, "-o", out, "--layout", "bnhd"] + BASE, nranks=3)
    assert p.returncode == 0, p.stderr
    lines = fa_lines(p.stderr)
    assert len(lines) == 1 and "warning" in lines[0] and "--layout bnhd overrides" in lines[0] \
        and "dataset 'q'" in lines[0] and str(inp) in lines[0], p.stderr
    with h5py.File(out, "r") as f:
        assert rel_err(f["o"][...], attention_f64(q, k, v)[0]) <= 1e-5
        assert f.attrs["q_layout"] == "bnhd"


# ---- the issue's own repro, smaller: torch tensors with Nq = Nk, read as bnhd ------------------
REPRO = (1, 300, 300, 8, 2, 16)     # true B, Nq, Nk, H, Hkv, D; as bnhd: Nq=8 Nk=2 H=Hkv=300


def test_issue_repro_refused_and_right_when_told(tmp_path):
    q, k, v = random_inputs(np.random.default_rng(19), *REPRO)
    o_ref, lse_ref = attention_f64(q, k, v)
    inp = tmp_path / "torch.h5"
    torch_file(inp, q, k, v)
    # without --layout: k [1, 2, 300, 16] read as bnhd has 300 heads over 2 rows: refused
    out = tmp_path / "silent.h5"
    p = run_fa(["-i", inp, "-o", out] + BASE, nranks=3)
    assert p.returncode == 2, p.stderr
    lines = fa_lines(p.stderr)
    assert len(lines) == 1 and "--layout bhnd" in lines[0] and "more heads (300) than rows (2)" \
        in lines[0] and "'k' [1, 2, 300, 16]" in lines[0] and str(inp) in lines[0], p.stderr
    assert not leftovers(tmp_path, out)
    # with --layout bhnd, and with the attribute: right, no warning
    for how in ("option", "attribute"):
        out = tmp_path / f"{how}.h5"
        if how == "attribute":
            torch_file(inp, q, k, v, attr="root")
        p = run_fa(["-i", inp, "-o", out] + BASE + (["--layout", "bhnd"] if how == "option" else []),
                   nranks=3)
        assert p.returncode == 0 and not fa_lines(p.stderr), p.stderr
        with h5py.File(out, "r") as f:
            assert rel_err(bhnd(f["o"][...]), o_ref) <= 1e-5
            assert rel_err(f["lse"][...], lse_ref) <= 1e-5
            assert f.attrs["layout_stated"] == 1
        c = run_fa(["check", "--output", out, "--rows", "64"])
        assert c.returncode == 0 and "PASS" in c.stdout and "warning" not in c.stdout + c.stderr, \
            c.stdout + c.stderr


# ---- issue 27 item 1: the bnhd reading of a file that says nothing, judged -------------------
ISSUE = (1, 600, 600, 16, 4, 64)     # the issue's torch tensors (N 6000 there), fp16, in /layer7


@pytest.mark.parametrize("nranks", [1, 3])
def test_issue27_torch_file_in_a_group_refused(tmp_path, nranks):
    """q [1, 16, N, 64], k and v [1, 4, N, 64] (torch's), fp16, in /layer7, --causal, no
    --layout: read as bnhd that is 16 rows over 4 keys of N heads, which ran and exited 0. Now
    refused in one line naming the file, k and the hint; --layout bhnd reads it right; --layout
    bnhd (stated) runs it as it is, recorded as stated."""
    q, k, v = random_inputs(np.random.default_rng(27), *ISSUE)
    inp = tmp_path / "in.h5"
    with h5py.File(inp, "w") as f:
        for n, x in (("q", q), ("k", k), ("v", v)):
            f[f"layer7/{n}"] = bhnd(x).astype(np.float16)
    paths = ["--q", "/layer7/q", "--k", "/layer7/k", "--v", "/layer7/v", "--causal"]
    out = tmp_path / "out.h5"
    p = run_fa(["-i", inp, "-o", out] + paths + BASE, nranks=nranks)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = fa_lines(p.stderr)
    assert len(lines) == 1, p.stderr
    for w in (f"input '{inp}'", "'/layer7/k' [1, 4, 600, 64]", "more heads (600) than rows (4)",
              "--layout bhnd", 'layout = "bhnd"', "--layout bnhd"):
        assert w in lines[0], (w, lines[0])
    assert not leftovers(tmp_path, out)
    p = run_fa(["-i", inp, "-o", out, "--layout", "bhnd", "--out-dtype", "float32"] + paths + BASE,
               nranks=nranks)
    assert p.returncode == 0 and not fa_lines(p.stderr), p.stderr
    o_ref = attention_f64(*(x.astype(np.float16).astype(np.float32) for x in (q, k, v)),
                          causal=True)[0]
    with h5py.File(out, "r") as f:
        assert rel_err(bhnd(f["o"][...]), o_ref) <= 1e-5
    told = tmp_path / "told.h5"
    p = run_fa(["-i", inp, "-o", told, "--layout", "bnhd"] + paths + BASE, nranks=nranks)
    assert p.returncode == 0 and not fa_lines(p.stderr), p.stderr
    with h5py.File(told, "r") as f:
        assert f.attrs["layout_stated"] == 1 and f["o"].shape == (1, 16, 600, 64)


@pytest.mark.parametrize("q_dims,k_dims,verdict", [
    ((1, 16, 60, 8), (1, 4, 60, 8), "refused"),      # torch GQA prefill: k 60 heads over 4 rows
    ((2, 6, 40, 8), (2, 6, 40, 8), "refused"),       # torch MHA, H = Hkv
    ((1, 8, 33, 8), (1, 2, 66, 8), "unfit"),         # torch, Nk = 2 Nq: does not fit as bnhd
    ((1, 4, 8, 8), (1, 2, 8, 8), "refused"),         # bnhd 2 keys of 8 heads: both fit, ambiguous
    ((1, 4, 8, 8), (1, 3, 8, 8), "runs"),            # bnhd 3 keys of 8 heads: bhnd does not fit
    ((1, 16, 32, 8), (1, 1000, 8, 8), "runs"),       # bnhd decode-like: few rows, many keys
    ((1, 1, 8, 8), (1, 50, 2, 8), "runs"),           # bnhd decode step
    ((1, 40, 8, 8), (1, 60, 2, 8), "runs"),          # bnhd GQA
    ((1, 4, 8, 8), (1, 2, 2, 8), "warns"),           # q alone has more heads than rows
])
def test_doubt_rule(tmp_path, q_dims, k_dims, verdict):
    """The README's rule, case by case on files that say nothing of their layout: refused (exit
    2, one line with the hint), a warning, or a silent bnhd run; what runs is right as bnhd, and
    a refused file runs right with --layout bnhd (one that does not fit as bnhd: with --layout
    bhnd)."""
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal(d).astype(np.float32) for d in (q_dims, k_dims, k_dims))
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, q, k, v)
    p = run_fa(["-i", inp, "-o", out] + BASE)
    lines = fa_lines(p.stderr)
    if verdict == "unfit":
        assert p.returncode == 2 and len(lines) == 1 and "multiple of Hkv" in lines[0] \
            and "--layout bhnd" in lines[0], p.stderr
        p = run_fa(["-i", inp, "-o", out, "--layout", "bhnd"] + BASE)
        assert p.returncode == 0 and not fa_lines(p.stderr), p.stderr
        with h5py.File(out, "r") as f:
            assert rel_err(bhnd(f["o"][...]), attention_f64(bhnd(q), bhnd(k), bhnd(v))[0]) <= 1e-5
        return
    if verdict == "refused":
        assert p.returncode == 2 and len(lines) == 1 and "--layout bhnd" in lines[0] \
            and "more heads" in lines[0] and "'k'" in lines[0], p.stderr
        assert not leftovers(tmp_path, out)
        p = run_fa(["-i", inp, "-o", out, "--layout", "bnhd"] + BASE)
        lines = fa_lines(p.stderr)
    assert p.returncode == 0, p.stderr
    if verdict == "warns":
        assert len(lines) == 1 and "warning" in lines[0] and "'q' [1, 4, 8, 8]" in lines[0] \
            and "--layout bhnd" in lines[0], p.stderr
    else:
        assert not lines, p.stderr
    with h5py.File(out, "r") as f:
        assert rel_err(f["o"][...], attention_f64(q, k, v)[0]) <= 1e-5
        assert f.attrs["layout_stated"] == (verdict == "refused")


@pytest.mark.parametrize("kind", ["refused", "warns"])
def test_check_repeats_the_doubt(tmp_path, kind):
    """check reads the input as the run did; for a reading the run doubts (an output made before
    the refusal, as 1e9b231 made it; the warning's case as the run makes it now) it says so on
    stderr and in its report before the verdict; not when the layout is stated: check --layout
    bnhd, or a run that was told (layout_stated)."""
    q_dims, k_dims = ((1, 16, 60, 8), (1, 4, 60, 8)) if kind == "refused" else ((1, 4, 8, 8), (1, 2, 2, 8))
    rng = np.random.default_rng(8)
    q, k, v = (rng.standard_normal(d).astype(np.float32) for d in (q_dims, k_dims, k_dims))
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, q, k, v)
    p = run_fa(["-i", inp, "-o", out] + BASE + (["--layout", "bnhd"] if kind == "refused" else []))
    assert p.returncode == 0, p.stderr
    c = run_fa(["check", "--output", out, "--rows", "all"])
    assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr
    if kind == "refused":                         # told: quiet; then as an unstated old run left it
        assert "warning" not in c.stdout + c.stderr, c.stdout + c.stderr
        with h5py.File(out, "a") as f:
            if "layout_stated" in f.attrs:
                del f.attrs["layout_stated"]
        c = run_fa(["check", "--output", out, "--rows", "all"])
        assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr
    name = "'k' [1, 4, 60, 8]" if kind == "refused" else "'q' [1, 4, 8, 8]"
    report = [l for l in c.stdout.splitlines() if l.startswith("check: warning:")]
    assert len(report) == 1 and name in report[0] and "--layout bhnd" in report[0], c.stdout
    assert c.stdout.index("check: warning:") < c.stdout.index("PASS")
    warned = fa_lines(c.stderr)
    assert len(warned) == 1 and "warning" in warned[0] and name in warned[0], c.stderr
    c = run_fa(["check", "--output", out, "--rows", "all", "--layout", "bnhd"])
    assert c.returncode == 0 and "warning" not in c.stdout + c.stderr, c.stdout + c.stderr


def test_no_warning_for_plausible_bnhd(tmp_path):
    """Shapes that are bnhd and look it are left alone: a decode step (one query row, more heads
    than rows in q, which cannot be read as bhnd), and --layout bnhd on the repro's file."""
    inp, out = tmp_path / "decode.h5", tmp_path / "out.h5"
    q, k, v = random_inputs(np.random.default_rng(4), 1, 1, 50, 8, 2, 16)
    write_inputs(inp, q, k, v)
    p = run_fa(["-i", inp, "-o", out] + BASE)
    assert p.returncode == 0 and not fa_lines(p.stderr), p.stderr
    with h5py.File(out, "r") as f:
        assert rel_err(f["o"][...], attention_f64(q, k, v)[0]) <= 1e-5
    torch_file(inp, *random_inputs(np.random.default_rng(19), *REPRO))
    p = run_fa(["-i", inp, "-o", out, "-f", "--layout", "bnhd"] + BASE)
    assert p.returncode == 0 and not fa_lines(p.stderr), p.stderr


def test_torch_decode_refused_with_a_hint(tmp_path):
    """torch's decode step (q [1, 8, 1, 16]) read as bnhd does not fit (H=1 against Hkv=50):
    the one-line refusal says --layout bhnd would read it."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = random_inputs(np.random.default_rng(6), 1, 1, 50, 8, 2, 16)
    torch_file(inp, q, k, v)
    p = run_fa(["-i", inp, "-o", out] + BASE)
    assert p.returncode == 2, p.stderr
    lines = fa_lines(p.stderr)
    assert len(lines) == 1 and "multiple of Hkv" in lines[0] and "--layout bhnd" in lines[0], lines
    assert not leftovers(tmp_path, out)
    p = run_fa(["-i", inp, "-o", out, "--layout", "bhnd"] + BASE)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        assert rel_err(bhnd(f["o"][...]), attention_f64(q, k, v)[0]) <= 1e-5


# ---- --out-layout ----------------------------------------------------------------------------
@pytest.mark.parametrize("nranks", [1, 3])
@pytest.mark.parametrize("src,dst", [("bnhd", "bhnd"), ("bhnd", "bnhd")])
def test_out_layout_conversions(tmp_path, nranks, src, dst):
    B, Nq, Nk, H, Hkv, D = 2, 33, 41, 6, 3, 12
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = random_inputs(np.random.default_rng(8), B, Nq, Nk, H, Hkv, D)
    if src == "bhnd":
        torch_file(inp, q, k, v, attr="root")
    else:
        write_inputs(inp, q, k, v)
    p = run_fa(["-i", inp, "-o", out, "--causal", "--out-layout", dst] + BASE, nranks=nranks)
    assert p.returncode == 0, p.stderr
    o_ref, lse_ref = attention_f64(q, k, v, causal=True)
    with h5py.File(out, "r") as f:
        o = f["o"][...]
        assert o.shape == ((B, H, Nq, D) if dst == "bhnd" else (B, Nq, H, D))
        assert rel_err(bhnd(o) if dst == "bhnd" else o, o_ref) <= 1e-5
        assert rel_err(f["lse"][...], lse_ref) <= 1e-5
        assert f["o"].attrs["layout"] == dst and f.attrs["layout"] == dst
        assert f.attrs["q_layout"] == src
    c = run_fa(["check", "--output", out, "--rows", "all"])
    assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr
    assert f"layouts q {src}, k {src}, v {src}, o {dst}" in c.stdout, c.stdout


# ---- gen --layout, run, check ------------------------------------------------------------------
def test_gen_layout_run_check(tmp_path):
    shape = ["-b", "2", "--nq", "45", "--nk", "61", "--heads", "6", "--kv-heads", "2", "-d", "20",
             "--seed", "7"]
    a, b = tmp_path / "bnhd.h5", tmp_path / "bhnd.h5"
    assert run_fa(["gen", "--output", a] + shape).returncode == 0
    p = run_fa(["gen", "--output", b, "--layout", "bhnd"] + shape)
    assert p.returncode == 0 and "layout bhnd" in p.stderr, p.stderr
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for n in ("q", "k", "v"):                # the same values, transposed, and said so
            assert fb[n].attrs["layout"] == "bhnd" and "layout" not in fa[n].attrs
            assert np.array_equal(bhnd(fb[n][...]), fa[n][...])
        assert fb["q"].shape == (2, 6, 45, 20) and fb["k"].shape == (2, 2, 61, 20)
    oa, ob = tmp_path / "oa.h5", tmp_path / "ob.h5"
    for i, o in ((a, oa), (b, ob)):              # no --layout: the attribute says it
        p = run_fa(["-i", i, "-o", o, "--causal"] + BASE, nranks=3)
        assert p.returncode == 0 and not fa_lines(p.stderr), p.stderr
    with h5py.File(oa, "r") as fa, h5py.File(ob, "r") as fb:
        assert np.array_equal(bhnd(fb["o"][...]), fa["o"][...])    # the engines saw the same
        assert np.array_equal(fb["lse"][...], fa["lse"][...])
    c = run_fa(["check", "--input", b, "--output", ob, "--rows", "all"])
    assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr


def test_check_layouts_from_output_attributes(tmp_path):
    """check without --layout reads the output's q_layout/k_layout/v_layout and o's layout; a
    --layout or --out-layout that contradicts them is wrong and says so; an output without the
    attributes (an older one) falls back to the input's own attributes."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = random_inputs(np.random.default_rng(9), 1, 12, 12, 12, 12, 8)
    torch_file(inp, q, k, v)                          # no attribute: the run was told
    p = run_fa(["-i", inp, "-o", out, "--layout", "bhnd", "--out-layout", "bnhd"] + BASE)
    assert p.returncode == 0, p.stderr
    c = run_fa(["check", "--input", inp, "--output", out, "--rows", "all"])
    assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr
    assert "layouts q bhnd, k bhnd, v bhnd, o bnhd" in c.stdout, c.stdout
    # H = Hkv = N: every wrong layout fits the shapes, so only the numbers tell
    for wrong in (["--layout", "bnhd"], ["--out-layout", "bhnd"]):
        c = run_fa(["check", "--input", inp, "--output", out, "--rows", "all"] + wrong)
        assert c.returncode == 1 and "FAIL" in c.stdout, (wrong, c.stdout + c.stderr)
    c = run_fa(["check", "--input", inp, "--output", out, "--layout", "bhnd", "--out-layout",
                "bnhd"])
    assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr
    with h5py.File(out, "a") as f:                    # an older output: no layout attributes
        for a in ("q_layout", "k_layout", "v_layout", "layout"):
            del f.attrs[a]
        del f["o"].attrs["layout"]
    c = run_fa(["check", "--input", inp, "--output", out])
    assert c.returncode == 1 and "FAIL" in c.stdout, c.stdout   # the input says nothing: bnhd
    torch_file(inp, q, k, v, attr="datasets")
    c = run_fa(["check", "--input", inp, "--output", out])
    assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr


# ---- --resume ---------------------------------------------------------------------------------
def test_resume_with_another_layout_is_refused(tmp_path):
    """The layouts are part of the job key: a partial made for a bhnd o is not resumed into a
    bnhd one (nor from q, k, v read in another layout); the same layouts resume."""
    inp, out, other = tmp_path / "in.h5", tmp_path / "out.h5", tmp_path / "other.h5"
    q, k, v = random_inputs(np.random.default_rng(10), 1, 12, 12, 12, 12, 8)
    torch_file(inp, q, k, v, attr="root")
    base = ["--causal"] + BASE
    assert run_fa(["-i", inp, "-o", other] + base).returncode == 0
    with h5py.File(other, "r") as f:
        assert "layout=bhnd,bhnd,bhnd->bhnd" in f.attrs["resume_key"]
    partial = tmp_path / ".out.h5.partial"
    os.rename(other, partial)
    for extra in (["--out-layout", "bnhd"], ["--layout", "bnhd"]):
        p = run_fa(["-i", inp, "-o", out, "--resume"] + base + extra, nranks=2)
        assert p.returncode == 2, p.stderr
        lines = [l for l in fa_lines(p.stderr) if "warning" not in l]
        assert len(lines) == 1 and "another job" in lines[0] and "layout=" in lines[0], p.stderr
        assert partial.exists() and not out.exists()
    p = run_fa(["-i", inp, "-o", out, "--resume"] + base + ["--out-layout", "bhnd"], nranks=2)
    assert p.returncode == 0, p.stderr
    assert out.exists() and not partial.exists()
    with h5py.File(out, "r") as f:
        assert rel_err(bhnd(f["o"][...]), attention_f64(q, k, v, causal=True)[0]) <= 1e-5


def test_bnhd_key_unchanged(tmp_path):
    """bnhd everywhere leaves the job key as it was before --layout (old partials resume)."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, *small_inputs())
    assert run_fa(["-i", inp, "-o", out] + BASE).returncode == 0
    with h5py.File(out, "r") as f:
        assert "layout" not in f.attrs["resume_key"] and f.attrs["layout"] == "bnhd"


# ---- bad values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("nranks", [1, 3])
@pytest.mark.parametrize("cmd,words", [
    (["--layout", "bnhdx"], ["option --layout: 'bnhdx' is not bnhd"]),
    (["--out-layout", "nhd"], ["option --out-layout: 'nhd' is not bnhd"]),
    (["--layout"], ["--layout needs a value"]),
])
def test_bad_layout_option(tmp_path, nranks, cmd, words):
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, *small_inputs())
    p = run_fa(["-i", inp, "-o", out] + cmd, nranks=nranks)
    assert p.returncode == 2, p.stderr
    lines = fa_lines(p.stderr)
    assert len(lines) == 1 and all(w in lines[0] for w in words), p.stderr
    assert not leftovers(tmp_path, out)


@pytest.mark.parametrize("nranks", [1, 3])
@pytest.mark.parametrize("where,value,words", [
    ("v", "torch", ["dataset 'v'", "'layout' holds \"torch\"", "bnhd", "bhnd"]),
    ("/", "BSHDX", ["root attribute 'layout' holds \"BSHDX\""]),
    ("q", 3, ["dataset 'q'", "'layout' is not a string"]),
])
def test_bad_layout_attribute(tmp_path, nranks, where, value, words):
    """Refused even with --layout given: a file whose attribute is not a layout is not one to
    guess about."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, *small_inputs())
    with h5py.File(inp, "a") as f:
        (f if where == "/" else f[where]).attrs["layout"] = value
    for extra in ([], ["--layout", "bnhd"]):
        p = run_fa(["-i", inp, "-o", out] + BASE + extra, nranks=nranks)
        assert p.returncode == 2, p.stderr
        lines = fa_lines(p.stderr)
        assert len(lines) == 1 and str(inp) in lines[0], p.stderr
        assert all(w in lines[0] for w in words), lines
        assert not leftovers(tmp_path, out)


def test_bad_layout_in_gen_and_check(tmp_path):
    p = run_fa(["gen", "--output", tmp_path / "g.h5", "--layout", "hd"])
    assert p.returncode == 2 and "gen: option --layout: 'hd' is not bnhd" in p.stderr, p.stderr
    assert not (tmp_path / "g.h5").exists()
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    write_inputs(inp, *small_inputs())
    assert run_fa(["-i", inp, "-o", out] + BASE).returncode == 0
    for opt in ("--layout", "--out-layout"):
        c = run_fa(["check", "--output", out, opt, "x"])
        assert c.returncode == 2 and f"check: option {opt}: 'x' is not bnhd" in c.stderr, c.stderr


def test_nonfinite_index_in_the_files_order(tmp_path):
    """A NaN in a bhnd q is reported at its index as the file has it, [b, head, row, d]."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = small_inputs()
    q = q.copy()
    q[1, 5, 3, 2] = np.nan                       # [b, row, head, d]
    torch_file(inp, q, k, v, attr="root")
    p = run_fa(["-i", inp, "-o", out] + BASE, nranks=3)
    assert p.returncode == 2, p.stderr
    lines = fa_lines(p.stderr)
    assert len(lines) == 1 and "has NaN at [1, 3, 5, 2]" in lines[0], lines


def test_check_and_compare_inside_the_run(tmp_path):
    """--check ROWS and --compare read the bhnd output in its layout: the same figures as the
    bnhd run of the same values (the engines saw the same rows)."""
    q, k, v = small_inputs(12)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_inputs(a, q, k, v)
    torch_file(b, q, k, v, attr="root")
    got = {}
    for i in (a, b):
        o = tmp_path / f"o_{i.name}"
        p = run_fa(["-i", i, "-o", o, "--causal", "--compare", "--check", "all"] + BASE, nranks=2)
        assert p.returncode == 0, p.stderr
        assert "check: PASS" in p.stdout, p.stdout
        with h5py.File(o, "r") as f:
            got[i.name] = (f.attrs["compare_rel_err"], f.attrs["check_rel_err"])
    assert len(got["a.h5"][0]) == SMALL[3]
    assert np.array_equal(got["a.h5"][0], got["b.h5"][0]) and got["a.h5"][1] == got["b.h5"][1]
