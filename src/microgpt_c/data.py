"""Training data for microgpt_c: documents, the character tokenizer and the built-in data set.

A *document* is one stripped, non-empty line of a UTF-8 text file (for the default
data set, one name per line).  The tokenizer maps every distinct character of the
documents to an id (its index in the sorted character list) and adds one extra
token, BOS, that marks the beginning and the end of each document.

When no data file is given, the makemore ``names.txt`` data set is used: it is
downloaded once (and checked against a SHA-256 digest) into :func:`cache_dir`.  If
it can be neither found in the cache nor downloaded, the US Census first names
shipped in the PyPI package ``names`` are used instead, so that the program still
runs offline.

Data files are read only if they are regular files (a FIFO or a device is refused
before it is opened) of at most ``$MICROGPT_C_MAX_DATA_BYTES`` bytes (default 2 GiB),
see :mod:`microgpt_c.safeio`.  Training reads a data file into a
:class:`~microgpt_c.documents.Documents` (one array of code points, not a
list of str), and the tokenizer's vocabulary, the SHA-256, the shuffle and
:func:`pack_corpus` work on NumPy arrays of code points, a chunk at a time.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.resources
import operator
import os
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Mapping, Sequence, Union

from . import safeio
from .documents import _FAST_SHUFFLE_MIN, Documents, parse_documents, shuffle_permutation

__all__ = [
    "DataError",
    "DataFileNotFound",
    "Documents",
    "NAMES_SHA256",
    "NAMES_URL",
    "Tokenizer",
    "builtin_names",
    "cache_dir",
    "encode_text",
    "load_documents",
    "load_text",
    "pack_corpus",
    "pack_windows",
    "read_text",
    "read_documents",
    "read_documents_compact",
    "sha256_of_documents",
    "shuffle_documents",
    "text_eval_windows",
    "window_offsets",
]

PathArg = Union[str, "os.PathLike[str]"]

NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/988aa59/names.txt"
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"

_NAMES_FILE = "names.txt"
_CENSUS_FILES = ("dist.female.first", "dist.male.first")
_HINT = "pass a UTF-8 text file with one document per line"


from .errors import DataError, DataFileNotFound  # noqa: E402 - re-exported: data.DataError


# --------------------------------------------------------------------------- documents


def _parse_documents(raw: bytes, source: str) -> list[str]:
    """Turn the bytes of a text file into documents (stripped, non-empty lines).

    Lines end with ``\\n``, ``\\r\\n`` or ``\\r`` (like Python's universal newlines),
    and a leading UTF-8 byte order mark is ignored.  ``source`` names the file in
    error messages.
    """
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(
            f"{source} looks like a binary file (NUL byte at byte offset {nul}); {_HINT}"
        )
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{source} is not valid UTF-8 (invalid byte at byte offset {exc.start + bom}); "
            f"re-save it with UTF-8 encoding"
        ) from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    docs = [stripped for stripped in (line.strip() for line in lines) if stripped]
    if not docs:
        raise DataError(
            f"{source} contains no documents (it is empty or has only blank lines); {_HINT}"
        )
    return docs


def read_documents(path: PathArg) -> list[str]:
    """Read the documents of a UTF-8 text file: its ``str.strip()``-ed, non-empty lines.

    Raises :class:`DataFileNotFound` if the file does not exist and :class:`DataError`
    if it is not a regular file (a directory, a FIFO, a device...), is larger than
    ``$MICROGPT_C_MAX_DATA_BYTES`` (default 2 GiB), cannot be read, is binary, is not
    UTF-8 or has no documents.
    """
    path = Path(os.fspath(path))
    return _parse_documents(_read_data_file(path), str(path))


def read_documents_compact(path: PathArg) -> Documents:
    """:func:`read_documents` as a :class:`~microgpt_c.documents.Documents`
    (the same documents and errors, parsed vectorised, held as one array of
    code points: about 9 bytes per document plus one per character instead
    of about 70 per document for a list of str).  What training reads a
    data file with."""
    path = Path(os.fspath(path))
    return parse_documents(_read_data_file(path), str(path), _HINT, DataError)


def _read_data_file(path: Path) -> bytes:
    """The bytes of a data file (a regular file within the size limit), for
    :func:`read_documents`; the errors as it documents."""
    try:
        limit = safeio.max_bytes(safeio.MAX_DATA_ENV, safeio.DEFAULT_MAX_DATA_BYTES)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    try:
        raw = safeio.read_regular_file(path, what="data file", error=DataError, limit=limit,
                                       env_var=safeio.MAX_DATA_ENV, not_found=DataFileNotFound,
                                       hint=_HINT)
    except DataFileNotFound:
        raise DataFileNotFound(
            f"data file not found: {path}; check the path, or give no data file "
            f"to use the built-in names data set"
        ) from None
    except DataError as exc:
        if str(exc).startswith(f"cannot read the data file {path}: permission denied"):
            raise DataError(
                f"permission denied reading {path}; make the file readable or copy it elsewhere"
            ) from None
        raise
    return raw


def sha256_of_documents(docs: Iterable[str]) -> str:
    """Hex SHA-256 digest of the documents joined by ``"\\n"`` and encoded as UTF-8
    (hashed a chunk at a time: no copy of the whole text)."""
    if isinstance(docs, Documents):
        return docs.sha256()
    docs = docs if isinstance(docs, (list, tuple)) else list(docs)
    h = hashlib.sha256()
    try:
        for piece in _text_pieces(docs, "\n"):
            h.update(piece.encode("utf-8"))
    except UnicodeEncodeError:  # (lone surrogates) the error of encoding it whole
        "\n".join(docs).encode("utf-8")
        raise
    return h.hexdigest()


def shuffle_documents(docs, rng) -> Any:
    """The documents shuffled as ``rng.shuffle(docs)`` shuffles a list (the
    same order and the same state of ``rng`` after), computed vectorised for
    long lists (:func:`microgpt_c.documents.shuffle_permutation`).  A list is
    shuffled in place and returned; a :class:`Documents` is returned
    reordered."""
    if isinstance(docs, Documents):
        return docs.take(shuffle_permutation(rng, len(docs)))
    if len(docs) < _FAST_SHUFFLE_MIN:
        rng.shuffle(docs)
        return docs
    perm = shuffle_permutation(rng, len(docs)).tolist()
    docs[:] = [docs[i] for i in perm]
    return docs


# --------------------------------------------------------------------------- tokenizer


class Tokenizer:
    """Character-level tokenizer with one extra BOS token.

    ``uchars`` is the sorted list of the distinct characters of the documents; the id
    of a character is its index in ``uchars``, ``bos == len(uchars)`` and
    ``vocab_size == len(uchars) + 1``.
    """

    def __init__(self, docs: Iterable[str]) -> None:
        """Build the vocabulary from ``docs``; raises DataError if they have no characters."""
        self.uchars: list[str] = _distinct_chars(docs)
        if not self.uchars:
            raise DataError("cannot build a tokenizer: the documents contain no characters")
        self._ids = {ch: i for i, ch in enumerate(self.uchars)}
        self.bos: int = len(self.uchars)
        self.vocab_size: int = len(self.uchars) + 1

    def encode(self, doc: str) -> list[int]:
        """Token ids of the characters of ``doc`` (without BOS).

        Raises DataError naming the characters that are not in the vocabulary.
        """
        try:
            return [self._ids[ch] for ch in doc]
        except KeyError:
            unknown = sorted(set(doc) - set(self._ids))
            raise DataError(
                f"characters not in the tokenizer vocabulary: "
                f"{', '.join(repr(ch) for ch in unknown)}; the vocabulary is built from "
                f"the training documents, so use text made of their characters only"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """The text of character ids; raises ValueError for BOS or any id out of range."""
        chars = []
        for token in ids:
            index = operator.index(token)
            if not 0 <= index < self.bos:
                raise ValueError(
                    f"cannot decode token id {index}: character ids are 0..{self.bos - 1}"
                    f" (id {self.bos} is BOS, which is not a character)"
                )
            chars.append(self.uchars[index])
        return "".join(chars)

    def doc_tokens(self, doc: str) -> list[int]:
        """``[BOS] + encode(doc) + [BOS]``: one training sequence."""
        return [self.bos, *self.encode(doc), self.bos]

    def to_dict(self) -> dict[str, str]:
        """JSON-able form: ``{"uchars": "<the sorted characters as one string>"}``."""
        return {"uchars": "".join(self.uchars)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tokenizer:
        """Rebuild a tokenizer saved by :meth:`to_dict`; raises DataError if it is malformed."""
        uchars = data.get("uchars") if isinstance(data, Mapping) else None
        if not isinstance(uchars, str) or list(uchars) != sorted(set(uchars)):
            raise DataError(
                'malformed tokenizer data: expected {"uchars": <string of sorted, distinct '
                'characters>} as written by Tokenizer.to_dict()'
            )
        return cls([uchars])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self.uchars == other.uchars

    def __hash__(self) -> int:
        return hash(tuple(self.uchars))

    def __repr__(self) -> str:
        return f"Tokenizer(uchars={''.join(self.uchars)!r}, vocab_size={self.vocab_size})"


# --------------------------------------------------------------------------- built-in data set


def cache_dir() -> Path:
    """Where the downloaded names are kept.

    ``$MICROGPT_C_CACHE`` if set, else ``$XDG_CACHE_HOME/microgpt_c``, else
    ``~/.cache/microgpt_c``.  Empty variables count as unset.
    """
    explicit = os.environ.get("MICROGPT_C_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "microgpt_c"


def _download(url: str, timeout: float) -> bytes:
    """The body of ``url`` (a separate function so that tests can replace it)."""
    request = urllib.request.Request(url, headers={"User-Agent": "microgpt_c"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _one_line(exc: BaseException) -> str:
    """A short one-line description of an exception."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _write_atomically(path: Path, raw: bytes) -> None:
    """Write ``raw`` to ``path`` via a synced temporary file in the same directory."""
    from .checkpoint import atomic_write_bytes  # the one implementation (imports NumPy)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, raw)


def _cached_names(path: Path) -> list[str] | None:
    """The cached makemore names, or None if the cache file is absent, unreadable or corrupt."""
    try:
        raw = safeio.read_regular_file(path, what="cached names file", error=OSError,
                                       limit=2**26)
    except OSError:
        return None
    if _sha256(raw) != NAMES_SHA256:
        return None
    return _parse_documents(raw, str(path))


def _fetch_names(path: Path, timeout: float) -> tuple[list[str], str]:
    """Download and verify the makemore names and try to cache them at ``path``.

    Returns the names and a note on where they are cached.  Raises on any download
    or verification failure; failing to write the cache is reported in the note only.
    """
    raw = _download(NAMES_URL, timeout)
    digest = _sha256(raw)
    if digest != NAMES_SHA256:
        raise DataError(f"downloaded file has SHA-256 {digest}, expected {NAMES_SHA256}")
    docs = _parse_documents(raw, NAMES_URL)
    try:
        _write_atomically(path, raw)
    except OSError as exc:
        return docs, f"downloaded, not cached: {_one_line(exc)}"
    return docs, f"downloaded and cached at {path}"


def _census_names() -> list[str]:
    """US Census first names from the ``names`` package: female file first, lower-case, unique."""
    package = importlib.resources.files("names")
    unique: dict[str, None] = {}  # dicts keep insertion order: first occurrence wins
    for filename in _CENSUS_FILES:
        text = package.joinpath(filename).read_text(encoding="utf-8")
        for line in text.splitlines():
            fields = line.split()
            if fields:
                unique.setdefault(fields[0].lower(), None)
    if not unique:
        raise DataError(f"the files {', '.join(_CENSUS_FILES)} contain no names")
    return list(unique)


def builtin_names(fetch: bool = True, timeout: float = 10.0) -> tuple[list[str], str]:
    """The built-in names data set, as ``(documents, one-line description)``.

    Uses the makemore ``names.txt`` from :func:`cache_dir` if its SHA-256 matches;
    otherwise downloads it (unless ``fetch`` is false or ``MICROGPT_C_OFFLINE=1``),
    verifies it and caches it.  If that fails for any reason, falls back to the US
    Census first names of the ``names`` package.  Raises DataError only if both
    sources fail.
    """
    path = cache_dir() / _NAMES_FILE
    docs = _cached_names(path)
    if docs is not None:
        return docs, f"using the makemore names data set ({len(docs)} names, cached at {path})"

    if not fetch:
        reason = "downloading is disabled"
    elif os.environ.get("MICROGPT_C_OFFLINE") == "1":
        reason = "MICROGPT_C_OFFLINE=1 is set"
    else:
        try:
            docs, where = _fetch_names(path, timeout)
        except Exception as exc:  # any failure at all means: use the fallback
            reason = _one_line(exc)
        else:
            return docs, f"using the makemore names data set ({len(docs)} names, {where})"

    try:
        docs = _census_names()
    except Exception as exc:
        raise DataError(
            f"no data set available: could not fetch the makemore names ({reason}) and "
            f"could not read the US Census names of the 'names' package ({_one_line(exc)}); "
            f"give a data file with --data PATH (one document per line)"
        ) from None
    return docs, (
        f"notice: could not fetch the makemore names ({reason}); using the US Census "
        f"first names from the 'names' package instead ({len(docs)} names)"
    )


def load_documents(data: PathArg | None = None, *, fetch: bool = True,
                   compact: bool = False) -> tuple[Any, str]:
    """The training documents and a one-line description of where they come from.

    In order of precedence: the file ``data`` if given, else ``input.txt`` in the
    current directory if it exists, else :func:`builtin_names`.  The
    documents are a list, or with ``compact`` those of a file are a
    :class:`Documents` (:func:`read_documents_compact`).
    """
    read = read_documents_compact if compact else read_documents
    if data is not None:
        docs = read(data)
        return docs, f"data: {os.fspath(data)} ({len(docs)} documents)"
    input_txt = Path.cwd() / "input.txt"
    if input_txt.exists():
        docs = read(input_txt)
        return docs, f"data: input.txt in the current directory ({len(docs)} documents)"
    return builtin_names(fetch)


def pack_corpus(tokenizer: Tokenizer, docs: Iterable[str]):
    """Tokenise every document as ``[BOS] + ids + [BOS]`` and pack them back to
    back: returns ``(corpus, doc_starts)``, an int32 array of all tokens and an
    int64 array of ``len(docs) + 1`` offsets (document d is
    ``corpus[doc_starts[d]:doc_starts[d + 1]]``), as ``GPT.train_steps`` takes.

    Vectorised, a chunk of documents at a time: the chunk is joined with
    newlines and the document lengths are found at the newlines (documents
    that contain a newline themselves are measured one by one instead); then
    the kept code points (1 byte per character for ASCII text) are mapped to ids
    through a lookup table and written between the BOS tokens of the
    preallocated corpus.  Raises DataError (as :meth:`Tokenizer.encode`)
    for a character not in the vocabulary."""
    import numpy as np  # a run-time dependency of the package

    if not isinstance(docs, Documents):
        docs = docs if isinstance(docs, (list, tuple)) else list(docs)
    if not len(docs):
        raise DataError("there are no documents to train on")
    bos = tokenizer.bos
    if bos > np.iinfo(np.int32).max:
        raise DataError("the vocabulary is too large for int32 token ids")
    table = _lookup_table(tokenizer.uchars)
    if isinstance(docs, Documents):
        return _pack_documents(tokenizer, docs, table)
    # pass 1: the code points and the documents' lengths (from the newlines of each
    # joined chunk)
    chunks, all_lens = [], []
    lo = 0
    for chunk, text in _joined_chunks(docs, "\n"):
        k = len(chunk)
        cps = _code_points(text)
        nl = np.flatnonzero(cps == 10)
        if nl.size == k - 1:  # no document of the chunk contains a newline
            bounds = np.empty(k + 1, dtype=np.int64)
            bounds[0], bounds[-1] = -1, cps.size
            bounds[1:-1] = nl
            lens = np.diff(bounds) - 1
            by_newlines = True
        else:  # some do (documents given through the API): measure them one by one
            lens = np.array(list(map(len, chunk)), dtype=np.int64)
            cps = _code_points("".join(chunk))
            by_newlines = False
        # keep the code points (1 byte per character for ASCII), not the text
        chunks.append([lo, lo + k, by_newlines, cps])
        all_lens.append(lens)
        lo += k
        del cps, nl, text
    lens = all_lens[0] if len(all_lens) == 1 else np.concatenate(all_lens)
    del all_lens
    starts = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lens + 2, out=starts[1:])
    del lens
    # pass 2: ids between the BOS tokens, written into the preallocated corpus
    corpus = np.full(int(starts[-1]), bos, dtype=np.int32)
    for entry in chunks:
        lo, hi, by_newlines, cps = entry
        entry[3] = None
        ids = table[cps] if cps.size else np.empty(0, dtype=np.int32)
        nl = np.flatnonzero(cps == 10) if by_newlines else None
        del cps
        if nl is not None:
            ids[nl] = bos
        if ids.size and int(ids.min()) < 0:
            for doc in docs[lo:hi]:
                tokenizer.encode(doc)  # raises DataError naming the unknown characters
        seg_lo, seg_hi = int(starts[lo]), int(starts[hi])
        mask = np.ones(seg_hi - seg_lo, dtype=bool)
        if nl is not None:
            # [BOS] + ids + [BOS], every newline (already BOS) followed by a second BOS
            mask[0] = mask[-1] = False
            mask[nl + 2 + np.arange(nl.size, dtype=np.int64)] = False
        else:
            mask[starts[lo:hi] - seg_lo] = False
            mask[starts[lo + 1:hi + 1] - 1 - seg_lo] = False
        corpus[seg_lo:seg_hi][mask] = ids
        del ids, mask, nl
    return corpus, starts


