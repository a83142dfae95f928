"""minimind_ref: the reference MiniMind in PyTorch that every chapter of the book imports.

One module per component: ``norm`` (ch. 1), ``rope`` (ch. 2), ``attention`` (ch. 3), ``ffn`` (ch. 4),
``moe`` (ch. 5), ``model`` (ch. 6), ``config``. Helpers for the chapters live in ``minimind_ref.lab``.
"""

from .attention import KVCache
from .config import MiniMindConfig
from .model import CausalLMOutput, MiniMindBlock, MiniMindForCausalLM, MiniMindModel

__all__ = ["MiniMindConfig", "MiniMindBlock", "MiniMindModel", "MiniMindForCausalLM", "CausalLMOutput", "KVCache"]
__version__ = "0.1.0"
