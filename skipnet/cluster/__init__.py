"""The Ray cluster client: ``jobs`` (searches as Ray jobs through the Jobs REST API: submit,
status, logs, stop) and ``auth`` (which authentication a cluster asks for, and its token).
Imports nothing of skipnet's but its errors: ``skipnet.tune`` connects to clusters with
``auth``, and the command line validates an experiment before ``jobs.submit`` sends it."""
