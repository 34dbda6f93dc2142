"""`type: gemini` (being written: the config model and adapter land here)."""

from __future__ import annotations

from typing import Literal

from providers.base import Provider
from providers.config import RemoteConfig
from providers.context import ProviderContext, ProviderType


class GeminiProviderConfig(RemoteConfig):
    type: Literal["gemini"]


def build(context: ProviderContext, config: GeminiProviderConfig) -> Provider:
    raise NotImplementedError("gemini")


TYPE = ProviderType("gemini", GeminiProviderConfig, build)
