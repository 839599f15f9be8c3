#!/bin/sh
# Entry point of the SkipNet Tune image (docker/Dockerfile).
# A skipnet subcommand or an option runs `skipnet` with the arguments, e.g.
#   docker run --rm IMAGE search experiments/quickstart.yaml
# Anything else runs as given: `ray start ...`, `mlflow server ...`, or `bash`, which Ray's
# cluster launcher uses to start its containers. Keep the list equal to the CLI's subcommands
# (tests/test_deploy.py checks it).
set -e
case "${1:-}" in
    ""|-*|train|eval|search|resume|submit|status|logs|stop|pareto|export|sync-mlflow)
        exec skipnet "$@" ;;
esac
exec "$@"
