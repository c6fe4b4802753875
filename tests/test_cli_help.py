"""Help and messages match the program (issue #19, item 8): --help lists every command; a
misspelt option or command gets one line with a suggestion ("did you mean"), exit status 2 and no
output file; `check --output` alone reads the input the output records; --verbose prints every
rank's times as one '#'-headed table."""
import h5py
import pytest

from conftest import run_fa


def one_line(p):
    lines = [l for l in p.stderr.splitlines() if l.startswith("fa_long:")]
    assert len(lines) == 1, f"expected one fa_long line, got:\n{p.stderr}"
    return lines[0]


def assert_usage_error(p, expected, tmp_path):
    assert p.returncode == 2, p.stderr
    assert one_line(p) == expected
    assert p.stdout == "", p.stdout
    assert not list(tmp_path.iterdir()), "nothing may be written"


def small_job(tmp_path, nranks=1, extra=()):
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    run_fa(["gen", "--output", inp, "-n", "96", "--heads", "2", "-d", "16"], check=True)
    p = run_fa(["--input", inp, "--output", out, "--causal"] + list(extra), nranks=nranks,
               check=True)
    return inp, out, p


def test_help_lists_tune():
    p = run_fa(["--help"])
    assert p.returncode == 0, p.stderr
    usage = [l for l in p.stdout.splitlines() if l.lstrip().startswith(("usage:", "fa_long "))]
    assert any(l.split()[-3:] == ["(fa_long", "tune", "--help)"] for l in usage), p.stdout
    for cmd in ("gen", "check", "tune"):
        assert sum(f"fa_long {cmd} " in l for l in usage) == 1, (cmd, p.stdout)
    t = run_fa(["tune", "--help"])
    assert t.returncode == 0 and t.stdout.startswith("usage: fa_long tune"), t.stdout + t.stderr


def test_help_says_what_verbose_prints():
    p = run_fa(["--help"])
    assert "per-rank times" not in p.stdout
    assert "one row per rank" in p.stdout and "'#'-headed table" in p.stdout


@pytest.mark.parametrize("nranks", [1, 2])
@pytest.mark.parametrize("args,word,hint", [
    (["--casual"], "--casual", "--causal"),
    (["--chnk", "64"], "--chnk", "--chunk"),
    (["--outptu", "x.h5"], "--outptu", "--output"),
    (["--chnk=64"], "--chnk=64", "--chunk"),
    (["--tun"], "--tun", "--tune"),                 # ambiguous abbreviation (tune, tune-cache)
])
def test_run_option_did_you_mean(tmp_path, nranks, args, word, hint):
    out = tmp_path / "out.h5"
    p = run_fa(["--input", tmp_path / "in.h5", "--output", out] + args, nranks=nranks)
    assert_usage_error(p, f"fa_long: unknown option '{word}' (did you mean {hint}? see --help)",
                       tmp_path)
    # far from every option: today's message, no guess
    p = run_fa(["--input", tmp_path / "in.h5", "--output", out, "--zebra"], nranks=nranks)
    assert_usage_error(p, "fa_long: unknown option '--zebra' (see --help)", tmp_path)


def test_gen_option_did_you_mean(tmp_path):
    p = run_fa(["gen", "--output", tmp_path / "in.h5", "--seeed", "3"])
    assert_usage_error(p, "fa_long: gen: unknown option '--seeed' (did you mean --seed? see "
                          "fa_long gen --help)", tmp_path)
    p = run_fa(["gen", "--output", tmp_path / "in.h5", "--kv-haeds", "2"], nranks=2)
    assert_usage_error(p, "fa_long: gen: unknown option '--kv-haeds' (did you mean --kv-heads? "
                          "see fa_long gen --help)", tmp_path)


def test_check_option_did_you_mean(tmp_path):
    p = run_fa(["check", "--inptu", tmp_path / "in.h5", "--output", tmp_path / "out.h5"])
    assert_usage_error(p, "fa_long: check: unknown option '--inptu' (did you mean --input? see "
                          "fa_long check --help)", tmp_path)
    p = run_fa(["check", "--output", tmp_path / "out.h5", "--rows"])
    assert_usage_error(p, "fa_long: check: option --rows needs a value (see fa_long check "
                          "--help)", tmp_path)


def test_tune_option_did_you_mean(tmp_path):
    p = run_fa(["tune", "--casual", "--predict", "--tune-cache", tmp_path / "t.txt"])
    assert_usage_error(p, "fa_long: tune: unknown option '--casual' (did you mean --causal? see "
                          "fa_long tune --help)", tmp_path)


