"""fp64 reference and file helpers for the end-to-end tests (numpy + h5py)."""
import h5py
import numpy as np


def attention_f64(q, k, v, causal=False, scale=None):
    """Exact attention in float64. q [B,Nq,H,D], k/v [B,Nk,Hkv,D] -> o [B,Nq,H,D], lse [B,H,Nq].
    Causal is aligned bottom-right: query i sees key j iff j <= i + Nk - Nq."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    B, Nq, H, D = q.shape
    Nk, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    o = np.zeros((B, Nq, H, D))
    lse = np.full((B, H, Nq), -np.inf)
    mask = np.arange(Nk)[None, :] <= (np.arange(Nq)[:, None] + Nk - Nq)
    for b in range(B):
        for h in range(H):
            s = q[b, :, h, :] @ k[b, :, h // G, :].T * scale
            if causal:
                s = np.where(mask, s, -np.inf)
            m = s.max(axis=1, keepdims=True)
            seen = np.isfinite(m[:, 0])
            m = np.where(np.isfinite(m), m, 0.0)
            p = np.exp(s - m)
            l = p.sum(axis=1, keepdims=True)
            o[b, :, h, :] = np.where(seen[:, None], (p @ v[b, :, h // G, :]) / np.where(l > 0, l, 1), 0.0)
            lse[b, h, :] = np.where(seen, m[:, 0] + np.log(np.where(l[:, 0] > 0, l[:, 0], 1)), -np.inf)
    return o, lse


def order_bound(q, k, v, causal=False, c=8.0, rows=None):
    """Per element, how far two fp32 runs of the same exact attention may lie apart when they
    only add the same terms in another order (other rank counts, chunks or shards). Term j of a
    row is p_j = exp(s_j - m) with s_j = scale q.k_j: fp32 gets s_j within ~u scale sum|q_d k_jd|,
    s_j - m and a merge's rescale exp(m_r - m) within ~u |s_j - m|, exp within ~u; so p_j moves by
    ~u w_j p_j with w_j = 1 + |s_j - m| + scale sum_d |q_d k_jd|. Then o = sum p_j v_j / l moves
    by ~c u (sum_j w_j p_j |v_j| + |o| sum_j w_j p_j) / l and lse = m + log l by
    ~c u (|lse| + sum_j w_j p_j / l) (fp64 sums). Returns (o bound [B,Nq,H,D] or [B,len(rows),H,D],
    lse bound [B,H,Nq or len(rows)]); rows that see no key get 0 (both runs must give 0 / -inf)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    B, Nq, H, D = q.shape
    Nk, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    scale = 1.0 / np.sqrt(D)
    rows = np.arange(Nq) if rows is None else np.asarray(rows)
    u = 2.0 ** -24
    ob = np.zeros((B, len(rows), H, D))
    lb = np.zeros((B, H, len(rows)))
    for b in range(B):
        for h in range(H):
            kk, vv = k[b, :, h // G, :], v[b, :, h // G, :]
            for r0 in range(0, len(rows), 2048):
                rr = rows[r0:r0 + 2048]
                qq = q[b, rr, h, :]
                s = qq @ kk.T * scale
                seen = np.ones(s.shape, dtype=bool)
                if causal:
                    seen = np.arange(Nk)[None, :] <= (rr[:, None] + Nk - Nq)
                s = np.where(seen, s, -np.inf)
                m = s.max(axis=1, keepdims=True)
                live = np.isfinite(m[:, 0])
                m = np.where(np.isfinite(m), m, 0.0)
                p = np.where(seen, np.exp(s - m), 0.0)
                l = np.maximum(p.sum(axis=1), 1e-300)
                w = 1.0 + np.abs(np.where(seen, s - m, 0.0)) + scale * (np.abs(qq) @ np.abs(kk).T)
                wp = w * p
                o = (p @ vv) / l[:, None]
                a = (wp @ np.abs(vv) + np.abs(o) * wp.sum(axis=1)[:, None]) / l[:, None]
                ob[b, r0:r0 + len(rr), h, :] = np.where(live[:, None], c * u * a, 0.0)
                lse = m[:, 0] + np.log(l)
                lb[b, h, r0:r0 + len(rr)] = np.where(live, c * u * (np.abs(lse) + wp.sum(axis=1) / l), 0.0)
    return ob, lb


def assert_reordered(got, ref, bound, what="o"):
    """got and ref (two fp32 runs) agree within order_bound's per-element bound."""
    diff = np.abs(np.asarray(got, dtype=np.float64) - ref)
    same_inf = np.isneginf(got) & np.isneginf(ref)
    diff = np.where(same_inf, 0.0, diff)
    bad = diff > bound
    assert not bad.any(), (f"{what}: {bad.sum()} elements apart by more than the reordering "
                           f"bound; worst ratio {np.max(diff / np.maximum(bound, 1e-300)):.2f}")
    return float(np.max(np.where(bound > 0, diff / np.maximum(bound, 1e-300), 0.0)))


def bf16_type():
    """The HDF5 bfloat16 type of fa_long's format (sign 15, exponent 7..14 bias 127, mantissa 0..6)."""
    t = h5py.h5t.IEEE_F32LE.copy()
    t.set_fields(15, 7, 8, 0, 7)
    t.set_offset(0)
    t.set_precision(16)
    t.set_size(2)
    t.set_ebias(127)
    return t


def to_bf16_bits(x):
    """float32 array -> uint16 bfloat16 bit patterns, round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u >> 16) & 1) + 0x7FFF
    return ((u + r) >> 16).astype(np.uint16)


def from_bf16_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def write_inputs(path, q, k, v, dtype="float32"):
    """Writes q/k/v as fa_long reads them; dtype float32, float16, float64 or bfloat16."""
    with h5py.File(path, "w") as f:
        for name, x in (("q", q), ("k", k), ("v", v)):
            if dtype == "bfloat16":
                bits = to_bf16_bits(x)
                sid = h5py.h5s.create_simple(bits.shape)
                dsid = h5py.h5d.create(f.id, name.encode(), bf16_type(), sid)
                dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, bits, mtype=bf16_type())
                f[name].attrs["dtype"] = "bfloat16"
            else:
                f.create_dataset(name, data=np.asarray(x, dtype=dtype))


def random_inputs(rng, B, Nq, Nk, H, Hkv, D, magnitude=1.0):
    q = rng.standard_normal((B, Nq, H, D)).astype(np.float32) * magnitude
    k = rng.standard_normal((B, Nk, Hkv, D)).astype(np.float32) * magnitude
    v = rng.standard_normal((B, Nk, Hkv, D)).astype(np.float32)
    return q, k, v


def rel_err(got, ref):
    """max |got - ref| / max |ref| (the suite's relative error)."""
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))
