"""Helpers shared by several test files (imported explicitly, so torch-free tests stay torch-free)."""
