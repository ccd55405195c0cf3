"""Vectorized word and char_wb n-gram hashing: no Python per title or per n-gram.

A chunk of titles becomes one buffer of Unicode code points in a canonical layout: every token
(a run of non-whitespace, as ``str.split()`` and the ``\\S+`` token pattern see it) preceded by
one space, one space after each title's last token, so that titles are separated by two spaces.
In that buffer

* a word n-gram is the substring from the start of its first token to the end of its last one
  (consecutive tokens of a title are exactly one space apart), and
* a ``char_wb`` n-gram of sklearn's analyzer (windows inside `` word ``, the word padded with one
  space on each side) is a window without a space strictly inside it, except the window of two
  spaces between titles.

Every substring gets a 64-bit polynomial hash from one prefix sum (``G[k] = sum c_j P^-j``, so
``hash(a, b) = (G[b] - G[a]) P^(b-1)``, all in wrapping uint64 arithmetic), finished by the
splitmix64 mixer and cut to its top ``bits`` bits: the n-gram's bucket. So the n-grams and their
counts are exactly sklearn's (tests/test_tfidf_fast.py) and only distinct n-grams that share a
bucket (about D / 2**bits of them for D distinct n-grams) are merged.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

_P = 0x9E3779B97F4A7C15  # odd: invertible modulo 2**64
_P_INV = pow(_P, -1, 2**64)
_SPACE = 32
# What str.split() splits on (sklearn's char_wb splits with it, its word pattern \S+ on \s).
_WHITESPACE = np.array([9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028,
                        0x2029, 0x202F, 0x205F, 0x3000], dtype=np.uint32)
_U64 = np.uint64
_WS_TABLE = np.zeros(int(_WHITESPACE.max()) + 2, dtype=bool)  # the last entry: every code point above
_WS_TABLE[_WHITESPACE] = True


def _powers(base: int, m: int) -> np.ndarray:
    w = np.full(m + 1, base, dtype=np.uint64)
    w[0] = 1
    return np.cumprod(w, out=w)  # wraps modulo 2**64, as it should


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches the top bits the bucket is cut from."""
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


class Chunk:
    """One chunk of titles in the canonical layout, with its prefix hashes."""

    def __init__(self, texts: Sequence[str]):
        n = len(texts)
        self.n_rows = n
        c = np.frombuffer("\n".join(texts).encode("utf-32-le"), dtype=np.uint32)
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=n)
        title_start = np.zeros(n, dtype=np.int64)
        np.cumsum(lengths[:-1] + 1, out=title_start[1:])
        inside = ~_WS_TABLE[np.minimum(c, _WS_TABLE.size - 1)]
        edge = np.diff(inside.view(np.int8), prepend=0, append=0)
        start, end = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)  # token [start, end) in c
        self.tok_row = (np.searchsorted(title_start, start, side="right") - 1).astype(np.int32)
        self.tok_len = end - start
        n_tok = start.size
        before = np.zeros(n_tok, dtype=np.int64)
        np.cumsum(self.tok_len[:-1], out=before[1:])
        self.tok_start = before + np.arange(n_tok) + 1 + self.tok_row  # in the canonical buffer
        total = int(self.tok_len.sum()) + n_tok + n
        buf = np.full(total, _SPACE, dtype=np.uint64)
        old = np.flatnonzero(inside)
        buf[old + np.repeat(self.tok_start - start, self.tok_len)] = c[old]
        self.buf = buf
        # Row of every buffer position: each title takes its tokens' lengths + one space each + one.
        row_len = np.bincount(self.tok_row, weights=self.tok_len + 1, minlength=n).astype(np.int64) + 1
        self.pos_row = np.repeat(np.arange(n, dtype=np.int32), row_len)
        wp, wi = _powers(_P, total), _powers(_P_INV, total)
        g = np.zeros(total + 1, dtype=np.uint64)
        np.cumsum(buf * wi[:total], out=g[1:])
        self._g, self._wp = g, wp

    def hash_at(self, start: np.ndarray, stop: np.ndarray, n, bits: int) -> np.ndarray:
        """Buckets (int32, top ``bits`` bits of the hash) of buf[start:stop], salted with the order ``n``."""
        return _bucket((self._g[stop] - self._g[start]) * self._wp[stop - 1], n, bits)

    def words(self, lo: int, hi: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """(row, bucket) of every word n-gram, lo <= n <= hi."""
        rows, hashes = [], []
        stop = self.tok_start + self.tok_len
        for n in range(lo, hi + 1):
            k = self.tok_row.size - n + 1
            if k <= 0:
                break
            same = self.tok_row[n - 1 :] == self.tok_row[:k]  # the n tokens are in one title
            rows.append(self.tok_row[:k][same])
            hashes.append(self.hash_at(self.tok_start[:k][same], stop[n - 1 :][same], n, bits))
        return _cat(rows), _cat(hashes)

    def chars_wb(self, lo: int, hi: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """(row, bucket) of every char_wb n-gram, lo <= n <= hi, as sklearn's ``analyzer="char_wb"``."""
        rows, hashes = [], []
        m = self.buf.size
        space = self.buf == _SPACE
        spaces = np.zeros(m + 1, dtype=np.int32)
        np.cumsum(space, out=spaces[1:])
        for n in range(max(lo, 2), hi + 1):
            if m < n:
                break
            # No space strictly inside, and not the two spaces between titles.
            ok = spaces[n - 1 : m] == spaces[1 : m - n + 2]
            if n == 2:
                ok &= ~(space[: m - 1] & space[1:])
            # Every window's hash from contiguous slices (no gather), then only the valid ones.
            h = (self._g[n:] - self._g[: m - n + 1]) * self._wp[n - 1 : m]
            rows.append(self.pos_row[: m - n + 1][ok])
            hashes.append(_bucket(h[ok], n, bits))
        padded = self.tok_len + 2
        if lo == 1:  # each padded word's characters, its two spaces included
            start = np.repeat(self.tok_start - 1, padded) + _ranks(padded)
            rows.append(np.repeat(self.tok_row, padded))
            hashes.append(self.hash_at(start, start + 1, 1, bits))
        short = padded < lo  # sklearn keeps a padded word shorter than every n once, whole
        if short.any():
            start = self.tok_start[short] - 1
            rows.append(self.tok_row[short])
            hashes.append(self.hash_at(start, start + padded[short], padded[short], bits))
        return _cat(rows), _cat(hashes)


def _bucket(h: np.ndarray, n, bits: int) -> np.ndarray:
    h ^= np.asarray(n, dtype=np.uint64) * _U64(_P)
    return (_mix(h) >> _U64(64 - bits)).astype(np.int32)


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for every count c, concatenated."""
    total = int(counts.sum())
    return np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int32, copy=False) if parts else np.zeros(0, dtype=np.int32)


def bucket_counts(rows: np.ndarray, cols: np.ndarray, n_rows: int, bits: int):
    """scipy CSR ``[n_rows, 2**bits]`` float32 counts (duplicates summed, indices sorted)."""
    import scipy.sparse as sp

    out = sp.csr_matrix((np.ones(cols.size, dtype=np.float32), (rows, cols)), shape=(n_rows, 1 << bits))
    out.sum_duplicates()
    return out
