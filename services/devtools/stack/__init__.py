"""The embedded stack of real servers (`whaleid stack up|status|down|env`).

from services.devtools.stack import Stack, ServerStartError, launch_triton
"""

from services.core.errors import ServerStartError, StackError
from services.devtools.stack.stack import Stack
from services.devtools.stack.triton import TritonServer, launch_triton

__all__ = ["Stack", "StackError", "ServerStartError", "TritonServer", "launch_triton"]
