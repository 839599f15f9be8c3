"""The core: SkipNet models and gates, FLOPs, the executor, checkpoints, data, training configs,
the training loop, atomic files, local|s3:// storage and CPU threads. Torch only: nothing here
imports ray, mlflow or optuna, nor any layer above (``tests/test_layout.py`` checks it).

Importing this package imports nothing: ``import skipnet`` stays free of torch."""
