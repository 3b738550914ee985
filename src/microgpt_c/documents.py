"""Documents held compactly, for large data files: :class:`Documents`, the
vectorised parser of a file's lines (:func:`parse_documents`), and the
exact vectorised equivalent of ``random.Random.shuffle`` (:func:`shuffle_permutation`).

A list of n short Python strings costs about 70 bytes per document (the str
object, its pointer and the allocator's rounding): for a 50 MB file of names
(6.7 million of them) that is 480 MB before anything is trained.  A
:class:`Documents` keeps the documents as one NumPy array of code points,
``"\\n".join(docs) + "\\n"`` (1 byte per character when they all are below
256, 2 below 65536, else 4), and an int64 array of where each starts: about
9 bytes per document plus one per character.  It is a read-only
``Sequence[str]`` (indexing, slicing, iteration, ``==`` with a list), so the
code that took a list of documents takes it unchanged.

Everything here gives exactly what the plain-Python path gives: the same
documents as :func:`microgpt_c.data._parse_documents` (the same errors too),
the same permutation and random state after the shuffle as
``rng.shuffle(list)``, the same SHA-256 as
:func:`microgpt_c.data.sha256_of_documents`; the tests check each against
the plain version.
"""
from __future__ import annotations

import codecs
import hashlib
import math
import random
from typing import Any, Iterator, List, Optional, Sequence, Union, overload

import numpy as np

__all__ = ["Documents", "parse_documents", "shuffle_permutation"]

CHUNK_CHARS = 1 << 22        # characters per vectorised chunk (bounds the temporaries)
_CODECS = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}
#: every code point for which str.isspace() (so str.strip()) is true, Unicode 14/15
WHITESPACE = (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680,
              *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)
_MAX_EDGE_STEPS = 64         # whitespace stripped vectorised, a character a pass, at most


# --------------------------------------------------------------------------- code points
def narrow_code_points(text: str) -> np.ndarray:
    """The code points of ``text`` in the narrowest of uint8 / uint16 /
    uint32 that holds them all (``text`` has no lone surrogates)."""
    if text.isascii():  # O(1) in CPython
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    try:
        return np.frombuffer(text.encode("latin-1"), dtype=np.uint8)
    except UnicodeEncodeError:
        pass
    wide = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    if int(wide.max()) < 0x10000:
        return wide.astype(np.uint16)
    return wide


def _decode(cps: np.ndarray) -> str:
    """The str of a code-point array made by :func:`narrow_code_points`."""
    if cps.dtype.itemsize == 1:
        return cps.tobytes().decode("latin-1")
    return cps.astype(cps.dtype.newbyteorder("<"), copy=False).tobytes().decode(
        _CODECS[cps.dtype.itemsize])


def _is_space(x: np.ndarray) -> np.ndarray:
    """Elementwise ``chr(x).isspace()`` of a code-point array."""
    m = (x == 0x20) | ((x >= 0x09) & (x <= 0x0D)) | ((x >= 0x1C) & (x <= 0x1F))
    m |= (x == 0x85) | (x == 0xA0)
    if x.dtype.itemsize > 1:
        m |= ((x >= 0x2000) & (x <= 0x200A)) | (x == 0x1680) | (x == 0x2028) | (x == 0x2029)
        m |= (x == 0x202F) | (x == 0x205F) | (x == 0x3000)
    return m


