"""Helpers shared by the tests: functions, constants and builders, never fixtures (those come through conftest.py).

Importable as `support.<module>` because pyproject.toml's `[tool.pytest.ini_options] pythonpath` holds "tests".
"""
