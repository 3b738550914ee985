"""Tests for microgpt_c.data: documents, tokenizer and the built-in names data set.

No test touches the network: ``_download`` is replaced in every test and the
cache directory is a temporary one.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import os
import socket
import sys
import urllib.error
from pathlib import Path

import pytest

from microgpt_c import data
from microgpt_c.data import (
    DataError,
    DataFileNotFound,
    Tokenizer,
    builtin_names,
    cache_dir,
    load_documents,
    read_documents,
    sha256_of_documents,
)

SHARED_NAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "names.txt"
FAKE_NAMES = b"emma\nolivia\nava\n"
ALPHABET = "abcdefghijklmnopqrstuvwxyz"
REAL_DOWNLOAD = data._download  # kept before the autouse fixture replaces it


class Downloads:
    """Stand-in for ``data._download``: records calls, returns bytes or raises."""

    def __init__(self, result: bytes | BaseException | None = None) -> None:
        self.result = result
        self.calls: list[tuple[str, float]] = []

    def __call__(self, url: str, timeout: float) -> bytes:
        self.calls.append((url, timeout))
        if self.result is None:
            pytest.fail("the network must not be used here")
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Temporary cache, online mode, an empty working directory and no real downloads."""
    monkeypatch.setenv("MICROGPT_C_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MICROGPT_C_OFFLINE", raising=False)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(data, "_download", Downloads())


def use_download(monkeypatch, result: bytes | BaseException) -> Downloads:
    downloads = Downloads(result)
    monkeypatch.setattr(data, "_download", downloads)
    return downloads


def trust(monkeypatch, raw: bytes) -> None:
    """Make ``raw`` the expected content of the makemore names file."""
    monkeypatch.setattr(data, "NAMES_SHA256", hashlib.sha256(raw).hexdigest())


def cached_file() -> Path:
    return cache_dir() / "names.txt"


def write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.fixture
def fake_census(tmp_path, monkeypatch):
    """A small stand-in for the 'names' package, installed as sys.modules['names']."""
    package = tmp_path / "fake_site" / "names"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "dist.female.first").write_text(
        "MARY           2.629  2.629      1\n"
        "PATRICIA       1.073  3.702      2\n"
        "\n"
        "JEAN           0.500  4.202      3\n"
    )
    (package / "dist.male.first").write_text(
        "JAMES          3.318  3.318      1\n"
        "JEAN           0.200  3.518      2\n"
        "MARY           0.100  3.618      3\n"
        "JOHN           3.271  6.889      4\n"
    )
    spec = importlib.util.spec_from_file_location(
        "names", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "names", module)
    return ["mary", "patricia", "jean", "james", "john"]


# --------------------------------------------------------------------------- read_documents


def test_read_documents_strips_lines_and_skips_blank_ones(tmp_path):
    path = write(tmp_path / "d.txt", b"  emma \n\n\t\nolivia\r\nmary ann\r\n   \n\xc3\xa9lise")
    assert read_documents(path) == ["emma", "olivia", "mary ann", "élise"]


def test_read_documents_accepts_str_paths_and_old_mac_line_endings(tmp_path):
    path = write(tmp_path / "d.txt", b"ab\rcd\r")
    assert read_documents(str(path)) == ["ab", "cd"]


def test_read_documents_ignores_utf8_bom(tmp_path):
    path = write(tmp_path / "d.txt", b"\xef\xbb\xbfemma\nava\n")
    assert read_documents(path) == ["emma", "ava"]