# --------------------------------------------------------------------------- Documents
class Documents(Sequence):
    """A read-only sequence of documents (str without ``"\\n"``) stored as
    ``joined``, the code points of ``"\\n".join(docs) + "\\n"``, and
    ``starts``, the n + 1 offsets of the documents in it (document i is
    ``joined[starts[i]:starts[i + 1] - 1]``).  ``ascii``: every code point
    is below 128."""

    __slots__ = ("joined", "starts", "ascii")

    def __init__(self, joined: np.ndarray, starts: np.ndarray, ascii: Optional[bool] = None):
        self.joined = joined
        self.starts = starts
        if ascii is None:
            ascii = joined.dtype.itemsize == 1 and (joined.size == 0 or int(joined.max()) < 128)
        self.ascii = bool(ascii)

    @classmethod
    def from_strings(cls, docs: Sequence[str]) -> "Documents":
        """The documents of a list of str (none may contain a newline)."""
        text = "\n".join(docs) + "\n" if len(docs) else ""
        joined = narrow_code_points(text)
        lens = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
        starts = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(lens, out=starts[1:])
        if int(np.count_nonzero(joined == 10)) != len(docs):
            raise ValueError("a document of a Documents cannot contain a newline")
        return cls(joined, starts)

    # -- the sequence
    def __len__(self) -> int:
        return int(self.starts.shape[0]) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> "Documents": ...

    def __getitem__(self, i: Union[int, slice]) -> Any:
        n = len(self)
        if isinstance(i, slice):
            lo, hi, step = i.indices(n)
            if step != 1:
                return [self[k] for k in range(lo, hi, step)]
            hi = max(lo, hi)
            return Documents(self.joined, self.starts[lo:hi + 1], self.ascii)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("Documents index out of range")
        return _decode(self.joined[int(self.starts[i]):int(self.starts[i + 1]) - 1])

    def chunks(self, chars: int = CHUNK_CHARS) -> Iterator[tuple]:
        """``(lo, hi)`` ranges of documents of about ``chars`` characters (at
        least one document each)."""
        n, starts = len(self), self.starts
        lo = 0
        while lo < n:
            hi = int(np.searchsorted(starts, int(starts[lo]) + chars, side="right")) - 1
            hi = min(n, max(hi, lo + 1))
            yield lo, hi
            lo = hi

    def joined_range(self, lo: int, hi: int) -> np.ndarray:
        """The code points of documents lo..hi-1, each followed by a newline."""
        return self.joined[int(self.starts[lo]):int(self.starts[hi])]

    def __iter__(self) -> Iterator[str]:
        for lo, hi in self.chunks():
            yield from _decode(self.joined_range(lo, hi)).split("\n")[:-1]

    def tolist(self) -> List[str]:
        return list(self)

    def lengths(self) -> np.ndarray:
        """The documents' lengths in characters (int64)."""
        return np.diff(self.starts) - 1

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Documents):
            return (len(self) == len(other)
                    and np.array_equal(self.lengths(), other.lengths())
                    and all(np.array_equal(self.joined_range(lo, hi),
                                           other.joined_range(lo, hi))
                            for lo, hi in self.chunks()))
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking like a list: unhashable

    def __repr__(self) -> str:
        head = ", ".join(repr(self[i]) for i in range(min(3, len(self))))
        more = ", ..." if len(self) > 3 else ""
        return f"Documents([{head}{more}], {len(self)} documents)"

    # -- what training needs
    def take(self, perm: np.ndarray) -> "Documents":
        """The documents in the order ``perm`` (document i of the result is
        ``self[perm[i]]``), copied a chunk at a time."""
        perm = np.asarray(perm)
        if perm.dtype.kind not in "iu":
            raise TypeError("take needs an integer array")
        lens1 = self.starts[1:][perm]                    # length + 1 (the newline)
        lens1 -= self.starts[:-1][perm]
        starts = np.zeros(perm.shape[0] + 1, dtype=np.int64)
        np.cumsum(lens1, out=starts[1:])
        del lens1
        joined = np.empty(int(starts[-1]), dtype=self.joined.dtype)
        out = Documents(joined, starts, self.ascii)
        for lo, hi in out.chunks():
            base = int(starts[lo])
            width = int(starts[hi]) - base
            offset = np.repeat(self.starts[perm[lo:hi]] - (starts[lo:hi] - base),
                               np.diff(starts[lo:hi + 1]))
            offset += np.arange(width, dtype=np.int64)
            joined[base:base + width] = self.joined[offset]
            del offset
        return out

    def sha256(self) -> str:
        """:func:`microgpt_c.data.sha256_of_documents` of the documents:
        SHA-256 of ``"\\n".join(docs)`` in UTF-8."""
        h = hashlib.sha256()
        first = int(self.starts[0])
        last = int(self.starts[-1]) - 1       # without the final newline
        for lo in range(first, max(first, last), CHUNK_CHARS):
            piece = self.joined[lo:min(lo + CHUNK_CHARS, last)]
            if self.ascii:
                h.update(memoryview(np.ascontiguousarray(piece)).cast("B"))
            else:
                h.update(_decode(piece).encode("utf-8"))
        return h.hexdigest()

    def distinct_code_points(self) -> np.ndarray:
        """The sorted distinct code points of the documents (int64)."""
        if self.joined.dtype.itemsize == 1:
            counts = np.zeros(256, dtype=np.int64)
            for lo, hi in self.chunks():
                counts += np.bincount(self.joined_range(lo, hi), minlength=256)
            counts[10] = 0                     # the separators
            return np.flatnonzero(counts)
        seen = np.zeros(0x110000, dtype=bool)
        for lo, hi in self.chunks():
            seen[self.joined_range(lo, hi)] = True
        seen[10] = False
        return np.flatnonzero(seen)

    def contains(self, texts: Sequence[str]) -> List[bool]:
        """For each of ``texts``, whether it is one of the documents
        (compared a chunk of documents at a time, by length, then code points)."""
        limit = 1 << (8 * self.joined.dtype.itemsize)
        wanted = {}
        for text in set(texts):
            cps = np.array([ord(c) for c in text], dtype=np.int64)
            if "\n" not in text and (not cps.size or int(cps.max()) < limit):
                wanted[text] = cps
        found = set()
        for lo, hi in self.chunks():
            if len(found) == len(wanted):
                break
            first = self.starts[lo:hi]
            lens = np.diff(self.starts[lo:hi + 1]) - 1
            for text, cps in wanted.items():
                if text in found:
                    continue
                rows = first[lens == cps.size]
                if not rows.size:
                    continue
                if not cps.size:
                    found.add(text)
                    continue
                for r0 in range(0, rows.size, 1 << 16):
                    block = self.joined[rows[r0:r0 + (1 << 16), None]
                                        + np.arange(cps.size, dtype=np.int64)[None, :]]
                    if (block == cps[None, :]).all(axis=1).any():
                        found.add(text)
                        break
        return [text in found for text in texts]


