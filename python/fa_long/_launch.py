"""Running the fa_long program: finding it, options to flags, mpirun, its messages and failures."""
import os
import pathlib
import shutil
import json
import signal
import subprocess
import tempfile
import sys
import threading
import warnings

import numpy as np

JOINERS = {"tile": "x"}      # sequence values: tile=(64, 256) -> 64x256, others with commas


class FaLongError(RuntimeError):
    """fa_long failed. message: its own line (the last 'fa_long: ...' line on stderr that is not
    a warning or progress; else the last line it printed); returncode: the exit status (2 bad
    usage or bad input, 1 an internal failure or a check above tolerance, 75 stopped on a
    signal); stderr, stdout: all it printed; command: the argument list run."""

    def __init__(self, message, returncode, stderr="", stdout="", command=None):
        super().__init__(message)
        self.message, self.returncode = message, returncode
        self.stderr, self.stdout, self.command = stderr, stdout, command

    def __str__(self):
        return f"{self.message} (exit status {self.returncode})"


class FaLongWarning(UserWarning):
    """A warning fa_long printed (its 'fa_long: warning: ...' lines on stderr), raised through
    warnings.warn by run, check and attention; the line is the message."""


class Result:
    """What a successful run or check gives back. output: the output path (a Result can be passed
    where a path is, e.g. to read_output); report: run()'s --report JSON as a dict (the plan,
    each phase's time, the whole job's time line, bytes, TFLOP/s, each rank's figures; None for
    check, or where the run wrote none); summary: fa_long's summary line (None with quiet);
    warnings: its 'fa_long: warning: ...' lines (each also given to warnings.warn as a
    FaLongWarning); stdout, stderr, returncode, command."""

    def __init__(self, output, command, returncode, stdout, stderr, report=None):
        self.output, self.command, self.returncode = output, command, returncode
        self.stdout, self.stderr, self.report = stdout, stderr, report
        lines = fa_lines(stderr)
        self.summary = next((l for l in lines if l.startswith("fa_long: B=")), None)
        self.warnings = warning_lines(stderr)

    def __fspath__(self):
        return os.fspath(self.output)

    def __repr__(self):
        return f"Result(output={os.fspath(self.output)!r}, summary={self.summary!r})"


def fa_lines(stderr):
    """fa_long's own lines on stderr (not mpirun's), progress lines left out, each once."""
    seen = []
    for line in stderr.replace("\r", "\n").splitlines():
        line = line.strip()
        if line.startswith("fa_long:") and not line.startswith("fa_long: chunk ") and line not in seen:
            seen.append(line)
    return seen


def warning_lines(stderr):
    """fa_long's warnings: its 'fa_long: warning: ...' lines, each once."""
    return [l for l in fa_lines(stderr) if l.startswith("fa_long: warning:")]


def _warn(lines):
    """Each line as a FaLongWarning, attributed to the first caller outside this package."""
    level, frame = 1, sys._getframe(0)
    package = __name__.split(".")[0]
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == package:
        frame, level = frame.f_back, level + 1
    for line in lines:
        warnings.warn(line, FaLongWarning, stacklevel=level)


def error_message(stderr, stdout, returncode):
    """The one line that says why fa_long failed (see FaLongError)."""
    errors = [l for l in fa_lines(stderr) if not l.startswith("fa_long: warning:")]
    if errors:
        return errors[-1]
    last = [l.strip() for l in (stdout + "\n" + stderr).splitlines() if l.strip()]
    return last[-1] if last else f"fa_long exited with status {returncode}"


def find_binary():
    """The fa_long program: $FA_LONG, else the checkout's ./fa_long beside python/, else PATH."""
    env = os.environ.get("FA_LONG")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise FileNotFoundError(f"FA_LONG={env} is not an executable file")
        return env
    repo = pathlib.Path(__file__).resolve().parents[2] / "fa_long"
    if repo.is_file() and os.access(repo, os.X_OK):
        return str(repo)
    found = shutil.which("fa_long")
    if found:
        return found
    raise FileNotFoundError(f"no fa_long program: set FA_LONG, build it with make in {repo.parent}, "
                            "or put it on PATH")


def to_flags(options):
    """Keyword options -> fa_long's flags, in order: names with underscores as dashes
    (window_size -> --window-size); True gives the bare flag, False and None nothing; a tuple or
    list is joined with commas (window_size=(256, 0) -> --window-size 256,0; tile with 'x');
    paths and numbers as text (chunk=1024 -> --chunk 1024)."""
    flags = []
    for name, value in options.items():
        if value is None or (isinstance(value, (bool, np.bool_)) and not value):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, (bool, np.bool_)):
            flags.append(flag)
        elif isinstance(value, (tuple, list)):
            flags += [flag, JOINERS.get(name, ",").join(str(x) for x in value)]
        else:
            flags += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return flags


