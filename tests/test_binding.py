"""CPU binding as users start fa_long: `mpirun -np 1` and `-np 2` WITHOUT --bind-to none (Open MPI
then binds each of 1 or 2 ranks to one core), an explicit binding (--bind-to core, the MCA
variable, taskset, srun's), and what the report says about each rank's threads and CPUs.

Unlike the rest of the suite (conftest's mpirun_cmd passes --bind-to none), these jobs leave the
launcher's binding as it is. Every expectation comes from the masks the launcher gives a probe
(`mpirun -np N grep Cpus_allowed_list /proc/self/status`), so the tests hold on any core count."""
import json
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from conftest import FA_LONG
from reference import attention_f64, random_inputs, rel_err, write_inputs

WIDENED = "node share (launcher's default binding widened)"
NCPU = len(os.sched_getaffinity(0))
MCA = ["--mca", "btl", "self,vader,tcp", "--mca", "btl_vader_single_copy_mechanism", "none"]

pytestmark = pytest.mark.skipif(NCPU < 2, reason="needs 2 CPUs: one core is every rank's share")


def mpirun(nranks, binding=()):
    """mpirun with the launcher's own binding unless `binding` says otherwise (no --bind-to none,
    no --oversubscribe, which changes Open MPI's default)."""
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return ["mpirun", "-np", str(nranks)] + root + MCA + list(binding)


def env_without_threads(**extra):
    e = {k: v for k, v in os.environ.items()
         if k != "OMP_NUM_THREADS" and not k.startswith(("OMPI_MCA_hwloc", "OMPI_MCA_rmaps", "SLURM_CPU"))}
    e.update(extra)
    return e


