"""`fa_long gen`: a bad option value gets one line naming the option (not the value twice) and the
range it accepts, exit status 2, and no file."""
import pytest

from conftest import run_fa


@pytest.mark.parametrize("args,option,accepted", [
    (["-d", "513"], "-d/--dim", "[1, 256]"),
    (["--dim=300"], "-d/--dim", "[1, 256]"),
    (["-d", "0"], "-d/--dim", "[1, 256]"),
    (["-n", "0"], "-n/--n", ">= 1"),
    (["-n", "1Q"], "-n/--n", ">= 1"),
    (["-n", "-5"], "-n/--n", ">= 1"),
    (["--nk", "x"], "--nk", ">= 1"),
    (["-b", "0"], "-b/--batch", "[1, "),
    (["--heads", "0"], "--heads", "[1, "),
    (["--magnitude", "nan"], "--magnitude", "finite number > 0"),
    (["--magnitude", "-1"], "--magnitude", "finite number > 0"),
    (["--seed", "abc"], "--seed", "integer"),
    (["--dtype", "int8"], "--dtype", "float32, float16 or bfloat16"),
])
def test_gen_bad_values(tmp_path, args, option, accepted):
    out = tmp_path / "in.h5"
    p = run_fa(["gen", "--output", out] + args)
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.startswith("fa_long:")]
    assert len(lines) == 1, p.stderr
    value = args[-1].split("=")[-1]
    assert f"option {option}: '{value}'" in lines[0], lines[0]
    assert accepted in lines[0], lines[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_gen_stray_argument(tmp_path):
    p = run_fa(["gen", "--output", tmp_path / "in.h5", "-n", "8", "extra"])
    assert p.returncode == 2 and "unexpected argument 'extra'" in p.stderr, p.stderr
    assert not list(tmp_path.iterdir())
