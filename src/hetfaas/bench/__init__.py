"""Benchmarks that measure hetfaas against bare metal (``hetfaas bench ...``)."""
