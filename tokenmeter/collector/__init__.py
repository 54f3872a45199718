"""tokenmeter's embedded collector: OTLP receivers (gRPC and HTTP) writing to the store.

Heavy imports (grpc, starlette, protobuf messages) load only when a submodule is
imported; they live in the ``server`` extra.
"""
