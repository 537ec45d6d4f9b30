import pytest

# The helpers in tests.support assert (one_line_error, provisioned, ...):
# pytest rewrites only test modules and conftests, so ask it to rewrite these
# too, before anything imports them, and keep their failure messages detailed.
pytest.register_assert_rewrite("tests.support")
