"""Batch Gateway: one OpenAI-compatible Batch API in front of many providers."""

__version__ = "0.1.0"