def test_missing_file_is_both_file_not_found_and_data_error(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(DataFileNotFound) as excinfo:
        read_documents(path)
    assert isinstance(excinfo.value, FileNotFoundError)
    assert isinstance(excinfo.value, DataError)
    assert isinstance(excinfo.value, ValueError)
    message = one_line_error(excinfo)
    assert str(path) in message and "not found" in message


def test_directory_is_rejected(tmp_path):
    with pytest.raises(DataError, match="is a directory") as excinfo:
        read_documents(tmp_path)
    assert str(tmp_path) in one_line_error(excinfo)


@pytest.mark.parametrize("raw", [b"", b"\n\n", b"  \t \r\n \n", b"\xef\xbb\xbf \n"])
def test_file_without_documents_is_rejected(tmp_path, raw):
    path = write(tmp_path / "d.txt", raw)
    with pytest.raises(DataError, match="contains no documents") as excinfo:
        read_documents(path)
    assert str(path) in one_line_error(excinfo)


def test_binary_file_is_rejected(tmp_path):
    path = write(tmp_path / "d.bin", b"abc\x00def\n")
    with pytest.raises(DataError, match="binary") as excinfo:
        read_documents(path)
    message = one_line_error(excinfo)
    assert str(path) in message and "offset 3" in message


@pytest.mark.parametrize(("raw", "offset"), [(b"ab\nc\xffd\n", 4), (b"\xef\xbb\xbfab\xe9", 5)])
def test_invalid_utf8_is_rejected_with_byte_offset(tmp_path, raw, offset):
    path = write(tmp_path / "d.txt", raw)
    with pytest.raises(DataError, match="not valid UTF-8") as excinfo:
        read_documents(path)
    message = one_line_error(excinfo)
    assert str(path) in message and f"byte offset {offset}" in message


def test_permission_denied_is_a_data_error(tmp_path, monkeypatch):
    path = write(tmp_path / "d.txt", b"emma\n")

    from microgpt_c import safeio

    real_open = os.open

    def denied(p, *args, **kwargs):  # data files are opened with os.open (safeio)
        if os.fspath(p) == str(path):
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(safeio.os, "open", denied)
    with pytest.raises(DataError, match="permission denied") as excinfo:
        read_documents(path)
    assert str(path) in one_line_error(excinfo)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="needs non-root POSIX")
def test_unreadable_file_is_a_data_error(tmp_path):
    path = write(tmp_path / "d.txt", b"emma\n")
    path.chmod(0)
    try:
        with pytest.raises(DataError, match="permission denied"):
            read_documents(path)
    finally:
        path.chmod(0o600)


# --------------------------------------------------------------------------- tokenizer


def test_names_like_vocabulary():
    tok = Tokenizer(["zoe", "emma", "quinn", "jax", "bradley", "kyle", "stvwhfgcp"])
    assert tok.uchars == list(ALPHABET)
    assert (tok.bos, tok.vocab_size) == (26, 27)
    assert tok.encode("abz") == [0, 1, 25]
    assert tok.doc_tokens("emma") == [26, 4, 12, 12, 0, 26]


def test_ids_are_indices_of_sorted_distinct_characters():
    tok = Tokenizer(["cab", "b a"])
    assert tok.uchars == [" ", "a", "b", "c"]
    assert tok.encode("abc ") == [1, 2, 3, 0]


def test_round_trip_including_non_ascii():
    docs = ["héllo wörld", "日本語", "a\tb"]
    tok = Tokenizer(docs)
    for doc in docs:
        assert tok.decode(tok.encode(doc)) == doc
        assert tok.doc_tokens(doc) == [tok.bos, *tok.encode(doc), tok.bos]
    assert tok.decode([]) == ""
    assert tok.doc_tokens("") == [tok.bos, tok.bos]


def test_single_distinct_character_is_allowed():
    tok = Tokenizer(["aaa", "a"])
    assert (tok.uchars, tok.bos, tok.vocab_size) == (["a"], 1, 2)
    assert tok.doc_tokens("aa") == [1, 0, 0, 1]


@pytest.mark.parametrize("docs", [[], [""]])
def test_documents_without_characters_are_rejected(docs):
    with pytest.raises(DataError, match="no characters"):
        Tokenizer(docs)


def test_encode_names_unknown_characters():
    tok = Tokenizer(["abc"])
    with pytest.raises(DataError) as excinfo:
        tok.encode("abZxa!")
    message = one_line_error(excinfo)
    assert "'Z'" in message and "'x'" in message and "'!'" in message
    assert "'a'" not in message


@pytest.mark.parametrize("bad", [3, 4, -1, 100])
def test_decode_rejects_bos_and_out_of_range_ids(bad):
    tok = Tokenizer(["abc"])
    assert tok.bos == 3
    with pytest.raises(ValueError, match=f"token id {bad}"):
        tok.decode([0, bad, 1])


def test_decode_rejects_non_integer_ids():
    with pytest.raises(TypeError):
        Tokenizer(["abc"]).decode([0.0])


def test_to_dict_from_dict_round_trip_through_json():
    tok = Tokenizer(["hello", "world", "日本"])
    saved = json.loads(json.dumps(tok.to_dict()))
    assert saved == {"uchars": "dehlorw日本"}
    restored = Tokenizer.from_dict(saved)
    assert restored == tok
    assert restored.uchars == tok.uchars
    assert (restored.bos, restored.vocab_size) == (tok.bos, tok.vocab_size)
    assert restored.encode("world") == tok.encode("world")


