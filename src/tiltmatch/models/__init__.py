"""Denoisers and model families: the adapter, codecs, loaders (METHOD.md section 1)."""
