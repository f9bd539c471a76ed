"""Framework integrations: `stepwell.integrations.fastapi` (also Starlette), `.django`, `.flask`.

Each is a thin layer over the public API (`Engine`, the server's ASGI app through the service
layer, `Client`), imported only by the application that uses it, so stepwell itself needs none
of the frameworks installed.
"""
