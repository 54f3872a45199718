"""The waste report's pure core (docs/waste.md): its findings, the replays of the cache and of the routing rules
over stored calls, the report's JSON document and its renderings. The store's queries are
:mod:`tokenmeter.store.waste_queries`."""