def _pack_documents(tokenizer: Tokenizer, docs: Documents, table):
    """:func:`pack_corpus` of a :class:`Documents`: its text already is the
    documents joined with newlines, so each chunk's ids are ``table`` of
    its code points (a newline, after each document, is the closing BOS) and
    go to the corpus after each document's opening BOS."""
    import numpy as np

    bos = tokenizer.bos
    n = len(docs)
    first = int(docs.starts[0])
    # document d: its characters are at docs.starts[d] - first - d + 2 d + 1 of the corpus
    starts = (docs.starts - first) + np.arange(n + 1, dtype=np.int64)
    corpus = np.full(int(starts[-1]), bos, dtype=np.int32)
    for lo, hi in docs.chunks():
        ids = table[docs.joined_range(lo, hi)]
        ends = docs.starts[lo + 1:hi + 1] - int(docs.starts[lo])   # after each document
        ids[ends - 1] = bos
        if ids.size and int(ids.min()) < 0:
            bad = int(np.argmax(ids < 0))
            tokenizer.encode(docs[lo + int(np.searchsorted(ends, bad, side="right"))])
        seg_lo, seg_hi = int(starts[lo]), int(starts[hi])
        mask = np.ones(seg_hi - seg_lo, dtype=bool)
        mask[starts[lo:hi] - seg_lo] = False                  # the opening BOS of each
        corpus[seg_lo:seg_hi][mask] = ids
        del ids, mask, ends
    return corpus, starts


