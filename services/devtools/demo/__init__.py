"""`whaleid demo`: the whole story on the embedded stack (data, the lite0 model it trains, gallery, stack, services, uploads)."""