def launcher_masks(nranks, binding=(), env=None):
    """CPUs in each rank's affinity mask as the launcher starts it."""
    p = subprocess.run(mpirun(nranks, binding) + ["grep", "Cpus_allowed_list", "/proc/self/status"],
                       capture_output=True, text=True, timeout=60, env=env or env_without_threads())
    assert p.returncode == 0, p.stderr
    sizes = []
    for line in p.stdout.splitlines():
        n = 0
        for part in line.split(":")[1].strip().split(","):
            a, _, b = part.partition("-")
            n += int(b or a) - int(a) + 1
        sizes.append(n)
    assert len(sizes) == nranks, p.stdout
    return sizes


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Runs one small job with a launch prefix; returns (report, stderr, output o)."""
    d = tmp_path_factory.mktemp("binding")
    rng = np.random.default_rng()
    q, k, v = random_inputs(rng, 1, 256, 256, 4, 2, 32)
    inp = d / "in.h5"
    write_inputs(inp, q, k, v)
    ref = attention_f64(q, k, v, causal=True)[0]

    def run(prefix, extra=(), env=None):
        out, rep = d / "out.h5", d / "r.json"
        cmd = list(prefix) + [str(FA_LONG), "-i", str(inp), "-o", str(out), "-f", "--causal",
                              "--report", str(rep)] + list(extra)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                           env=env or env_without_threads())
        assert p.returncode == 0, p.stderr
        with h5py.File(out, "r") as f:
            assert rel_err(f["o"][...], ref) < 1e-5
        return json.loads(rep.read_text()), p.stderr
    return run


def confines(err):
    return [l for l in err.splitlines() if "confines" in l]


def test_np1_default_binding_widened(job):
    """mpirun -np 1 binds the rank to one core by default: fa_long takes the node back (its whole
    share) and runs as many threads as when started alone; nothing to warn about."""
    mask = launcher_masks(1)[0]
    if mask >= NCPU:
        pytest.skip(f"this mpirun does not bind by default ({mask} of {NCPU} CPUs)")
    r, err = job(mpirun(1))
    c, me = r["config"], r["per_rank"][0]
    assert (c["threads_per_rank"], c["threads_from"], c["cpus_per_rank"]) == (NCPU, WIDENED, NCPU)
    assert (me["threads"], me["cpus"], me["cpu_share"], me["threads_from"]) == (NCPU, NCPU, NCPU, WIDENED)
    assert "widened" in c["binding"] and r["plan"]["threads"]["value"] == NCPU
    assert not confines(err), err
    # the same job started directly: the same threads, the share's plain reason
    d, _ = job([])
    assert (d["config"]["threads_per_rank"], d["config"]["threads_from"]) == (NCPU, "node share")
    # --threads keeps its count, on the widened mask
    r, err = job(mpirun(1), ["--threads", "1"])
    me = r["per_rank"][0]
    assert (me["threads"], me["cpus"], me["threads_from"]) == (1, NCPU, "--threads")


@pytest.mark.parametrize("binding", [(), ("--bind-to", "core")], ids=["default", "bind-to-core"])
def test_np2(job, binding):
    """mpirun -np 2, default binding or --bind-to core: each rank's share is half the node. On 2
    CPUs that is the core each is bound to, and the report says so (1 thread, 1 CPU, node share);
    with more CPUs a default binding is widened to disjoint halves and an explicit one is kept,
    with one line saying what it costs."""
    masks = launcher_masks(2, binding)
    share = NCPU // 2
    r, err = job(mpirun(2, binding))
    assert len(r["per_rank"]) == 2
    for rank, mask in enumerate(masks):
        me = r["per_rank"][rank]
        assert me["cpu_share"] == share
        if mask >= share:            # bound to its share: kept as it is
            assert (me["threads"], me["cpus"], me["threads_from"]) == (share, mask, "node share"), me
        elif binding:                 # asked for: kept, on fewer CPUs than its share
            assert (me["threads"], me["cpus"], me["threads_from"]) == (mask, mask, "explicit binding"), me
        else:                         # the launcher's default: its own half of the node
            assert (me["threads"], me["cpus"], me["threads_from"]) == (share, share, WIDENED), me
    assert len(confines(err)) == (1 if binding and min(masks) < share else 0), err
    if binding:
        assert r["config"]["binding"] == "mpirun --bind-to core"


@pytest.mark.parametrize("how", ["option", "mca-env"])
def test_np1_explicit_binding_kept(job, how):
    """--bind-to core (or hwloc_base_binding_policy=core in the environment) was asked for: it
    stays, the rank runs on its one core, and rank 0 says once what it costs and how to undo it."""
    binding = ("--bind-to", "core") if how == "option" else ()
    env = env_without_threads(**({} if binding else {"OMPI_MCA_hwloc_base_binding_policy": "core"}))
    mask = launcher_masks(1, binding, env)[0]
    if mask >= NCPU:
        pytest.skip(f"--bind-to core gives {mask} of {NCPU} CPUs here")
    r, err = job(mpirun(1, binding), env=env)
    c, me = r["config"], r["per_rank"][0]
    assert (me["threads"], me["cpus"], me["cpu_share"], me["threads_from"]) == (mask, mask, NCPU, "explicit binding")
    assert (c["threads_per_rank"], c["threads_from"], c["binding"]) == (mask, "explicit binding", "mpirun --bind-to core")
    lines = confines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("fa_long: ") and "mpirun --bind-to core" in lines[0]
    assert f"of the {NCPU}" in lines[0] and "--bind-to none" in lines[0], lines[0]


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset not installed")
@pytest.mark.parametrize("launcher", ["taskset", "srun"])
def test_affinity_set_before_start_kept(job, launcher):
    """A process started on one CPU by taskset (or by srun --cpu-bind, as its variables say) keeps
    it: the report says "explicit binding" and one line names what set it and the way out."""
    env = env_without_threads(**({"SLURM_CPU_BIND_TYPE": "mask_cpu:", "SLURM_CPU_BIND": "quiet,mask_cpu:0x1"}
                                 if launcher == "srun" else {}))
    cpu = sorted(os.sched_getaffinity(0))[0]
    r, err = job(["taskset", "-c", str(cpu)], env=env)
    me = r["per_rank"][0]
    assert (me["threads"], me["cpus"], me["cpu_share"], me["threads_from"]) == (1, 1, NCPU, "explicit binding")
    lines = confines(err)
    assert len(lines) == 1, err
    want = "srun --cpu-bind=quiet,mask_cpu:0x1" if launcher == "srun" else "taskset"
    assert want in lines[0] and want in r["config"]["binding"], (lines, r["config"])