# --------------------------------------------------------------------------- vectorised helpers

_MAX_CODE_POINT = 0x10FFFF
_CHUNK_CHARS = 1 << 23  # about this many characters per chunk
_FIRST_CHUNK_DOCS = 1 << 16


def _joined_chunks(docs: Sequence[str], sep: str) -> Iterator[tuple]:
    """``(docs[lo:hi], sep.join(docs[lo:hi]))`` for consecutive ranges of about
    ``_CHUNK_CHARS`` characters (at least one document each), sized from the
    previous chunk without measuring every document."""
    lo, k, n = 0, _FIRST_CHUNK_DOCS, len(docs)
    while lo < n:
        hi = min(n, lo + k)
        chunk = docs[lo:hi]
        text = sep.join(chunk)
        yield chunk, text
        per_doc = max(1.0, len(text) / len(chunk))
        k = max(1, min(4 * k, int(_CHUNK_CHARS / per_doc)))
        lo = hi


def _text_pieces(docs: Sequence[str], sep: str) -> Iterator[str]:
    """Strings of at most about ``_CHUNK_CHARS`` characters whose
    concatenation is ``sep.join(docs)`` (a long document is cut)."""
    first = True
    for _, text in _joined_chunks(docs, sep):
        if not first and sep:
            yield sep
        first = False
        if len(text) <= _CHUNK_CHARS:
            yield text
        else:
            for lo in range(0, len(text), _CHUNK_CHARS):
                yield text[lo:lo + _CHUNK_CHARS]


