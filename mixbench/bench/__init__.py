"""The cost of a training step: every method × every model, timed on the current device.

One timed unit is one call of :class:`mixbench.engine.step.TrainingStep`, the step the trainer takes: the
forward pass through ``method.training_step`` under the run's autocast (bf16 on CUDA, none on CPU),
``zero_grad``, ``backward``, gradient clipping when the recipe asks for it, ``optimizer.step`` over the
model's and the method's own parameter groups, and ``method.after_step`` (EMA updates).  The benchmark owns no
copy of that step.  The model, method and optimizer are built by the trainer's own functions from configs
composed with Hydra's compose API, so ``model=``, ``data=``, ``method=`` and any ``key=value`` override mean
exactly what they mean in ``tools/train.py``.

The batches are synthetic and already on the device: uniform [0, 1) pixels normalised with the data config's
mean and std, at its image size (or ``--image-size``), labels uniform over its classes, in channels_last when
the run would use it.  The data pipeline (reading, augmentation, host-to-device copies) is therefore excluded,
and no dataset needs to exist on disk.

Per model, each row is prepared in turn (built, ``warmup`` untimed steps, then 3 untimed steps in which its
host syncs are counted, so that counting costs the timings nothing; its peak memory read), then the rows are
timed **round-robin**: ``steps`` rounds, each timing one step of every row with ``time.perf_counter`` (with
``torch.cuda.synchronize`` before and after on a GPU), the order rotating each round so that a change of the
device's speed hits every row alike.  A row reports its mean step time with the quartiles of its steps,
images/s at that mean, the ratio to vanilla (always measured) as the ratio of their totals over the same
rounds with a 90% bootstrap interval -- slower or faster is claimed only when that interval lies wholly
above or below 1 --, the peak memory, the host syncs per step and where they are, and the parameters of
the model and of the method's own trainable parts (a Mix Block, a decoder; an EMA copy is not trainable and
not counted).  When vanilla's own steps spread by more than 15% of their mean the header warns that the
device's speed varied (on a shared machine, other processes).

A method that needs weights mixbench does not ship (``needs_external_weights``) is listed as skipped with the
reason; a method that a model cannot serve (a feature-space method on a transformer that only exposes its
input) is listed as ``n/a`` with the reason; a row that runs out of GPU memory is listed as failed.  No
requested combination is silently dropped.

The parts, one concept each:

* :mod:`mixbench.bench.request`: what to measure (:func:`~mixbench.bench.request.resolve_request`) and each
  row's config (:func:`~mixbench.bench.request.compose_row_configs`);
* :mod:`mixbench.bench.timing`: one row timed through ``TrainingStep``, its host syncs counted by
  :class:`mixbench.engine.host_syncs.HostSyncCounter`;
* :mod:`mixbench.bench.memory`: a row's peak memory;
* :mod:`mixbench.bench.results`: the rows and the report they make;
* :mod:`mixbench.bench.benchmark`: every row, vanilla as the reference, the header's facts
  (:mod:`mixbench.provenance`);
* :mod:`mixbench.bench.report`: the Markdown and CSV files (:mod:`mixbench.report.render`).
"""
