"""Tests of the RLAIF-V feedback components: a package, so that its conftest does not take the `conftest`
module name that the tests in tests/evaluate import from."""
