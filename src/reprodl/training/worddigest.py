"""The ``words`` step-trace digest: a tensor's bytes as 64-bit words, XORed (the trace's default kind).

A tensor's ``words`` digest is the XOR of its bytes, in C order, taken as little-endian unsigned
64-bit words, the last word zero-padded. Like ``torch.hash_tensor`` (the ``exact`` kind, records
before reprodl 0.9) it is exact and independent of the order of reduction, and a change in any one
element changes it (each element's bits lie in their own bits of one word). It differs in what it
costs: ``torch.hash_tensor`` first widens every element to 64 bits (float32 to float64), about
0.6 ns an element on one CPU thread, where XORing the words as they lie in memory costs about
0.06 ns (measured by ``bench/bench_trace.py``; the same exactness, a tenth of the work).

How the tensors are gathered each step is :class:`reprodl.training.statedigest.StateDigests`'s
(:class:`WordLayout` is its layout for this kind):

* contiguous CPU tensors of any dtype: NumPy byte views of them made once, zero bytes after each
  one to a multiple of 8, ONE ``np.concatenate`` into a 64-bit aligned buffer and ONE
  ``np.bitwise_xor.reduceat`` over its words give every tensor's digest;
* the others (on an accelerator, not contiguous): ONE ``torch._foreach_copy_`` into the rows of
  zero-padded int64 buffers (by device and size class), and ONE ``torch.hash_tensor(buffer,
  dim=1)`` per buffer (an int64's own bits XORed; zeros XOR to nothing).

Example:
    >>> import torch
    >>> int(word_digest(torch.tensor([1.0], dtype=torch.float64)).item()) == 0x3FF0000000000000
    True
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from reprodl.training.statedigest import SMALL, _Layout, _size_classes, zero

_ZERO_BYTES = [np.zeros(n, dtype=np.uint8) for n in range(8)]  # the padding after a tensor of n % 8 != 0 bytes


def word_digest(t: torch.Tensor) -> torch.Tensor:
    """A tensor's ``words`` digest (module docstring), a 0-d uint64 tensor on its device."""
    if t.numel() == 0:
        return zero(t.device)
    if t.device.type == "cpu":
        return torch.from_numpy(np.asarray(words_np(t)))
    flat = t.detach().contiguous().reshape(-1).view(torch.uint8)
    pad = -flat.numel() % 8
    if pad or flat.data_ptr() % 8:  # a fresh, aligned copy whole words long
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return torch.hash_tensor(flat.view(torch.int64))


def words_np(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's ``words`` digest as a NumPy uint64 scalar array (no torch dispatch past the view)."""
    data = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    whole = data.size - data.size % 8
    out = np.bitwise_xor.reduce(data[:whole].view("<u8")) if whole else np.uint64(0)
    if whole < data.size:
        out ^= np.concatenate([data[whole:], _ZERO_BYTES[8 - data.size + whole]]).view("<u8")[0]
    return np.asarray(out, dtype=np.uint64)


def inputs_digest(t: torch.Tensor) -> torch.Tensor:
    """A batch's ``words`` digest in ONE ``torch.hash_tensor`` call over its int64 view when it has one (its last
    dimension contiguous and a whole number of words long: an int64's own bits are XORed), else
    :func:`word_digest`."""
    try:
        return torch.hash_tensor(t.view(torch.int64))
    except RuntimeError:  # not contiguous, its last dimension not whole words, or empty: checked only then
        return word_digest(t)


def rng_states(device: torch.device) -> tuple[torch.Tensor, ...]:
    """The global random generators' states a step leaves (copies): torch's CPU generator, and the model's
    CUDA device's when it is on one. Digested later, together (:func:`rng_digests`)."""
    if device.type == "cuda":
        return torch.default_generator.get_state(), torch.cuda.get_rng_state(device)
    return (torch.default_generator.get_state(),)


def rng_digests(states: list[tuple[torch.Tensor, ...]]) -> np.ndarray:
    """Each step's :func:`rng_states` as one digest (uint64): the first 8 bytes (little-endian) of the BLAKE2b of
    the states' bytes. Not an XOR of words: a generator's state holds counters that move together (a
    position and what is left), whose XORs repeat from one draw to another."""
    out = np.zeros(len(states), dtype=np.uint64)
    for i, step in enumerate(states):
        h = hashlib.blake2b(digest_size=8)
        for state in step:
            h.update(state.numpy().tobytes())
        out[i] = int.from_bytes(h.digest(), "little")
    return out


class WordLayout(_Layout):
    """:class:`~reprodl.training.statedigest._Layout` for the ``words`` digest (module docstring)."""

    digest = staticmethod(word_digest)

    @staticmethod
    def _placement(t: torch.Tensor) -> str | None:
        if not 0 < t.numel() <= SMALL or t.layout != torch.strided:
            return None
        return "f" if t.device.type == "cpu" and t.is_contiguous() else "padded"

    def _flatten(self, sources: dict[int, torch.Tensor], flat: dict[str, list[int]], position: dict[int, int]) -> None:
        """CPU tensors: byte views of them (each followed by zeros to a multiple of 8 bytes), concatenated each
        step into one buffer of 64-bit words, digested by segment."""
        self.flat: list[tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]] = []
        members = flat["f"] + flat["i"]
        if not members:
            return
        views: list[np.ndarray] = []
        words: list[int] = []
        for i in members:
            data = sources[i].detach().reshape(-1).view(torch.uint8).numpy()
            views.append(data)
            if data.size % 8:
                views.append(_ZERO_BYTES[8 - data.size % 8])
            words.append(-(-data.size // 8))
            position[i] = len(position)
        out = np.empty(sum(words), dtype="<u8")
        offsets = np.cumsum([0, *words[:-1]], dtype=np.int64)
        self.flat.append((views, out.view(np.uint8), out, offsets))

    def _pad(self, sources: dict[int, torch.Tensor], padded: dict[Any, list[int]], position: dict[int, int]) -> None:
        """Other small tensors: their bytes copied each step into rows of zero-padded int64 buffers (by device and
        size class), one ``torch.hash_tensor(dim=1)`` per buffer."""
        self.bufs: list[torch.Tensor] = []
        self.dst: list[torch.Tensor] = []
        self.dst_sources: list[torch.Tensor] = []
        by_device: dict[torch.device, list[int]] = {}
        for (_, device), members in padded.items():
            by_device.setdefault(device, []).extend(members)
        for device, members in by_device.items():
            n_words = [-(-sources[i].numel() * sources[i].element_size() // 8) for i in members]
            for rows in _size_classes(members, n_words):
                width = n_words[members.index(rows[0])]
                buf = torch.zeros(len(rows), width, dtype=torch.int64, device=device)
                for r, i in enumerate(rows):
                    src = sources[i]
                    position[i] = len(position)
                    n_bytes = src.numel() * src.element_size()
                    self.dst.append(buf[r].view(torch.uint8)[:n_bytes].view(src.dtype).view(src.shape))
                    self.dst_sources.append(src)
                self.bufs.append(buf)
