"""MLflow tracking: the store, credentials in its URI, runs and their names.

Config group: conf/tracking (`tracking.config.TrackingConfig`). Imports only `errors`, `repro`,
`signals`; `import mlflow` happens inside functions (it costs seconds).
"""
