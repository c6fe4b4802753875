"""A child process for the out-of-memory tests of the library (tests/test_library.py,
tests/test_python_module.py): the library called in this process under an address-space limit
(RLIMIT_AS), set after a first call (MPI up, the OpenMP threads made) so that the limit meets the
job's own buffers. The big job's inputs are zeros never written (address space, not memory).
Prints one JSON line; the process must live through every call.

  oom_child.py ctypes LIB   fa_attention through ctypes, under limits rising in steps (of half a
                            query chunk from half the key shard; then a Taylor job, whose
                            engine needs most) to just below what the job needs: each call
                            returns FA_ENOMEM (its line, its VmSize growth); then the job
                            without a limit runs
  oom_child.py module       fa_long.attention with the keys' copy out of reach

Both end with the limit lifted and a small random call, its largest error against the fp64
reference in the JSON ("err")."""
import ctypes
import json
import pathlib
import resource
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "tests")]
from reference import attention_f64, random_inputs  # noqa: E402

MiB = 1 << 20
# the big job: a key shard S = Nk * Hkv * D * 4 = 128 MiB (k and v each), a query chunk (the
# whole Nq) X = Nq * H * D * 4 = 16 MiB; window 0,0: each query sees one key (runs fast)
B, NQ, NK, H, HKV, D = 1, 8192, 1 << 19, 8, 1, 64
S, X = NK * HKV * D * 4, NQ * H * D * 4


def plain_malloc():
    """glibc maps every allocation of 1 MiB and more on its own and gives it back when freed,
    with one arena (mallopt): VmSize then says what a call still holds, and each limit meets the
    same allocation on every run."""
    libc = ctypes.CDLL(None)
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
    for opt, val in ((M_MMAP_THRESHOLD, MiB), (M_TRIM_THRESHOLD, MiB), (M_ARENA_MAX, 1)):
        assert libc.mallopt(opt, val) == 1, opt


def vm_size():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


def limit(margin):
    """The address space limited to what is mapped now plus margin bytes (None: lifted)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard if margin is None else vm_size() + margin, hard))


def small():
    q, k, v = random_inputs(np.random.default_rng(7), 1, 40, 56, 4, 2, 16)
    return [np.ascontiguousarray(x, dtype=np.float32) for x in (q, k, v)]


def big():
    return (np.zeros((B, NQ, H, D), np.float32), np.zeros((B, NK, HKV, D), np.float32),
            np.zeros((B, NK, HKV, D), np.float32))


def err_against_reference(o, q, k, v):
    ref = attention_f64(q, k, v)[0]
    return float(np.abs(o - ref).max())


def with_ctypes(path):
    from fa_long._inproc import Desc
    lib = ctypes.CDLL(path)
    lib.fa_long_error.restype = ctypes.c_char_p
    lib.fa_attention.argtypes = [ctypes.POINTER(Desc)] + [ctypes.c_void_p] * 5

    def call(q, k, v, o=None, lse=None, **kw):
        d = Desc()
        lib.fa_attn_desc_init(ctypes.byref(d))
        d.batch, d.nq, d.heads, d.head_dim = q.shape[0], q.shape[1], q.shape[2], q.shape[3]
        d.nk, d.kv_heads, d.threads = k.shape[1], k.shape[2], 2
        for name, val in kw.items():
            setattr(d, name, val)
        o = np.empty(q.shape, np.float32) if o is None else o
        lse = np.empty((q.shape[0], q.shape[2], q.shape[1]), np.float32) if lse is None else lse
        p = [x.ctypes.data_as(ctypes.c_void_p) for x in (q, k, v, o, lse)]
        rc = lib.fa_attention(ctypes.byref(d), *p)
        return rc, lib.fa_long_error().decode(), o, lse

    def sweep(inputs, start, step, stop, **kw):
        """Calls under limits start, start + step, ... below stop (each below the job's need;
        a call that runs anyway ends the sweep), then once without a limit ("ran")."""
        calls, ran = [], None
        o = np.full(inputs[0].shape, np.nan, np.float32)
        lse = np.full((inputs[0].shape[0], inputs[0].shape[2], inputs[0].shape[1]), np.nan, np.float32)
        for margin in range(start, stop, step):
            limit(margin)
            before = vm_size()
            rc, line, o, lse = call(*inputs, o, lse, **kw)
            grew = vm_size() - before
            limit(None)
            calls.append({"margin": margin, "rc": rc, "line": line, "grew": grew})
            if rc != 4:
                break
        rc, line, o, lse = call(*inputs, o, lse, **kw)
        return calls, {"rc": rc, "line": line, "zero": bool((o == 0).all() and (lse == 0).all())}

    q, k, v = small()
    first = call(q, k, v)[0]
    # Every limit stays below what the job needs: OpenBLAS, taking its buffers (128 MiB) when a
    # thread first multiplies, retries a failed malloc forever, so nothing computes under one.
    # The exact job needs 2 S (keys, values), 4 X (two query and two output chunks), 2.06 X
    # (the engine's two chunks of merge records: X (D + 2) / D each) and little else
    exact = sweep(big(), S // 2, X // 2, 2 * S + 6 * X, window_left=0, window_right=0, chunk=NQ)
    # Taylor's engine holds 32 tiles' states of [Hkv, D, D] floats twice (16 MiB each here) and
    # a thread's scratch (1.6 MiB), about 37.7 MiB in all; the pipeline's buffers are well
    # under 1 MiB: the limits meet the engine's allocations
    tq = np.zeros((1, 64, 8, 128), np.float32)
    warm = call(tq, tq, tq, mode=1)[0]
    taylor = sweep((tq, tq, tq), 4 * MiB, 4 * MiB, 33 * MiB, mode=1)
    rc, line, o, _ = call(q, k, v)
    return {"first": first, "exact": exact, "warm": warm, "taylor": taylor, "last": rc, "last_line": line,
            "err": err_against_reference(o, q, k, v)}


def with_module():
    import fa_long
    q, k, v = small()
    fa_long.attention(q, k, v, layout="bnhd")
    bq, bk, bv = big()
    limit(S + 3 * X)         # o (X) and the key shard (S) fit, the value shard does not
    try:
        fa_long.attention(bq, bk, bv, layout="bnhd")
        raised = None
    except MemoryError as e:
        raised = {"type": type(e).__name__, "falongerror": isinstance(e, fa_long.FaLongError),
                  "returncode": e.returncode, "message": e.message}
    limit(None)
    o = fa_long.attention(q, k, v, layout="bnhd")
    return {"raised": raised, "err": err_against_reference(o, q, k, v)}


if __name__ == "__main__":
    plain_malloc()
    out = with_ctypes(sys.argv[2]) if sys.argv[1] == "ctypes" else with_module()
    print(json.dumps(out))
