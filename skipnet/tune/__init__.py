"""Ray Tune integration: trainable, search spaces, schedulers (MOASHA) and the search runner."""
