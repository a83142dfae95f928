"""What the chapters need besides the model: symbolic checks, figures, widgets, timing, Colab set-up.

Heavy dependencies (sympy, matplotlib, ipywidgets) are imported lazily inside the submodules, so
``import minimind_ref.lab`` stays cheap and the core package never depends on them.
"""

from __future__ import annotations

import platform
import sys

#: The one repository URL of the whole book (Colab launch buttons, install cells, _config.yml).
REPO_URL = "https://github.com/minimind-textbook/minimind-textbook"


def device_name() -> str:
    """'cuda (<GPU name>)', 'mps' or 'cpu (<processor>)': where the chapter's tensors run by default."""
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def show_versions() -> dict:
    """Print (and return) the versions a chapter ran with and the device it runs on."""
    import importlib

    info = {"python": sys.version.split()[0]}
    for name in ("torch", "sympy", "numpy", "matplotlib", "ipywidgets", "minimind_ref"):
        try:
            info[name] = importlib.import_module(name).__version__
        except ImportError:
            info[name] = "not installed"
    info["device"] = device_name()
    print("  ".join(f"{k} {v}" for k, v in info.items()))
    return info
