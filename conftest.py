"""Suite-wide plugins: ``tests.ci_guard`` (under CI a skipped test is a failure)."""

pytest_plugins = ["tests.ci_guard"]
