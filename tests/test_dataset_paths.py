"""--q/--k/--v PATH (the input datasets' HDF5 paths) and --out-group G (o and lse under group G
of the output), issue #19 item 2: absolute and relative paths, HDF5 links, 1 and 3 ranks, causal
with Nq != Nk and GQA, numbers against fp64; `fa_long check` taking the paths from the output's
attributes (q_path, k_path, v_path, out_group); a missing path refused in one line naming it,
with the datasets of that name in the file and the option to use, or "did you mean" for a
misspelt path (issue #27 item 4); --resume with other paths refused as another job."""
import os

import h5py
import numpy as np
import pytest

from conftest import fa_lines, leftovers, run_fa
from reference import attention_f64, random_inputs, write_inputs

B, NQ, NK, H, HKV, D = 2, 40, 72, 4, 2, 16


def rel(got, ref):
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def make_input(path, seed=0):
    """Root q, k, v (decoys: other numbers) and the real ones under /layer3/ (v through a soft
    link to /layer3/values). Returns the /layer3 tensors."""
    rng = np.random.default_rng(seed)
    write_inputs(path, *random_inputs(rng, B, NQ, NK, H, HKV, D))
    q, k, v = random_inputs(rng, B, NQ, NK, H, HKV, D)
    with h5py.File(path, "a") as f:
        g = f.create_group("layer3")
        g["q"], g["k"], g["values"] = q, k, v
        g["v"] = h5py.SoftLink("/layer3/values")
    return q, k, v


PATHS = {"absolute": ["--q", "/layer3/q", "--k", "/layer3/k", "--v", "/layer3/v"],
         "relative": ["--q", "layer3/q", "--k", "layer3/k", "--v", "layer3/v"]}


@pytest.mark.parametrize("nranks", [1, 3])
@pytest.mark.parametrize("spelling", ["absolute", "relative"])
def test_paths_causal_gqa(tmp_path, nranks, spelling):
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = make_input(inp)
    p = run_fa(["-i", inp, "-o", out, "--causal", "--lse", "--chunk", "8", "-q", "--backend", "cpu"]
               + PATHS[spelling], nranks=nranks)
    assert p.returncode == 0, p.stderr
    o_ref, lse_ref = attention_f64(q, k, v, causal=True)
    with h5py.File(out, "r") as f:
        assert rel(f["o"][...], o_ref) <= 1e-5
        assert rel(f["lse"][...], lse_ref) <= 1e-5
        a = f.attrs
        assert [a["q_path"], a["k_path"], a["v_path"]] == PATHS[spelling][1::2]
        assert a["out_group"] == "/"
    c = run_fa(["check", "--input", inp, "--output", out, "--rows", "all"])
    assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr


@pytest.mark.parametrize("nranks", [1, 3])
def test_out_group(tmp_path, nranks):
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = make_input(inp)
    p = run_fa(["-i", inp, "-o", out, "--causal", "--lse", "--chunk", "8", "-q", "--backend", "cpu",
                "--out-group", "layers/3"] + PATHS["absolute"], nranks=nranks)
    assert p.returncode == 0, p.stderr
    o_ref, lse_ref = attention_f64(q, k, v, causal=True)
    with h5py.File(out, "r") as f:
        assert "o" not in f and "lse" not in f
        assert isinstance(f["layers"], h5py.Group) and isinstance(f["layers/3"], h5py.Group)
        assert rel(f["/layers/3/o"][...], o_ref) <= 1e-5
        assert rel(f["/layers/3/lse"][...], lse_ref) <= 1e-5
        assert f.attrs["out_group"] == "layers/3" and "causal" in f.attrs   # attributes on the root
    # check without repeating the paths: the output's attributes give them
    c = run_fa(["check", "--input", inp, "--output", out, "--rows", "all"])
    assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr
    assert "/layer3/q" in c.stdout and "layers/3/o" in c.stdout, c.stdout
    # and with --output alone (input from the attribute 'input')
    c = run_fa(["check", "--output", out])
    assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr
    # given paths win over the attributes: the root decoys do not match this output
    c = run_fa(["check", "--input", inp, "--output", out, "--q", "q", "--k", "k", "--v", "v"])
    assert c.returncode == 1 and "FAIL" in c.stdout, c.stdout + c.stderr


