"""Above the tasks: evaluation, active-learning simulation, benchmarks, shipped-model training (``train-zoo``),
intervals and model cards."""
