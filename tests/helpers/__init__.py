"""Programs and helpers the tests run (not collected as tests)."""
