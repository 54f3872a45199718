"""Public import path of the rating API (it lives in :mod:`tokenmeter.instrumentation.feedback`).

``tokenmeter/__init__.py`` imports from here, so ``tokenmeter.feedback`` stays the function
after this module is loaded.
"""

from tokenmeter.instrumentation.feedback import feedback

__all__ = ["feedback"]
