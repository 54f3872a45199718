"""The receiver's default limits (plain constants: the CLI imports them without grpc or protobuf)."""

from typing import Final

DEFAULT_MAX_REQUEST_BYTES: Final = 64 * 1024 * 1024  # one request, decompressed; the Python SDK's own limit
DEFAULT_MAX_PENDING_BYTES: Final = 256 * 1024 * 1024  # queued + being written, before senders get 429
DEFAULT_BATCH_BYTES: Final = 8 * 1024 * 1024  # one insert
DEFAULT_FLUSH_INTERVAL: Final = 0.05  # least seconds between two inserts of one writer (group commit)
DEFAULT_RECENT_DIGESTS: Final = 100_000  # written requests remembered to acknowledge retries without a re-insert
DEFAULT_WRITERS: Final = 2  # concurrent inserts (one thread and store client each)
RETRY_AFTER_SECONDS: Final = 1.0
# gRPC connections are closed (and re-opened by the client) this often: it bounds how long a
# request that never sends its whole message can hold one (grpc_receiver.otlp_grpc_server).
DEFAULT_GRPC_MAX_CONNECTION_AGE_SECONDS: Final = 300.0
