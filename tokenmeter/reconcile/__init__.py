"""Reconciliation with the provider's invoice (docs/reconcile.md): the pure core, no store access.

A provider's usage or billing export is read through a declared mapping table (``export_formats``: which column
is the day, the model, the key, each token type and the cost, in which units and time zone) into rows of
``provider_usage`` (``export_rows``, read by ``csv_exports`` and ``json_exports``, chosen by ``reading``); the
comparison puts them beside tokenmeter's own calls per day x model (``comparison``, over ``model_names``'s key and
``periods``), and ``renderings`` prints it. The store's side is :mod:`tokenmeter.store.reconcile_queries`.
"""
