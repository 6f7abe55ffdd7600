"""The method's mathematics, as pure functions over parameter dicts.

Nothing here knows a trainer, a dataset, a command or a particular task: a task enters
only as an object with a ``loss(net, params, fused, batch)`` method (a
:class:`tdfusion.tasks.TaskHead`); ``tests/test_house.py`` walks the imports to keep it so.

* :mod:`~tdfusion.meta.objectives`: the fusion objective L_f, the task objective L_t,
  the inner updates of F and T, the outer (meta) objective and its second-order
  meta-gradient (TDFusion Algorithm 1; ReFusion Sec. 3);
* :mod:`~tdfusion.meta.jvp`: the same meta-gradient in first-order form (a JVP),
  what training uses;
* :mod:`~tdfusion.meta.losses`: the learnable fusion losses (TDFusion and ReFusion forms);
* :mod:`~tdfusion.meta.updates`: optimisers, schedules and G's update rules.
"""
