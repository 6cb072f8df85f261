"""Framework adapters. Each module imports its framework itself, so import only the one you use."""
