"""The fp64 reference of the masks (issue #18), written from the definitions and not from the
engines' code; shared by tests/test_masks.py (pytest, CPU engine) and tests/gpu/masks.py (CUDA
engine, no pytest). A query row i of document d (rows [q0, q1), keys [k0, k1)) sits at key
position p = i + k1 - q1 and sees the keys j of its document with p - L <= j <= p + R (-1:
unbounded); the score s = scale q.k becomes C tanh(s / C) (softcap), then s - slope_h |p - j|
(ALiBi)."""
import h5py
import numpy as np

from reference import write_inputs


def doc_of(cu, i):
    """(start, end) index of the document holding position i of offsets cu, by a linear scan."""
    for d in range(len(cu) - 1):
        if cu[d] <= i < cu[d + 1]:
            return d
    raise AssertionError("no document")


def visible(Nq, Nk, left, right, cu_q=None, cu_k=None):
    """[Nq, Nk] bool visibility and [Nq] key positions p, from the definition."""
    W = np.zeros((Nq, Nk), dtype=bool)
    pos = np.zeros(Nq, dtype=np.int64)
    for i in range(Nq):
        if cu_q is None:
            q0, q1, k0, k1 = 0, Nq, 0, Nk
        else:
            d = doc_of(cu_q, i)
            q0, q1, k0, k1 = cu_q[d], cu_q[d + 1], cu_k[d], cu_k[d + 1]
        p = i + k1 - q1
        pos[i] = p
        for j in range(k0, k1):
            W[i, j] = (left < 0 or j >= p - left) and (right < 0 or j <= p + right)
    return W, pos


def std_slopes(H):
    """The standard ALiBi slopes (Press et al.), written out: 2^(-8(h+1)/n) for the power of two
    n <= H, then every other slope of 2n."""
    n = 1 << (H.bit_length() - 1)
    base = [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]
    extra = [2.0 ** (-8.0 * (h + 1) / (2 * n)) for h in range(2 * n)][0::2][: H - n]
    return np.array(base + extra)


def masked_f64(q, k, v, left=-1, right=-1, cu_q=None, cu_k=None, softcap=0.0, slopes=None,
               scale=None):
    """o [B,Nq,H,D], lse [B,H,Nq], kappa. cu_q/cu_k: None, [ndocs+1] or [B, ndocs+1]."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    B, Nq, H, D = q.shape
    Nk, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    o = np.zeros((B, Nq, H, D))
    lse = np.full((B, H, Nq), -np.inf)
    kappa = 0.0
    for b in range(B):
        cq = None if cu_q is None else np.asarray(cu_q)[b] if np.ndim(cu_q) == 2 else np.asarray(cu_q)
        ck = None if cu_k is None else np.asarray(cu_k)[b] if np.ndim(cu_k) == 2 else np.asarray(cu_k)
        W, pos = visible(Nq, Nk, left, right, cq, ck)
        for h in range(H):
            s = q[b, :, h, :] @ k[b, :, h // G, :].T * scale
            if softcap > 0:
                s = softcap * np.tanh(s / softcap)
            if slopes is not None:
                s = s - slopes[h] * np.abs(pos[:, None] - np.arange(Nk)[None, :])
            s = np.where(W, s, -np.inf)
            m = s.max(axis=1)
            seen = np.isfinite(m)
            ms = np.where(seen, m, 0.0)
            p = np.exp(s - ms[:, None])
            l = p.sum(axis=1)
            o[b, :, h, :] = np.where(seen[:, None], (p @ v[b, :, h // G, :]) / np.where(l > 0, l, 1)[:, None], 0)
            lse[b, h, :] = np.where(seen, ms + np.log(np.where(l > 0, l, 1)), -np.inf)
            heavy = W & (s >= ms[:, None] - 60)
            if heavy.any():
                kappa = max(kappa, float(np.abs(s[heavy]).max()))
    if softcap > 0:
        kappa += 0.45 * softcap
    return o, lse, kappa


def write_masked(path, q, k, v, dtype="float32", **tables):
    write_inputs(path, q, k, v, dtype)
    with h5py.File(path, "a") as f:
        for name, x in tables.items():
            f.create_dataset(name, data=x)


