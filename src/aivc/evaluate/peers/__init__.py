"""Standalone scripts that run published peer models in their own environments.

Each script here is run by :func:`aivc.evaluate._peer_envs.run_peer` with the
python of a peer's virtual environment, never imported by aivc: it may import
only the standard library, numpy, anndata/scanpy and the peer's own package.
Data pass as files (``.h5ad`` in; ``.npy``, ``.csv`` or ``.json`` out).
"""
