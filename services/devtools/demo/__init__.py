"""`whaleid demo`: the whole story on the embedded stack (data, tiny model, gallery, stack, services, uploads)."""
