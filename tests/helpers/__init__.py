"""What several test modules share: configs, a real CLI run, a real MLflow store, data files."""