def _code_points(text: str):
    """The code points of ``text`` as a uint8 (ASCII text) or uint32 array (lone
    surrogates included)."""
    import numpy as np

    if text.isascii():  # O(1) in CPython: 1 byte per character, 4x less memory
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _lookup_table(uchars: Sequence[str]):
    """int32 table: code point -> token id, -1 for characters not in ``uchars``."""
    import numpy as np

    table = np.full(_MAX_CODE_POINT + 1, -1, dtype=np.int32)
    if uchars:
        table[_code_points("".join(uchars))] = np.arange(len(uchars), dtype=np.int32)
    return table


def _distinct_chars(docs: Iterable[str]) -> List[str]:
    """``sorted(set("".join(docs)))``, computed on code-point arrays a chunk at a time."""
    import numpy as np

    if isinstance(docs, Documents):
        return [chr(c) for c in docs.distinct_code_points().tolist()]
    docs = docs if isinstance(docs, (list, tuple)) else list(docs)
    seen = np.zeros(_MAX_CODE_POINT + 1, dtype=bool)
    for text in _text_pieces(docs, ""):
        if text:
            seen[_code_points(text)] = True
    return [chr(c) for c in np.flatnonzero(seen).tolist()]


# --------------------------------------------------------------------------- text mode
#: A text-mode run's windows: step s, example b is the window of block_size + 1
#: tokens starting at offset ``window_offsets(seed, s * batch + b, ...)``.
_GOLDEN = 0x9E3779B97F4A7C15


