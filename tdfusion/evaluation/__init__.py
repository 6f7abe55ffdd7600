"""Evaluation: how well a task does on images made by a fusion method.

* :mod:`~tdfusion.evaluation.loop`: the one loop every evaluation runs (a task network's
  metrics over a stream of views);
* :mod:`~tdfusion.evaluation.sources`: ``tdfusion eval``, several image sources scored by one
  given task network (a diagnostic);
* :mod:`~tdfusion.evaluation.comparison`: ``tdfusion compare``, a task network retrained per
  source over several seeds (the protocol that compares methods);
* :mod:`~tdfusion.evaluation.downstream`, :mod:`~tdfusion.evaluation.downstream_settings`,
  :mod:`~tdfusion.evaluation.source_folder`: that retraining, its regime and its data;
* :mod:`~tdfusion.evaluation.results`: result tables, JSON and CSV.

The training run's own diagnostic (:mod:`tdfusion.training.validator`) runs the same loop.
"""
