"""MLflow tracking: the store, credentials in its URI, runs and their names, parent runs.

Config group: conf/tracking (`tracking.config.TrackingConfig`). Imports only `errors`, `repro`,
`signals`; `import mlflow` happens inside functions (it costs seconds). Private MLflow names
are used in `mlflow_internals` only (tests/test_layering.py checks it).
"""