def read_text(path: PathArg) -> str:
    """The whole UTF-8 text of a file as one character stream: newlines
    (``\\r\\n`` and ``\\r`` become ``\\n``), indentation and blank lines kept, a
    leading byte order mark dropped.  Raises DataFileNotFound / DataError as
    :func:`read_documents` does."""
    path = Path(os.fspath(path))
    try:
        limit = safeio.max_bytes(safeio.MAX_DATA_ENV, safeio.DEFAULT_MAX_DATA_BYTES)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    try:   # a regular file of a bounded size only (no FIFO, device, directory)
        raw = safeio.read_regular_file(path, what="data file", error=DataError, limit=limit,
                                       env_var=safeio.MAX_DATA_ENV, not_found=DataFileNotFound)
    except DataFileNotFound:
        raise DataFileNotFound(f"data file not found: {path}; check the path") from None
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{path} looks like a binary file (NUL byte at byte offset {nul})")
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not valid UTF-8 (invalid byte at byte offset "
                        f"{exc.start + bom}); re-save it with UTF-8 encoding") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text:
        raise DataError(f"{path} is empty")
    return text


def load_text(data: PathArg | None = None, *, fetch: bool = True) -> tuple[str, str]:
    """Text mode's :func:`load_documents`: the text and a one-line description
    (the file ``data``, else ``input.txt``, else the built-in names, one per
    line)."""
    if data is not None:
        text = read_text(data)
        return text, f"data: {os.fspath(data)} ({len(text)} characters, text mode)"
    input_txt = Path.cwd() / "input.txt"
    if input_txt.exists():
        text = read_text(input_txt)
        return text, f"data: input.txt in the current directory ({len(text)} characters, text mode)"
    docs, description = builtin_names(fetch)
    text = "\n".join(docs) + "\n"
    return text, f"{description}, as one text of {len(text)} characters (text mode)"


