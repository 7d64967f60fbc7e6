"""The inference plane: a standalone OpenAI-compatible engine service (FastAPI + uvicorn).

Importing this package is cheap: the heavy parts (torch, transformers, fastapi) live in
submodules that only the server loads. The control plane never imports it: it speaks to nodes
through `wire`.
"""