def mpirun_prefix(ranks, mpirun="mpirun", mpirun_args=()):
    """Open MPI's mpirun for ranks ranks: --oversubscribe (more ranks than cores), --bind-to none
    (fa_long's threads are not pinned to one core), --allow-run-as-root when root."""
    cmd = [mpirun, "-np", str(int(ranks)), "--oversubscribe", "--bind-to", "none"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd + [str(a) for a in mpirun_args]


def command_line(input, output, ranks=1, *, mpirun="mpirun", mpirun_args=(), binary=None,
                 **options):
    """The argument list run() starts (mpirun's, then fa_long's); ranks=None: fa_long alone."""
    cmd = [] if ranks is None else mpirun_prefix(ranks, mpirun, mpirun_args)
    return cmd + [binary or find_binary(), "--input", os.fspath(input), "--output",
                  os.fspath(output)] + to_flags(options)


def _pump(stream, keep, echo):
    for line in stream:
        keep.append(line)
        if echo:
            echo.write(line)
            echo.flush()


def _stop(p):
    """SIGTERM to the job's process group (mpirun and its ranks; fa_long stops at the next chunk),
    SIGKILL 30 s later if it is still there."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            pass


def launch(cmd, env=None, timeout=None, echo=False):
    """Run cmd; returns (returncode, stdout, stderr). echo=True passes its output through to this
    process's stdout and stderr as it comes (fa_long's progress lines, every 10 s). The job runs in
    a process group of its own: past timeout seconds (subprocess.TimeoutExpired) or on Ctrl-C
    (KeyboardInterrupt) the whole group is stopped before the exception goes on."""
    e = dict(os.environ)
    e.update({k: str(x) for k, x in (env or {}).items()})
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             errors="replace", env=e, start_new_session=True)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"cannot start {cmd[0]}: {err.strerror}") from err
    out, err = [], []
    pumps = [threading.Thread(target=_pump, args=(s, keep, echo and sink), daemon=True)
             for s, keep, sink in ((p.stdout, out, sys.stdout), (p.stderr, err, sys.stderr))]
    for t in pumps:
        t.start()
    try:
        p.wait(timeout)
    except BaseException:
        _stop(p)
        for t in pumps:
            t.join(5)        # a stray process of its own may still hold a pipe
        _close_pipes(p, pumps)
        raise
    for t in pumps:
        t.join()
    _close_pipes(p, pumps)
    return p.returncode, "".join(out), "".join(err)


def _close_pipes(p, pumps):
    """Closes the job's stdout and stderr pipes whose pump has finished (one still reading, held
    open by a stray process, is left to it)."""
    for stream, t in zip((p.stdout, p.stderr), pumps):
        if not t.is_alive():
            stream.close()


def _result(cmd, output, env, timeout, echo, report=None):
    rc, out, err = launch(cmd, env, timeout, echo)
    _warn(warning_lines(err))
    if rc != 0:
        raise FaLongError(error_message(err, out, rc), rc, err, out, cmd)
    return Result(output, cmd, rc, out, err, _read_report(report) if report else None)


def _read_report(path):
    """The run's --report JSON; None where the run wrote none (an output already complete, which
    --resume leaves as it is)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return json.loads(text) if text.strip() else None


def run(input, output, ranks=1, *, env=None, timeout=None, echo=False, mpirun="mpirun",
        mpirun_args=(), binary=None, **options):
    """Run fa_long on input (an input file, e.g. from write_inputs) into output, under mpirun
    with ranks ranks; returns a Result (its output is the path; summary, warnings, stderr).

    options become fa_long's flags (to_flags): causal=True -> --causal, lse=True -> --lse,
    chunk=1024 -> --chunk 1024, window_size=(255, 0) -> --window-size 255,0, q="layer3/q" ->
    --q layer3/q, force=True -> --force; False and None are left out. See fa_long --help.

    The launch: mpirun -np RANKS --oversubscribe --bind-to none [--allow-run-as-root]
    [mpirun_args] FA_LONG ... (Open MPI's mpirun; ranks=None runs fa_long alone, without mpirun);
    the program is binary, else $FA_LONG, else the checkout's ./fa_long, else fa_long on PATH.
    env: variables added to the environment (e.g. {"OMP_NUM_THREADS": 4}); timeout: seconds;
    echo: pass fa_long's output through while it runs.

    The Result's report is the run's --report JSON: report="run.json" keeps it there; without it
    the run writes one beside the output (rank 0 writes it, on whichever node it runs: the
    output's folder is the place every rank sees) and it is read and removed.

    Raises FaLongError (message: fa_long's own line, returncode: its exit status) on failure.
    """
    tmp = None
    if options.get("report") in (None, False):
        fd, tmp = tempfile.mkstemp(prefix=".fa_long_report_", suffix=".json",
                                   dir=os.path.dirname(os.path.abspath(os.fspath(output))))
        os.close(fd)                    # empty until fa_long writes it (empty: it wrote none)
        options = dict(options, report=tmp)
    try:
        cmd = command_line(input, output, ranks, mpirun=mpirun, mpirun_args=mpirun_args,
                           binary=binary, **options)
        return _result(cmd, output, env, timeout, echo, report=options["report"])
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def check(output, input=None, *, env=None, timeout=None, echo=False, binary=None, **options):
    """fa_long check: recompute sampled rows of output in fp64 (rows=16 by default; rows="all")
    and compare; input defaults to the one the output records. Returns a Result whose stdout
    holds the errors and 'check: PASS'; raises FaLongError (exit status 1) above tolerance."""
    cmd = [binary or find_binary(), "check", "--output", os.fspath(output)]
    cmd += (["--input", os.fspath(input)] if input is not None else []) + to_flags(options)
    return _result(cmd, output, env, timeout, echo)