# --------------------------------------------------------------------------- parsing
def parse_documents(raw: bytes, source: str, hint: str, error: type) -> Documents:
    """The documents of a text file's bytes, as
    :func:`microgpt_c.data._parse_documents` makes them (the stripped,
    non-empty lines; ``\\r\\n`` and ``\\r`` end lines too; a UTF-8 BOM is
    dropped), with the same ``error`` messages, vectorised."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise error(f"{source} looks like a binary file (NUL byte at byte offset {nul}); {hint}")
    if raw.isascii():
        a = np.frombuffer(raw, dtype=np.uint8)
        ascii = True
    else:
        bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
        try:
            text = raw[bom:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{source} is not valid UTF-8 (invalid byte at byte offset "
                        f"{exc.start + bom}); re-save it with UTF-8 encoding") from None
        a = narrow_code_points(text)
        del text
        ascii = a.dtype.itemsize == 1 and (a.size == 0 or int(a.max()) < 128)
    a = _universal_newlines(a)
    docs = _stripped_lines(a, ascii)
    if docs is None:
        raise error(f"{source} contains no documents (it is empty or has only blank lines); "
                    f"{hint}")
    return docs


def _universal_newlines(a: np.ndarray) -> np.ndarray:
    """``\\r\\n`` -> ``\\n``, then ``\\r`` -> ``\\n`` (as str.replace twice)."""
    cr = np.flatnonzero(a == 13)
    if not cr.size:
        return a
    inner = cr[cr + 1 < a.size]
    crlf = inner[a[inner + 1] == 10]
    if crlf.size:
        keep = np.ones(a.size, dtype=bool)
        keep[crlf] = False
        a = a[keep]
    else:
        a = a.copy()
    a[a == 13] = 10
    return a


def _stripped_lines(a: np.ndarray, ascii: bool) -> Optional[Documents]:
    """The non-empty ``str.strip()``-ed lines of the code points ``a`` (lines
    end at ``\\n``) as Documents, or None if there are none."""
    nl = np.flatnonzero(a == 10)
    s = np.empty(nl.size + 1, dtype=np.int64)
    e = np.empty(nl.size + 1, dtype=np.int64)
    s[0] = 0
    s[1:] = nl + 1
    e[:-1] = nl
    e[-1] = a.size
    del nl
    _strip_edges(a, s, e)
    keep = s < e
    if not keep.all():
        s, e = s[keep], e[keep]
    del keep
    if not s.size:
        return None
    lens1 = e - s + 1
    starts = np.zeros(s.size + 1, dtype=np.int64)
    np.cumsum(lens1, out=starts[1:])
    total = int(starts[-1])
    if total == a.size and s[0] == 0 and int(e[-1]) < a.size and bool((a[e] == 10).all()):
        return Documents(a, starts, ascii)   # the text is already "\n".join(docs) + "\n"
    # keep each document and the character after it (set to the newline)
    ext = a if int(e[-1]) < a.size else np.concatenate([a, np.zeros(1, dtype=a.dtype)])
    mark = np.zeros(ext.size + 1, dtype=np.int8)
    mark[s] = 1
    stop = np.zeros(ext.size + 1, dtype=np.int8)
    stop[e + 1] = 1
    mark -= stop
    del stop
    keep = np.cumsum(mark, dtype=np.int8)[:-1].astype(bool)
    del mark
    joined = ext[keep]
    del keep, ext
    joined[starts[1:] - 1] = 10
    return Documents(joined, starts, ascii)


def _strip_edges(a: np.ndarray, s: np.ndarray, e: np.ndarray) -> None:
    """Move the line bounds ``s``/``e`` (in place) past leading and trailing
    whitespace, as str.strip(): vectorised a character a pass, then
    line by line in Python for the few lines with more."""
    if not a.size:
        return
    last = a.size - 1
    for lead in (True, False):
        pos = s if lead else e
        edge = (lambda: pos[active]) if lead else (lambda: pos[active] - 1)
        active = np.flatnonzero(s < e)
        for _ in range(_MAX_EDGE_STEPS):
            if not active.size:
                break
            at = edge()
            sp = _is_space(a[np.clip(at, 0, last)])
            active = active[sp]
            if not active.size:
                break
            pos[active] += 1 if lead else -1
            active = active[s[active] < e[active]]
        else:
            for i in active.tolist():   # long whitespace runs: str.strip's own answer
                line = _decode(a[int(s[i]):int(e[i])])
                if lead:
                    s[i] += len(line) - len(line.lstrip())
                else:
                    e[i] -= len(line) - len(line.rstrip())


# --------------------------------------------------------------------------- the shuffle
_FAST_SHUFFLE_MIN = 1 << 15   # shorter lists: random.shuffle itself
_SMALL_BOUND = 1 << 12        # draws below this bound: a plain loop
_WORDS_PER_FETCH = 1 << 18
_fast_shuffle_checked: Optional[bool] = None


def shuffle_permutation(rng: random.Random, n: int) -> np.ndarray:
    """The permutation ``rng.shuffle`` applies to a list of ``n`` items, as an
    integer array ``perm`` (item i of the shuffled list is item ``perm[i]`` of
    the original), leaving ``rng`` in the state ``rng.shuffle`` leaves it.

    For a plain ``random.Random`` and a long list it is computed vectorised
    from the generator's 32-bit words (the same draws as the loop of
    ``random.shuffle``: ``_randbelow`` of ``i + 1`` by rejection, for i from
    n - 1 down to 1), after checking once per process that this reproduces
    ``random.shuffle`` of this Python; otherwise ``rng.shuffle`` itself."""
    if n < _FAST_SHUFFLE_MIN or type(rng) is not random.Random or not _fast_shuffle_ok():
        items = list(range(n))
        rng.shuffle(items)
        return np.array(items, dtype=np.int64)
    return _fast_shuffle(rng, n)


def _fast_shuffle(rng: random.Random, n: int, small_bound: int = _SMALL_BOUND) -> np.ndarray:
    gen = random.Random()
    gen.setstate(rng.getstate())
    draws, used = _shuffle_draws(gen, n, small_bound)
    for lo in range(0, used, 1 << 22):           # advance rng by exactly the words used
        rng.getrandbits(32 * min(1 << 22, used - lo))
    return _permutation_from_draws(draws)


def _fast_shuffle_ok() -> bool:
    """Once per process: the vectorised shuffle equals random.shuffle here
    (permutation and final state), with small thresholds so that every path
    of it runs."""
    global _fast_shuffle_checked
    if _fast_shuffle_checked is None:
        ok = True
        for seed, n in ((42, 3000), (7, 5001)):
            a, b = random.Random(seed), random.Random(seed)
            items = list(range(n))
            a.shuffle(items)
            try:
                perm = _fast_shuffle(b, n, small_bound=64)
            except Exception:  # pragma: no cover - any failure: use random.shuffle
                ok = False
                break
            if perm.tolist() != items or a.getstate() != b.getstate():
                ok = False
                break
        _fast_shuffle_checked = ok
    return _fast_shuffle_checked


class _Words:
    """The 32-bit outputs of a generator, fetched in blocks."""

    def __init__(self, gen: random.Random):
        self.gen = gen
        self.buf = np.empty(0, dtype=np.uint32)
        self.pos = 0       # next unused word of buf
        self.used = 0      # words consumed so far

    def ensure(self, count: int) -> None:
        if self.buf.size - self.pos >= count:
            return
        m = max(count, _WORDS_PER_FETCH)
        new = np.frombuffer(self.gen.getrandbits(32 * m).to_bytes(4 * m, "little"), dtype="<u4")
        self.buf = np.concatenate([self.buf[self.pos:], new])
        self.pos = 0

    def take(self, count: int) -> None:
        self.pos += count
        self.used += count


def _shuffle_draws(gen: random.Random, n: int, small_bound: int):
    """(j, words used): ``j[i]`` is the index random.shuffle swaps item i
    with (``j[0] = 0``).

    A draw for bound b takes k = b.bit_length() bits, ``r = word >> (32 - k)``,
    and is kept if r < b (else the next word is tried).  Vectorised: for a
    window of L words from the current position with bound c, word q is kept
    for sure if r < c - q (at most q were kept before it, so its bound is at
    least c - q), refused for sure if r >= c; the first word in between is
    settled exactly (the kept words before it are known).  L ~ 2 sqrt(2^k)
    makes such words rare.  The bit count k changes where b halves: windows
    stop there."""
    j = np.zeros(n, dtype=np.int32 if n < 2**31 - 1 else np.int64)
    words = _Words(gen)
    i = n - 1
    while i >= 1 and i + 1 >= small_bound:
        c = i + 1
        k = c.bit_length()
        seg_lo = max(1 << (k - 1), small_bound)     # the last bound of this segment
        m = c - seg_lo + 1                          # draws left in it
        L = max(16, 2 * math.isqrt(1 << k))
        words.ensure(L)
        r = (words.buf[words.pos:words.pos + L] >> np.uint32(32 - k)).astype(np.int64)
        q = np.arange(L, dtype=np.int64)
        sure_keep = r < c - q
        unsure = ~sure_keep & (r < c)
        first_unsure = int(np.argmax(unsure)) if unsure.any() else L
        keep = sure_keep[:first_unsure]
        kept = np.cumsum(keep)
        total = int(kept[-1]) if first_unsure else 0
        if total >= m:                              # the segment ends before it
            end = int(np.searchsorted(kept, m)) + 1
            keep = keep[:end]
        elif first_unsure < L:                      # settle the unsure word exactly
            keep = np.append(keep, r[first_unsure] < c - total)
            end = first_unsure + 1
        else:
            end = L
        values = r[:end][keep]
        cnt = values.size
        j[i - cnt + 1:i + 1] = values[::-1]
        i -= cnt
        words.take(end)
    # small bounds: one draw at a time
    while i >= 1:
        b = i + 1
        shift = 32 - b.bit_length()
        words.ensure(64)
        chunk = words.buf[words.pos:words.pos + 64].tolist()
        taken = 0
        for w in chunk:
            taken += 1
            r = w >> shift
            if r < b:
                j[i] = r
                i -= 1
                if i < 1:
                    break
                b = i + 1
                shift = 32 - b.bit_length()
        words.take(taken)
    return j, words.used


def _permutation_from_draws(j: np.ndarray) -> np.ndarray:
    """The permutation of ``for i in n-1..1: x[i], x[j[i]] = x[j[i]], x[i]``
    applied to ``x = range(n)``, without the sequential loop.

    Step i (i = n-1 first) moves the value v(i) then at position i to
    position j[i] and leaves there the value then at j[i], which is final.
    The value at position p before step i is the one moved there by the
    latest earlier step, the smallest s > i with j[s] = p, else p itself.
    So, with the steps grouped by target (sorted by (j, s)): final[i] =
    v(next step after i in i's group) or j[i]; v(s) = v(first step above s
    in group s) or s, resolved by pointer jumping.  (A fake step 0 with
    j[0] = 0 gives position 0's final value by the same rule.)"""
    n = j.shape[0]
    it = np.int32 if n < 2**31 - 1 else np.int64
    # the steps sorted by (j, step): one sort of the unique keys j * n + step
    jj = j.astype(it, copy=False)
    keys = jj.astype(np.int64) * n
    keys += np.arange(n, dtype=np.int64)
    keys.sort()
    keys %= n
    order = keys.astype(it)
    del keys
    sj = jj[order]
    nxt = np.full(n, -1, dtype=it)                          # next step of the same group
    same = sj[1:] == sj[:-1]
    nxt[:-1][same] = order[1:][same]
    del same
    succ = np.empty(n, dtype=it)
    succ[order] = nxt
    del nxt
    counts = np.bincount(sj, minlength=n)
    del sj
    gstart = np.zeros(n + 1, dtype=it)                      # where group p starts
    np.cumsum(counts, out=gstart[1:])
    members = np.flatnonzero(counts).astype(it)             # the non-empty groups
    del counts
    smallest = order[gstart[members]]
    del gstart, order
    steps = np.arange(n, dtype=it)
    first = np.full(n, -1, dtype=it)                        # first step above s in group s
    first[members] = np.where(smallest == members, succ[members], smallest)
    del members, smallest
    root = np.where(first >= 0, first, steps)
    del first
    while True:
        nr = root[root]
        if np.array_equal(nr, root):
            break
        root = nr
    del nr
    return np.where(succ >= 0, root[np.maximum(succ, 0)], jj)
