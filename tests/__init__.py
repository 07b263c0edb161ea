"""Shared helpers for the voiceedge test-suite."""
