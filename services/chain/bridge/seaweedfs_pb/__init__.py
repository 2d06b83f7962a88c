"""SeaweedFS's `filer_pb` messages (from its official filer.proto; see generate.py for how `filer_pb2` was made)."""

from services.chain.bridge.seaweedfs_pb import filer_pb2

__all__ = ["filer_pb2"]
