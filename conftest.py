"""Root conftest: the harness's own tests use pytester for plugin acceptance tests."""

pytest_plugins = ["pytester"]
