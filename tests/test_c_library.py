"""The C library as a C user gets it: `make` and `make install PREFIX=<tmp>` from this
source tree, then the README's C snippet built with pkg-config against the shared and
the static library, run on a converted model and compared with the Python API. Also:
only the public API is exported, the sources build without warnings as C11 with gcc
and clang, and every source file is in the one source list."""
import glob
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import lstm_infer

from clib_helpers import ROOT, build_dir, have_toolchain

pytestmark = pytest.mark.skipif(not have_toolchain(), reason="needs make and a C compiler")
MODEL = os.path.join(ROOT, "tests", "fuzz", "corpus", "valid-lstm-bi-proj-stack2")


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def readme_snippet():
    with open(os.path.join(ROOT, "README.md")) as fh:
        section = fh.read().split("## Using it from C", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```c\n(.*?)```", section, re.S).group(1)


def public_functions():
    with open(os.path.join(ROOT, "src", "lstm_infer.h")) as fh:
        return set(re.findall(r"^LSTM_API [^(]*?\b(lstm_\w+)\(", fh.read(), re.M))


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    p = tmp_path_factory.mktemp("prefix")
    run(["make", "-C", ROOT, f"BUILD={build_dir()}", "install", f"PREFIX={p}"])
    return p


def test_install_holds_the_libraries_pc_and_public_header_only(prefix):
    files = sorted(os.path.relpath(f, prefix) for f in glob.glob(str(prefix / "**"), recursive=True)
                   if not os.path.isdir(f))
    version = lstm_infer.__version__
    assert files == ["include/lstm_infer.h", "lib/liblstm_infer.a", "lib/liblstm_infer.so",
                     "lib/liblstm_infer.so.0", f"lib/liblstm_infer.so.{version}", "lib/pkgconfig/lstm_infer.pc"]
    assert os.readlink(prefix / "lib" / "liblstm_infer.so") == "liblstm_infer.so.0"
    assert os.readlink(prefix / "lib" / "liblstm_infer.so.0") == f"liblstm_infer.so.{version}"
    if shutil.which("readelf"):
        assert "[liblstm_infer.so.0]" in run(["readelf", "-d", str(prefix / "lib" / "liblstm_infer.so")])


@pytest.mark.skipif(shutil.which("pkg-config") is None, reason="needs pkg-config")
@pytest.mark.parametrize("linking", ["shared", "static"])
def test_readme_snippet_builds_with_pkg_config_and_matches_python(prefix, tmp_path, linking):
    src = tmp_path / "run.c"
    src.write_text(readme_snippet())
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib" / "pkgconfig"))
    flags = run(["pkg-config", "--cflags", "--libs"] + (["--static"] if linking == "static" else [])
                + ["lstm_infer"], env=env).split()
    cc = os.environ.get("CC", "cc")
    exe = str(tmp_path / "run")
    run([cc, "-std=c11", "-Wall", "-Wextra", "-pedantic", "-Werror", str(src)] + flags
        + (["-static"] if linking == "static" else []) + ["-o", exe])
    run_env = dict(os.environ)
    if linking == "shared":
        run_env["LD_LIBRARY_PATH"] = str(prefix / "lib")
    elif shutil.which("readelf"):
        assert "liblstm_infer" not in subprocess.run(["readelf", "-d", exe], capture_output=True, text=True).stdout
    got = np.array(run([exe, MODEL], env=run_env).split(), dtype=np.float32)

    model = lstm_infer.load(MODEL)
    I = model.config["input_size"]
    x = (0.01 * (np.arange(5 * I) % 17)).astype(np.float32).reshape(5, 1, I)
    want = model(x)[0][-1, 0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm")
def test_shared_library_exports_only_the_public_api():
    out = run(["nm", "-D", "--defined-only", os.path.join(build_dir(), "liblstm_infer.so")])
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert exported == public_functions()
    assert "lstm_model_load" in exported and "lstm_active_kernels" not in exported


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_builds_without_warnings_as_c11(tmp_path, cc):
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not installed")
    # the Makefile builds with -std=c11 -Wall -Wextra -pedantic; -Werror makes any warning fail
    run(["make", "-j2", "-C", ROOT, f"BUILD={tmp_path}", f"CC={cc}", "CFLAGS=-O1 -Werror", "all"])


def test_one_source_list():
    """Every C file in src/ is in src/sources.mk, the list make, tests/c and setup.py read."""
    with open(os.path.join(ROOT, "src", "sources.mk")) as fh:
        listed = {w for line in fh if ":=" in line and not line.startswith("#")
                  for w in line.split(":=", 1)[1].split()}
    for path in glob.glob(os.path.join(ROOT, "src", "*.c")):
        assert os.path.relpath(path, ROOT) in listed
    with open(os.path.join(ROOT, "setup.py")) as fh:
        assert "sources.mk" in fh.read()
