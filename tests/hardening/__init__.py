"""Hardening: properties, fuzzing, concurrency, faults and safe loading across crossrank."""