@pytest.mark.parametrize(
    "saved", [{}, {"uchars": ""}, {"uchars": "ba"}, {"uchars": "aab"}, {"uchars": ["a"]}, "ab"]
)
def test_from_dict_rejects_malformed_data(saved):
    with pytest.raises(DataError, match="tokenizer"):
        Tokenizer.from_dict(saved)


def test_sha256_of_documents():
    expected = hashlib.sha256("emma\nélise".encode("utf-8")).hexdigest()
    assert sha256_of_documents(["emma", "élise"]) == expected
    assert sha256_of_documents(iter(["emma", "élise"])) == expected


# --------------------------------------------------------------------------- cache_dir


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROGPT_C_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("MICROGPT_C_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "microgpt_c"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "microgpt_c"


# --------------------------------------------------------------------------- builtin_names


def test_real_download_function_reads_a_url(tmp_path):
    path = write(tmp_path / "served.txt", FAKE_NAMES)
    assert REAL_DOWNLOAD(path.as_uri(), 5.0) == FAKE_NAMES  # a file:// URL: no network


def test_successful_download_is_verified_cached_and_reused(monkeypatch):
    trust(monkeypatch, FAKE_NAMES)
    downloads = use_download(monkeypatch, FAKE_NAMES)
    docs, description = builtin_names(timeout=3.5)
    assert docs == ["emma", "olivia", "ava"]
    assert downloads.calls == [(data.NAMES_URL, 3.5)]
    assert "makemore" in description and "3 names" in description
    assert "\n" not in description
    assert cached_file().read_bytes() == FAKE_NAMES
    assert sorted(p.name for p in cache_dir().iterdir()) == ["names.txt"]  # no temp files left

    use_download(monkeypatch, None)  # a second call must not download
    docs, description = builtin_names()
    assert docs == ["emma", "olivia", "ava"]
    assert f"cached at {cached_file()}" in description


def test_good_cached_file_is_used_without_download(monkeypatch):
    trust(monkeypatch, FAKE_NAMES)
    cache_dir().mkdir()
    write(cached_file(), FAKE_NAMES)
    monkeypatch.setenv("MICROGPT_C_OFFLINE", "1")
    docs, description = builtin_names()
    assert docs == ["emma", "olivia", "ava"]
    assert description == f"using the makemore names data set (3 names, cached at {cached_file()})"


def test_corrupted_cached_file_is_replaced_by_a_fresh_download(monkeypatch):
    trust(monkeypatch, FAKE_NAMES)
    cache_dir().mkdir()
    write(cached_file(), b"emma\nolivi")
    downloads = use_download(monkeypatch, FAKE_NAMES)
    docs, _ = builtin_names()
    assert docs == ["emma", "olivia", "ava"]
    assert len(downloads.calls) == 1
    assert cached_file().read_bytes() == FAKE_NAMES


def test_corrupted_cached_file_offline_falls_back(monkeypatch, fake_census):
    trust(monkeypatch, FAKE_NAMES)
    cache_dir().mkdir()
    write(cached_file(), b"\x00\xff garbage")
    monkeypatch.setenv("MICROGPT_C_OFFLINE", "1")
    docs, description = builtin_names()
    assert docs == fake_census
    assert "MICROGPT_C_OFFLINE=1" in description


def test_sha_mismatch_falls_back_and_caches_nothing(monkeypatch, fake_census):
    trust(monkeypatch, FAKE_NAMES)
    use_download(monkeypatch, FAKE_NAMES + b"mallory\n")
    docs, description = builtin_names()
    assert docs == fake_census
    assert "SHA-256" in description and description.startswith("notice: ")
    assert not cached_file().exists()


def test_failed_download_falls_back_to_census_names(monkeypatch, fake_census):
    use_download(monkeypatch, OSError("Network is unreachable"))
    docs, description = builtin_names()
    # lower-case, female file first, file order kept, first occurrence wins
    assert docs == ["mary", "patricia", "jean", "james", "john"] == fake_census
    assert description == (
        "notice: could not fetch the makemore names (OSError: Network is unreachable); "
        "using the US Census first names from the 'names' package instead (5 names)"
    )


@pytest.mark.parametrize(
    "error",
    [
        urllib.error.URLError("no network"),
        urllib.error.HTTPError(data.NAMES_URL, 404, "Not Found", None, None),
        socket.timeout("timed out"),
        TimeoutError(),
        http.client.IncompleteRead(b"emm"),
        ValueError("weird\nmultiline\nerror"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_any_download_error_falls_back(monkeypatch, fake_census, error):
    use_download(monkeypatch, error)
    docs, description = builtin_names()
    assert docs == fake_census
    assert description.startswith("notice: could not fetch the makemore names (")
    assert "\n" not in description


def test_no_fetch_and_offline_never_download(monkeypatch, fake_census):
    docs, description = builtin_names(fetch=False)
    assert docs == fake_census and "downloading is disabled" in description
    monkeypatch.setenv("MICROGPT_C_OFFLINE", "1")
    docs, description = builtin_names()
    assert docs == fake_census and "MICROGPT_C_OFFLINE=1" in description


def test_unwritable_cache_still_uses_the_download(tmp_path, monkeypatch):
    blocker = write(tmp_path / "a_file", b"")
    monkeypatch.setenv("MICROGPT_C_CACHE", str(blocker / "cache"))
    trust(monkeypatch, FAKE_NAMES)
    use_download(monkeypatch, FAKE_NAMES)
    docs, description = builtin_names()
    assert docs == ["emma", "olivia", "ava"]
    assert "not cached" in description and "\n" not in description


def test_both_sources_failing_raises_data_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "names", None)  # makes `import names` fail
    use_download(monkeypatch, urllib.error.URLError("no network"))
    with pytest.raises(DataError) as excinfo:
        builtin_names()
    message = one_line_error(excinfo)
    assert "no network" in message and "'names' package" in message and "--data PATH" in message


def test_census_names_from_the_real_names_package(monkeypatch):
    pytest.importorskip("names")
    use_download(monkeypatch, OSError("offline"))
    docs, description = builtin_names()
    assert len(docs) > 5000 and len(set(docs)) == len(docs)
    assert all(doc.isalpha() and doc.islower() for doc in docs)
    assert docs[0] == "mary"  # the first line of dist.female.first
    assert "james" in docs
    assert f"({len(docs)} names)" in description
    assert Tokenizer(docs).vocab_size == 27


# --------------------------------------------------------------------------- load_documents


def test_load_documents_explicit_path_wins_over_input_txt(tmp_path):
    write(Path("input.txt"), b"from input\n")
    path = write(tmp_path / "mine.txt", b"a\nb\n")
    docs, description = load_documents(path)
    assert docs == ["a", "b"]
    assert description == f"data: {path} (2 documents)"


def test_load_documents_explicit_missing_path_raises_even_with_input_txt(tmp_path):
    write(Path("input.txt"), b"from input\n")
    with pytest.raises(DataFileNotFound):
        load_documents(tmp_path / "missing.txt")


def test_load_documents_uses_input_txt_in_cwd():
    write(Path("input.txt"), b"x\ny\nz\n")
    docs, description = load_documents()
    assert docs == ["x", "y", "z"]
    assert "input.txt" in description and "3 documents" in description


def test_load_documents_reports_a_bad_input_txt():
    write(Path("input.txt"), b"\n \n")
    with pytest.raises(DataError, match="input.txt contains no documents"):
        load_documents()


def test_load_documents_falls_back_to_builtin_names(monkeypatch):
    trust(monkeypatch, FAKE_NAMES)
    use_download(monkeypatch, FAKE_NAMES)
    docs, description = load_documents()
    assert docs == ["emma", "olivia", "ava"]
    assert "makemore" in description


def test_load_documents_passes_fetch_through(fake_census):
    docs, description = load_documents(fetch=False)
    assert docs == fake_census and "downloading is disabled" in description


# --------------------------------------------------------------------------- the real names.txt


@pytest.mark.skipif(not SHARED_NAMES.is_file(), reason=f"{SHARED_NAMES} is absent")
def test_real_makemore_names_file(monkeypatch):
    raw = SHARED_NAMES.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == data.NAMES_SHA256
    docs = read_documents(SHARED_NAMES)
    assert len(docs) == 32033
    tok = Tokenizer(docs)
    assert (tok.vocab_size, tok.bos, "".join(tok.uchars)) == (27, 26, ALPHABET)
    assert sha256_of_documents(docs) == data.NAMES_SHA256

    cache_dir().mkdir()
    write(cached_file(), raw)
    docs_from_cache, description = builtin_names()  # _download fails the test if called
    assert docs_from_cache == docs
    assert "32033 names" in description and str(cached_file()) in description
