"""Small, real pieces for tests, benchmarks and demos: nothing here is mocked."""
