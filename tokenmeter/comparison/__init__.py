"""Comparing models by cost and by their users' ratings: the pure core (no I/O). See docs/compare.md.

- ``statistics``: means and 95 % confidence intervals (Student's t; Welch for a difference) from sufficient
  statistics, so the store can aggregate; the t quantile computed exactly, without scipy.
- ``answer_rows``: the per (app, model[, arm]) rows the store returns (:mod:`tokenmeter.store.rating_queries`
  holds the rules that make them) and the table's columns of one row.
- ``pair_findings``: what moving an app from one model to another would have cost and how the ratings
  differ, as data and one plain sentence (``money_text`` prints its numbers).
- ``model_comparison``: the table and the findings of one period (``periods``), as asked (``comparison_query``);
  its JSON document (``comparison_document``: ``tokenmeter compare --format json``, ``GET /v1/compare``) and
  renderings (``renderings``).
"""
