"""Packaging: ``python -m build`` makes an sdist (with csrc/ and the Cython
sources) and, from it, a wheel (without C sources) that installs into a fresh
virtual environment and imports, trains and samples with no compiler in reach.

Slow (it compiles the package): marked ``slow``; run it with
``python -m pytest -m slow tests/test_wheel.py``.  Skips if ``build`` cannot
be installed or the package index is unreachable."""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

NETWORK_TROUBLE = ("Could not find a version", "No matching distribution", "Temporary failure",
                   "Name or service not known", "Connection refused", "NewConnectionError",
                   "ProxyError", "Network is unreachable", "Failed to establish")
IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "*.so",
                                "*.pyd", "*.o", ".pytest_cache", ".benchmarks", ".venv*",
                                "_core.c", "_kernels.c", "_build_config.py", "input.txt",
                                ".hypothesis", ".mypy_cache")


def _run(cmd, **kw):
    # outside the checkout: its build/ directory (left by `pip install .`) would
    # otherwise shadow the `build` package as a namespace package
    kw.setdefault("cwd", tempfile.gettempdir())
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def _skip_if_offline(proc, what):
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 and any(s in text for s in NETWORK_TROUBLE):
        pytest.skip(f"{what}: package index unreachable")


def _venv(path: Path) -> Path:
    proc = _run([sys.executable, "-m", "venv", path])
    if proc.returncode != 0:
        pytest.skip(f"cannot create a virtual environment: {proc.stderr.strip()[-300:]}")
    return path / ("Scripts" if os.name == "nt" else "bin") / "python"


def _build_frontend(tmp: Path) -> Path:
    """A Python with the ``build`` package: this one, or a fresh venv with it."""
    if _run([sys.executable, "-c", "import build.__main__"]).returncode == 0:
        return Path(sys.executable)
    py = _venv(tmp / "tools")
    proc = _run([py, "-m", "pip", "install", "-q", "build"])
    if proc.returncode != 0:
        pytest.skip(f"cannot install 'build': {(proc.stderr or proc.stdout).strip()[-300:]}")
    return py


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    py = _build_frontend(tmp)
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    # test-only speed-up: compile the two extensions in parallel (goes into the sdist too)
    (src / "setup.cfg").write_text(f"[build_ext]\nparallel = {max(2, os.cpu_count() or 1)}\n")
    out = tmp / "dist"
    # sdist first, then the wheel built from the unpacked sdist: proves the sdist builds alone
    # -O0 (appended after -O3, so it wins): this test is about packaging, not speed
    env = {**os.environ, "MICROGPT_C_CFLAGS": "-O0"}
    proc = _run([py, "-m", "build", "--outdir", out, src], timeout=900, env=env)
    _skip_if_offline(proc, "python -m build")
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    sdists, wheels = list(out.glob("*.tar.gz")), list(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(out.iterdir())
    return tmp, sdists[0], wheels[0]


def test_sdist_contents(dist):
    _, sdist, _ = dist
    with tarfile.open(sdist) as tf:
        names = [n.split("/", 1)[1] for n in tf.getnames() if "/" in n]
    for required in ("pyproject.toml", "setup.py", "MANIFEST.in", "CHANGELOG.md", "LICENSE",
                     "csrc/microgpt.h", "csrc/train.c", "csrc/model_impl.h",
                     "csrc/ops/matmul.h",
                     "src/microgpt_c/_core.pyx", "src/microgpt_c/_kernels.pxi",
                     "src/microgpt_c/_cmicrogpt.pxd", "src/microgpt_c/_version.py",
                     "src/microgpt_c/py.typed", "src/microgpt_c/_core.pyi"):
        assert required in names, required
    assert not [n for n in names if n.endswith((".so", ".pyd", ".o"))]
    assert "src/microgpt_c/_core.c" not in names and "src/microgpt_c/_build_config.py" not in names


def test_wheel_contents(dist):
    _, _, wheel = dist
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    pkg = [n for n in names if n.startswith("microgpt_c/")]
    assert any(n.startswith("microgpt_c/_core.") and n.endswith((".so", ".pyd")) for n in pkg)
    # the kernels are compiled into _core; _kernels.py re-exports them
    assert "microgpt_c/_kernels.py" in names
    for required in ("microgpt_c/py.typed", "microgpt_c/_core.pyi", "microgpt_c/_kernels.pyi",
                     "microgpt_c/_build_config.py", "microgpt_c/train.py",
                     "microgpt_c/sample.py", "microgpt_c/checkpoint.py"):
        assert required in names, required
    sources = [n for n in names if n.endswith((".c", ".h", ".pyx", ".pxd"))]
    assert sources == [], sources
    # the MIT license, in the wheel's metadata directory (PEP 639: .dist-info/licenses/)
    licenses = [n for n in names if ".dist-info/" in n and n.endswith("/LICENSE")]
    assert licenses, [n for n in names if ".dist-info/" in n]
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(licenses[0]).decode("utf-8")
    assert text.startswith("MIT License") and "microgpt_c developers" in text
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta and "License-File: LICENSE" in meta
    assert not [n for n in names if n.startswith(("csrc/", "tests/", "bench/"))]


def test_wheel_in_fresh_venv_without_compiler(dist):
    tmp, _, wheel = dist
    py = _venv(tmp / "fresh")
    work = tmp / "work"
    work.mkdir()
    # no compiler reachable: PATH holds only the venv, CC/CXX point nowhere (the
    # dependencies are wheels, except the pure-Python 'names')
    env = {"PATH": str(py.parent), "CC": "/nonexistent/cc", "CXX": "/nonexistent/c++",
           "HOME": str(work), "MICROGPT_C_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    for key in ("SYSTEMROOT", "TMPDIR", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "HTTPS_PROXY",
                "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        if key in os.environ:
            env[key] = os.environ[key]
    pip_env = {**env, **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}
    proc = _run([py, "-m", "pip", "install", "-q", "--prefer-binary", wheel], timeout=600,
                env=pip_env, cwd=work)
    _skip_if_offline(proc, "installing the wheel's dependencies")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = random.Random(0)
    (work / "docs.txt").write_text("\n".join(
        "".join(r.choice("abcdefgh") for _ in range(r.randint(3, 8))) for _ in range(200)))
    check = ("import json, microgpt_c; info = microgpt_c.build_info(); "
             "assert 'fresh' in microgpt_c.__file__, microgpt_c.__file__; "
             "print(json.dumps({'openmp': info['openmp'], 'compiler': info['compiler']}))")
    proc = _run([py, "-c", check], cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr
    assert '"compiler": null' not in proc.stdout
    train = _run([py, "-m", "microgpt_c.train", "--data", "docs.txt", "--steps", 50,
                  "--n-embd", 8, "--n-head", 2, "--block-size", 8, "--out", "run",
                  "--num-samples", 5, "-q"], cwd=work, env=env)
    assert train.returncode == 0, train.stderr
    assert train.stdout.count("sample ") == 5
    sample = _run([py, "-m", "microgpt_c.sample", "--checkpoint", "run"], cwd=work, env=env)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout == train.stdout
