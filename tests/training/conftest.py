"""Fixtures of the training tests (helpers live in training_helpers.py).

One torch thread is set for the whole suite in tests/conftest.py.
"""
