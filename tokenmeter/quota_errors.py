"""Public import path of the quota errors (they live in :mod:`tokenmeter.instrumentation.quota.errors`)."""

from tokenmeter.instrumentation.quota.errors import QuotaDegraded, QuotaError, QuotaExceeded, QuotaUnavailable

__all__ = ["QuotaDegraded", "QuotaError", "QuotaExceeded", "QuotaUnavailable"]
