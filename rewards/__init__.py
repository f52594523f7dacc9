"""Reward functions: contract, registry, plugin discovery, built-ins, sandboxed code execution."""
