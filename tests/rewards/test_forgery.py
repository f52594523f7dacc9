"""code_exec cannot be forged: programs that fake a pass score 0, honest ones still score 1.

Each forger targets one way the verdict could leak into the candidate's hands: the harness's
channels, the comparison itself, the interpreter that runs the tests, the names the tests use.
They run with the audit hooks on and off: the verdict must not depend on the hooks.
"""
from __future__ import annotations

import pytest

from rewards.sandbox import SandboxLimits, run_tests, sandbox_support

pytestmark = pytest.mark.skipif(not sandbox_support()[0], reason=f"no sandbox here: {sandbox_support()[1]}")
FAST = {"cpu_s": 2, "test_timeout_s": 5.0, "wall_s": 30}
TESTS = ["assert f(2) == 4", "assert f(5) == 10"]

FORGERS = {
    # Writes whatever proof the harness expects through every descriptor named in its argv.
    "proof through argv fds": (
        "import json, os, sys\n"
        "args = json.loads(sys.argv[-1]) if sys.argv[-1].startswith('{') else {}\n"
        "fds = [v for v in args.values() if isinstance(v, int)]\n"
        "data = b''\n"
        "for fd in fds:\n"
        "    try:\n"
        "        os.set_blocking(fd, False)\n"
        "        data += os.read(fd, 64)\n"
        "    except OSError:\n"
        "        pass\n"
        "for fd in fds:\n"
        "    try:\n"
        "        os.write(fd, data or b'{\"passed\": true}')\n"
        "    except OSError:\n"
        "        pass\n"
        "def f(x):\n"
        "    return None\n"),
    # Returns an object equal to everything.
    "always-equal object": (
        "class Yes:\n"
        "    def __eq__(self, other):\n        return True\n"
        "    def __ne__(self, other):\n        return False\n"
        "    __hash__ = object.__hash__\n"
        "def f(x):\n    return Yes()\n"),
    # An int subclass whose equality is always true.
    "always-equal int": (
        "class I(int):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "def f(x):\n    return I(0)\n"),
    # Replaces exec so that the tests never run.
    "no-op exec": (
        "import builtins\n"
        "builtins.exec = lambda *a, **k: None\n"
        "builtins.compile = lambda *a, **k: None\n"
        "def f(x):\n    return None\n"),
    # Shadows the builtins a test relies on.
    "shadowed builtins": (
        "def abs(x):\n    return 0\n"
        "def f(x):\n    return None\n"),
    # Exits "successfully" from inside the function under test.
    "exit inside the call": (
        "import os\n"
        "def f(x):\n    os._exit(0)\n"),
    # Prints the harness's verdict line and leaves.
    "fake verdict line": (
        "import os, sys\n"
        "sys.stdout.write('{\"results\": [{\"passed\": true, \"reason\": \"\"}, {\"passed\": true, \"reason\": \"\"}]}\\n')\n"
        "sys.stdout.flush()\n"
        "os._exit(0)\n"),
    # Patches the assert machinery the tests run with.
    "patched AssertionError": (
        "import builtins\n"
        "builtins.AssertionError = type('AssertionError', (BaseException,), {})\n"
        "import sys\n"
        "sys.excepthook = lambda *a: None\n"
        "def f(x):\n    return None\n"),
    # Walks the caller's frames to flip the harness's status.
    "frame walker": (
        "import sys\n"
        "def f(x):\n"
        "    fr = sys._getframe(1)\n"
        "    while fr is not None:\n"
        "        for k in ('status', 'ok', 'passed'):\n"
        "            if k in fr.f_locals:\n"
        "                fr.f_locals[k] = 0 if k == 'status' else True\n"
        "        fr = fr.f_back\n"
        "    return None\n"),
}


@pytest.mark.parametrize("audit", [True, False], ids=["hooks", "kernel-only"])
def test_forging_programs_score_zero(audit):
    limits = SandboxLimits(audit_hooks=audit, **FAST)
    for name, code in FORGERS.items():
        tests = ["assert abs(f(2) - 4) < 1e-9"] if name == "shadowed builtins" else TESTS
        report = run_tests(code, tests, limits)
        assert not report.all_passed and report.fraction == 0.0, (name, report)


HONEST = {
    "plain function": ("def f(x):\n    return 2 * x\n", TESTS),
    "humaneval check(candidate)": (
        "def add(a, b):\n    return a + b\n",
        ["def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\ncheck(add)"]),
    "class with methods": (
        ("class Counter:\n    def __init__(self):\n        self.n = 0\n"
         "    def add(self, k=1):\n        self.n += k\n        return self\n"),
        ["c = Counter()\nc.add()\nc.add(k=2)\nassert c.n == 3"]),
    "generator": ("def evens(n):\n    for i in range(n):\n        if i % 2 == 0:\n            yield i\n",
                  ["assert list(evens(5)) == [0, 2, 4]"]),
    "in-place mutation": ("def rev(xs):\n    xs.reverse()\n",
                          ["xs = [1, 2, 3]\nrev(xs)\nassert xs == [3, 2, 1]"]),
    "expected exception": ("def g(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n",
                           ["try:\n    g(-1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError('no error')"]),
    "data of every kind": (
        ("import math\nK = 7\n"
         "def h():\n    return (1, 2.5, 'é\\udcff', b'x', {1: [None, True]}, {3}, frozenset(), 2 ** 5000, float('nan'), 1j)\n"),
        [("t = h()\nassert t[:6] == (1, 2.5, 'é\\udcff', b'x', {1: [None, True]}, {3})\n"
          "assert t[7] == 2 ** 5000 and math.isnan(t[8]) and t[9] == 1j and K == 7 and math.sqrt(4) == 2")]),
    "stdlib import used by the test": ("from collections import Counter\ndef top(s):\n    return Counter(s).most_common(1)[0][0]\n",
                                       ["assert top('abca') == 'a'"]),
}


@pytest.mark.parametrize("audit", [True, False], ids=["hooks", "kernel-only"])
def test_honest_programs_score_one(audit):
    limits = SandboxLimits(audit_hooks=audit, **FAST)
    for name, (code, tests) in HONEST.items():
        report = run_tests(code, tests, limits)
        assert report.all_passed, (name, report)


def test_numpy_values_cross_as_plain_data():
    """A program using numpy (bound read-only with extra_ro_paths) returns np.int64 / arrays: the
    tests see genuine ints and lists."""
    np = pytest.importorskip("numpy")
    import os

    site = os.path.dirname(os.path.dirname(np.__file__))
    code = (f"import sys\nsys.path.insert(0, {site!r})\nimport numpy as np\n"
            "def f(x):\n    return np.int64(2 * x)\ndef g():\n    return np.arange(3)\n")
    limits = SandboxLimits(extra_ro_paths=(site,), memory_mb=1024, audit_hooks=False, **FAST)
    report = run_tests(code, ["assert f(2) == 4 and type(f(2)) is int", "assert g() == [0, 1, 2]"], limits)
    assert report.all_passed, report
