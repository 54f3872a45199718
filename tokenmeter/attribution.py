"""Public import path of the attribution API (it lives in :mod:`tokenmeter.instrumentation.attribution`).

``tokenmeter/__init__.py`` imports from here, so ``tokenmeter.attribution`` stays the function
after this module is loaded.
"""

from tokenmeter.instrumentation.attribution import Attribution, attribution, current_attribution

__all__ = ["Attribution", "attribution", "current_attribution"]
