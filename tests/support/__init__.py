"""Shared test fixtures: tiny locally built models, deterministic backends, paths to shared data."""
