from __future__ import annotations

import subprocess
import sys


def test_import_loki_does_not_import_torch():
    code = "import sys, loki; print('torch' in sys.modules, 'open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


def test_public_namespaces():
    import loki as lk

    for name in ("pp", "tl", "pl", "metrics", "datasets", "io"):
        assert hasattr(lk, name)
    assert lk.Key.TEXT == "loki_text"
