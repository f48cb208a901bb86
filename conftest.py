"""Test-session environment, shared by unit tests, papermill runs and ``pytest --nbval``.

Kernels started by nbval and papermill inherit this process's environment, so the variables set
here are exactly the ones the committed chapter outputs were produced with (see tools/execute_chapters.py).
"""

import os
import pathlib
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent

# The book renderer (memorylib.book): plotly JSON + deterministic static HTML in one bundle.
os.environ["MEMORYLIB_BOOK"] = "1"
# Jupyter, IPython and Chromium write into the home folder; keep them in a scratch dir.
_scratch = pathlib.Path(os.environ.get("MEMORYLIB_SCRATCH", tempfile.gettempdir())) / "memorylib-test-home"
for var, sub in [("JUPYTER_CONFIG_DIR", "jupyter-config"), ("JUPYTER_DATA_DIR", "jupyter-data"),
                 ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"), ("IPYTHONDIR", "ipython"),
                 ("XDG_CONFIG_HOME", "xdg-config"), ("XDG_CACHE_HOME", "xdg-cache")]:
    path = _scratch / sub
    path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(var, str(path))
# Same thread count as the reference machine, before torch is imported anywhere.
os.environ.setdefault("OMP_NUM_THREADS", "2")