def test_default_paths_unchanged(tmp_path):
    """Without the options: q, k, v at the root, o and lse at the root, and check as before."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    rng = np.random.default_rng(0)
    q, k, v = random_inputs(rng, B, NQ, NK, H, HKV, D)
    write_inputs(inp, q, k, v)
    assert run_fa(["-i", inp, "-o", out, "--lse", "-q", "--backend", "cpu"]).returncode == 0
    o_ref, _ = attention_f64(q, k, v)
    with h5py.File(out, "r") as f:
        assert rel(f["o"][...], o_ref) <= 1e-5 and "lse" in f
        assert f.attrs["q_path"] == "q" and f.attrs["out_group"] == "/"
    c = run_fa(["check", "--input", inp, "--output", out])
    assert c.returncode == 0 and "PASS" in c.stdout and "datasets" not in c.stdout, c.stdout


def test_check_old_output_without_attributes(tmp_path):
    """An output made before these attributes: check falls back to q, k, v and the root."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    rng = np.random.default_rng(1)
    write_inputs(inp, *random_inputs(rng, B, NQ, NK, H, HKV, D))
    assert run_fa(["-i", inp, "-o", out, "-q", "--backend", "cpu"]).returncode == 0
    with h5py.File(out, "a") as f:
        for a in ("q_path", "k_path", "v_path", "out_group"):
            del f.attrs[a]
    c = run_fa(["check", "--input", inp, "--output", out])
    assert c.returncode == 0 and "PASS" in c.stdout, c.stdout + c.stderr


@pytest.mark.parametrize("nranks", [1, 3])
@pytest.mark.parametrize("opt,path", [("--q", "/layer3/nope"), ("--k", "/nolayer/k"),
                                      ("--v", "layer3/q/v")])
def test_missing_path(tmp_path, nranks, opt, path):
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    make_input(inp)
    args = dict(zip(PATHS["absolute"][0::2], PATHS["absolute"][1::2]))
    args[opt] = path
    p = run_fa(["-i", inp, "-o", out, "--backend", "cpu"] + [x for kv in args.items() for x in kv],
               nranks=nranks)
    assert p.returncode == 2, p.stderr
    lines = fa_lines(p.stderr)
    assert len(lines) == 1, p.stderr
    assert f"input '{inp}': dataset '{path}' not found; expected" in lines[0], lines
    assert not leftovers(tmp_path, out), os.listdir(tmp_path)


def grouped_input(path, groups):
    """q, k, v in each of the groups (none at the root); returns the last group's tensors."""
    rng = np.random.default_rng(2)
    with h5py.File(path, "w") as f:
        for g in groups:
            q, k, v = random_inputs(rng, B, NQ, NK, H, HKV, D)
            f[f"{g}/q"], f[f"{g}/k"], f[f"{g}/v"] = q, k, v
    return q, k, v


def one_error(p, tmp_path, out):
    assert p.returncode == 2, p.stderr
    lines = fa_lines(p.stderr)
    assert len(lines) == 1, p.stderr
    assert not leftovers(tmp_path, out), os.listdir(tmp_path)
    return lines[0]


