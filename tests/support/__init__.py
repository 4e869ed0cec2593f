"""What tests of every package share: fixtures (registered by tests/conftest.py) and helpers.

- :mod:`tests.support.default_app`: the default app, synthesized once per session and shared
  read-only (the ``default_app`` fixture).
- :mod:`tests.support.servers`: socket servers run in a thread for a test and stopped without
  waiting out a poll interval.
"""
