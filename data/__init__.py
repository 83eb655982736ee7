"""Data files shipped with interp: prompt sets for circuit analysis live under ``prompts/``."""
