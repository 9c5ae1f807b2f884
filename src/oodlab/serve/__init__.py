"""The HTTP scoring service over a bundle (``oodlab serve``): FastAPI on uvicorn.

FastAPI (on Starlette, served by uvicorn) is the established Python ASGI stack: typed routes, an
OpenAPI page for free, and an event loop that lets requests queue while a forward pass runs —
which is what micro-batching needs.
"""

from oodlab.serve.app import MicroBatcher, create_app, decode_body

__all__ = ["MicroBatcher", "create_app", "decode_body"]