@pytest.mark.parametrize("nranks", [1, 3])
def test_missing_lists_datasets_of_that_name(tmp_path, nranks):
    """q, k, v in a group and no --q/--k/--v: the refusal names where the datasets called q are
    and the option that reads them; with many, the first four and how many; the option given
    as the message says works."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = grouped_input(inp, ["layer7"])
    line = one_error(run_fa(["-i", inp, "-o", out, "--causal"], nranks=nranks), tmp_path, out)
    assert f"input '{inp}': dataset 'q' not found; expected" in line, line
    assert line.endswith("; the file has one dataset named q: /layer7/q; give --q /layer7/q"), line
    # the q given: k is missing next, with its own option
    line = one_error(run_fa(["-i", inp, "-o", out, "--q", "/layer7/q"], nranks=nranks), tmp_path, out)
    assert "dataset 'k' not found" in line and line.endswith("give --k /layer7/k"), line
    p = run_fa(["-i", inp, "-o", out, "--causal", "-q", "--q", "/layer7/q", "--k", "/layer7/k",
                "--v", "/layer7/v"], nranks=nranks)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        assert rel(f["o"][...], attention_f64(q, k, v, causal=True)[0]) <= 1e-5
    many = tmp_path / "many.h5"
    grouped_input(many, ["a/layer0", "layer1", "layer2", "layer3", "layer4"])
    o2 = tmp_path / "o2.h5"
    line = one_error(run_fa(["-i", many, "-o", o2], nranks=nranks), tmp_path, o2)
    assert ("the file has 5 datasets named q: /a/layer0/q, /layer1/q, /layer2/q, /layer3/q ...; "
            "give one with --q (e.g. --q /a/layer0/q)") in line, line


@pytest.mark.parametrize("nranks", [1, 3])
@pytest.mark.parametrize("opt,path,hit", [("--q", "/layr7/q", "/layer7/q"),
                                          ("--k", "layer7/kk", "/layer7/k"),
                                          ("--v", "/Layer7/v", "/layer7/v")])
def test_misspelt_path_did_you_mean(tmp_path, nranks, opt, path, hit):
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    grouped_input(inp, ["layer7", "layer8"])
    args = {"--q": "/layer7/q", "--k": "/layer7/k", "--v": "/layer7/v"}
    args[opt] = path
    line = one_error(run_fa(["-i", inp, "-o", out] + [x for kv in args.items() for x in kv],
                            nranks=nranks), tmp_path, out)
    assert f"dataset '{path}' not found; expected" in line, line
    assert line.endswith(f"; did you mean {opt} {hit}?"), line


def test_check_missing_group(tmp_path):
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    make_input(inp)
    assert run_fa(["-i", inp, "-o", out, "-q", "--backend", "cpu"] + PATHS["absolute"]).returncode == 0
    c = run_fa(["check", "--input", inp, "--output", out, "--out-group", "layers/9"])
    assert c.returncode == 2, c.stdout + c.stderr
    lines = fa_lines(c.stderr)
    assert len(lines) == 1 and str(out) in lines[0] and "layers/9/o" in lines[0], c.stderr


def test_resume_with_other_paths_is_refused(tmp_path):
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    q, k, v = make_input(inp)
    other = tmp_path / "other.h5"
    base = ["--chunk", "8", "-q", "--backend", "cpu", "--causal"]
    assert run_fa(["-i", inp, "-o", other] + base + PATHS["absolute"]).returncode == 0
    partial = tmp_path / ".out.h5.partial"
    for extra in (["--q", "q", "--k", "k", "--v", "v"],                     # the root datasets
                  PATHS["absolute"] + ["--out-group", "layers/3"]):         # another out group
        os.rename(other, partial)
        p = run_fa(["-i", inp, "-o", out, "--resume"] + base + extra, nranks=2)
        assert p.returncode == 2, p.stderr
        lines = fa_lines(p.stderr)
        assert len(lines) == 1 and "another job" in lines[0] and str(partial) in lines[0], p.stderr
        assert partial.exists() and not out.exists()
        os.rename(partial, other)
    # the same paths spelt relatively are the same job: the complete partial is taken as it is
    os.rename(other, partial)
    p = run_fa(["-i", inp, "-o", out, "--resume"] + base + PATHS["relative"], nranks=2)
    assert p.returncode == 0, p.stderr
    assert out.exists() and not partial.exists()
    with h5py.File(out, "r") as f:
        assert rel(f["o"][...], attention_f64(q, k, v, causal=True)[0]) <= 1e-5


@pytest.mark.parametrize("args,word", [(["--q", ""], "--q"), (["--v", "/"], "--v"),
                                       (["--k"], "needs a value")])
def test_bad_path_options(tmp_path, args, word):
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    make_input(inp)
    p = run_fa(["-i", inp, "-o", out] + args)
    assert p.returncode == 2 and word in p.stderr, p.stderr
    assert not leftovers(tmp_path, out)
