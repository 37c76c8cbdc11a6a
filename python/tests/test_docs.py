"""The documentation's examples, run as written: the package installed with
`pip install --no-build-isolation ./python` into a virtual environment made
from Debian's Python (offline: PIP_NO_INDEX), and the examples of README.md
and docs/python.md run with it against a real node."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(markdown, after=None):
    text = (ROOT / markdown).read_text()
    if after is not None:
        text = text[text.index(after):]
        end = re.search(r"^#{2,3} ", text[len(after):], re.M)  # the next heading
        text = text[: len(after) + end.start()] if end else text
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.fixture(scope="module")
def venv():
    d = Path(tempfile.mkdtemp(prefix="modelreg-venv-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(d)],
                       check=True)
        env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        env.pop("PYTHONPATH", None)
        env.setdefault("MODELREG_BUILD_DIR", str(ROOT / "build"))
        install = subprocess.run([str(d / "bin" / "pip"), "install", "--no-build-isolation",
                                  str(ROOT / "python")], env=env, capture_output=True, text=True,
                                 timeout=1800)
        assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
        yield d / "bin" / "python"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def node_env():
    d = tempfile.mkdtemp(prefix="modelreg-docs-")
    sock = os.path.join(d, "node.sock")
    env = dict(os.environ, MODELREG_SOCKET=sock)
    env.pop("PYTHONPATH", None)  # the installed package, not the build tree
    p = subprocess.Popen([os.environ["MODELREG_CLI"], "serve"], env=env, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().startswith("ready unix:" + sock)
        yield env, d
    finally:
        p.terminate()
        p.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


def run(python, code, env, cwd):
    return subprocess.run([str(python), "-c", code], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_the_installed_package_is_the_one_imported(venv, node_env):
    env, d = node_env
    out = run(venv, "import modelreg; print(modelreg.__file__)", env, d)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(venv.parent.parent)), out.stdout


def test_readme_python_example_works_as_written(venv, node_env):
    env, d = node_env
    blocks = python_blocks("README.md", after="### From Python")
    assert len(blocks) == 1
    out = run(venv, blocks[0], env, d)
    assert out.returncode == 0, out.stderr
    assert "loads: 1 words: 50000" in out.stdout
    assert "copied bytes: 0 loads on the node: 1" in out.stdout


def test_docs_python_examples_work_as_written(venv, node_env):
    env, d = node_env
    blocks = python_blocks("docs/python.md")
    assert len(blocks) >= 3
    for code in blocks:
        out = run(venv, code, env, d)
        assert out.returncode == 0, code + "\n" + out.stderr