def encode_text(tokenizer: Tokenizer, text: str):
    """The token ids of ``text`` as an int32 array (no BOS)."""
    import numpy as np

    table = _lookup_table(tokenizer.uchars)
    ids = np.empty(len(text), dtype=np.int32)
    for lo in range(0, len(text), _CHUNK_CHARS):   # a lookup table, a chunk at a time
        piece = text[lo:lo + _CHUNK_CHARS]
        chunk = table[_code_points(piece)]
        if chunk.size and int(chunk.min()) < 0:
            tokenizer.encode(text)  # raises the detailed DataError
        ids[lo:lo + len(piece)] = chunk
        del piece, chunk
    return ids


def _splitmix64(x):
    """SplitMix64's output function of uint64 array ``x`` (wrapping arithmetic)."""
    import numpy as np

    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def window_offsets(seed: int, first: int, count: int, n_offsets: int):
    """Offsets of the windows ``first .. first + count - 1`` of a text-mode run
    (window i = step s's example b for i = s * batch + b), each in
    ``[0, n_offsets)``: ``splitmix64(key + (i + 1) * golden) % n_offsets`` with
    ``key`` from the SHA-256 of the seed.  A pure function of (seed, i), so any
    chunking of the steps, and a resume, draws the same windows."""
    import numpy as np

    key = int.from_bytes(hashlib.sha256(f"microgpt_c.text-windows:{int(seed)}".encode())
                         .digest()[:8], "little")
    i = np.arange(first + 1, first + count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = np.uint64(key) + i * np.uint64(_GOLDEN)
    return (_splitmix64(x) % np.uint64(n_offsets)).astype(np.int64)


def pack_windows(ids, block_size: int, seed: int, step0: int, n_steps: int, batch: int):
    """The packed corpus of steps ``step0 .. step0 + n_steps - 1`` of a
    text-mode run over the token ids ``ids``: ``n_steps * batch`` windows of
    ``block_size + 1`` tokens, the one of (step s, example b) at document
    index ``(s * batch + b) % (n_steps * batch)`` -- the document
    ``GPT.train_steps`` trains step s's example b on.  Returns
    ``(corpus, doc_starts)``."""
    import numpy as np

    width = block_size + 1
    n_offsets = int(ids.shape[0]) - width + 1
    if n_offsets < 1:
        raise DataError(f"the training text has {ids.shape[0]} characters; text mode needs at "
                        f"least block_size + 1 = {width}")
    n = n_steps * batch
    first = step0 * batch
    offsets = window_offsets(seed, first, n, n_offsets)
    slots = (np.arange(first, first + n, dtype=np.int64)) % n
    order = np.empty(n, dtype=np.int64)
    order[slots] = offsets
    corpus = ids[order[:, None] + np.arange(width, dtype=np.int64)[None, :]].reshape(-1)
    starts = np.arange(n + 1, dtype=np.int64) * width
    return np.ascontiguousarray(corpus, dtype=np.int32), starts


def text_eval_windows(ids, block_size: int):
    """The validation windows of a held-out text: consecutive windows of
    ``block_size + 1`` tokens at stride ``block_size`` (every token but the
    first of the split is predicted once); a split shorter than that is one
    window of all of it (at least 2 tokens)."""
    width = block_size + 1
    n = int(ids.shape[0])
    if n < 2:
        return []
    if n < width:
        return [ids]
    return [ids[i:i + width] for i in range(0, n - width + 1, block_size)]
