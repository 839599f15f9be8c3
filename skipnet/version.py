"""The package's version, below every layer: ``skipnet.__version__`` is this one, and what the
layers record it in (checkpoints, MLflow's ``skipnet.version`` tag) reads it here, so that no
module imports the package root (which re-exports the core) from inside."""
__version__ = "0.1.0"
