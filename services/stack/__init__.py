"""The embedded stack of real servers (`whaleid stack up|status|down|env`).

from services.stack import Stack, ServerStartError, launch_triton
"""

from services.errors import ServerStartError, StackError
from services.stack.stack import Stack
from services.stack.triton import TritonServer, launch_triton

__all__ = ["Stack", "StackError", "ServerStartError", "TritonServer", "launch_triton"]
