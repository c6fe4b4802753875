"""numpy arrays from numpy arrays or torch tensors, and torch tensors back.

torch is never imported to look at an argument: a tensor is anything with callable detach(), cpu()
and numpy() (duck typing), and torch is imported only to take the bits of a bfloat16 tensor or to
make tensors that were asked for.
"""
import numpy as np


def is_tensor(x):
    """Whether x looks like a torch tensor: callable detach, cpu and numpy, torch imported or not."""
    return all(callable(getattr(x, m, None)) for m in ("detach", "cpu", "numpy"))


def as_numpy(x, name):
    """(array, bf16): x as a numpy array on the host. bf16 is True when the array holds bfloat16
    bit patterns (uint16) rather than values: for torch.bfloat16 tensors and numpy arrays of an
    ml_dtypes-style 'bfloat16' dtype, since numpy itself has no bfloat16. A tensor is detached and
    brought to the CPU first. Only numbers are taken (float, signed or unsigned integer)."""
    if is_tensor(x):
        t = x.detach().cpu()
        if str(getattr(t, "dtype", "")) == "torch.bfloat16":
            import torch                          # the tensor exists, so torch does
            return np.asarray(t.view(torch.int16).numpy()).view(np.uint16), True
        a = np.asarray(t.numpy())
    else:
        a = np.asarray(x)
    if a.dtype.name == "bfloat16" and a.dtype.itemsize == 2:
        return a.view(np.uint16), True
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected an array of numbers, got dtype {a.dtype}")
    return a, False


def to_torch(a):
    """A numpy array as a torch tensor (sharing its memory); ImportError when torch is missing."""
    try:
        import torch
    except ImportError as e:
        raise ImportError("fa_long: torch tensors were asked for, but torch cannot be imported") from e
    return torch.from_numpy(np.ascontiguousarray(a))