@pytest.mark.parametrize("nranks", [1, 2])
@pytest.mark.parametrize("word,hint", [("tun", "tune"), ("chek", "check"), ("gne", "gen")])
def test_command_did_you_mean(tmp_path, nranks, word, hint):
    p = run_fa([word, "-n", "64", "--output", tmp_path / "x.h5"], nranks=nranks)
    assert_usage_error(p, f"fa_long: unknown command '{word}' (did you mean {hint}? commands: "
                          "gen, check, tune; or run options, see --help)", tmp_path)
    # a stray word close to no command stays the run parser's unexpected argument
    p = run_fa(["input.h5", "--output", tmp_path / "x.h5"], nranks=nranks)
    assert_usage_error(p, "fa_long: unexpected argument 'input.h5' (see --help)", tmp_path)


def test_check_output_alone(tmp_path):
    """The job is run with getopt_long's unambiguous abbreviations (--inp, --outp, --caus): they
    stay options, not typos; without --verbose there is no per-rank table."""
    inp, out = tmp_path / "in.h5", tmp_path / "out.h5"
    run_fa(["gen", "--output", inp, "-n", "96", "--heads", "2", "-d", "16"], check=True)
    p = run_fa(["--inp", inp, "--outp", out, "--caus"], nranks=2, check=True)
    assert "# rank" not in p.stderr, p.stderr
    with h5py.File(out) as f:
        assert f.attrs["causal"] == 1
    p = run_fa(["check", "--output", out, "--rows", "8"])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == f"check: input {inp}, from {out}'s attribute 'input' (no --input given)"
    assert lines[-1].startswith("check: PASS"), p.stdout


def test_check_output_alone_without_input_attribute(tmp_path):
    inp, out, _ = small_job(tmp_path)
    with h5py.File(out, "a") as f:
        del f.attrs["input"]
    before = sorted(tmp_path.iterdir())
    p = run_fa(["check", "--output", out], nranks=2)
    assert p.returncode == 2, p.stderr
    assert one_line(p) == (f"fa_long: check: no --input given, and {out} records no input (root "
                           "attribute 'input', written by fa_long); give --input IN.h5")
    assert p.stdout == ""
    assert sorted(tmp_path.iterdir()) == before
    # neither --input nor --output: today's message
    p = run_fa(["check", "--rows", "4"])
    assert p.returncode == 2 and p.stdout == ""
    assert one_line(p) == "fa_long: check: give --input IN.h5 and --output OUT.h5"


def test_verbose_table_one_row_per_rank(tmp_path):
    _, _, p = small_job(tmp_path, nranks=3, extra=["--verbose"])
    lines = p.stderr.splitlines()
    heads = [i for i, l in enumerate(lines) if l.startswith("# rank")]
    assert len(heads) == 1, p.stderr
    assert lines[heads[0]].split() == ["#", "rank", "read_s", "compute_s", "merge_wait_s", "write_s"]
    rows = [l.split() for l in lines[heads[0] + 1:heads[0] + 4]]
    assert [r[0] for r in rows] == ["0", "1", "2"], p.stderr
    assert all(len(r) == 5 and all(float(x) >= 0 for x in r[1:]) for r in rows), p.stderr
    assert not any(l.split()[:1] == ["3"] for l in lines[heads[0] + 4:]), p.stderr


def test_run_help_prints_the_run_options():
    """`fa_long run --help` prints the run options under a `fa_long run` usage line, not the
    top-level help with its commands (issue 27); `fa_long --help` names `run` as optional."""
    p = run_fa(["run", "--help"])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "usage: fa_long run --input IN.h5 --output OUT.h5 [options]", p.stdout
    commands = [l for l in lines if l.split()[:2] in (["fa_long", "gen"], ["fa_long", "check"],
                                                      ["fa_long", "tune"])]
    assert not commands, p.stdout
    for opt in ("--causal", "--window-size", "--no-documents", "--merges-in-flight", "--resume"):
        assert f"  {opt}" in p.stdout, opt
    top = run_fa(["--help"])
    assert top.stdout.splitlines()[0] == "usage: fa_long [run] --input IN.h5 --output OUT.h5 [options]"
    # the same options either way
    assert top.stdout.split("\n\n", 1)[1] == p.stdout.split("\n\n", 1)[1]
