"""`type: mistral` (being written: the config model and adapter land here)."""

from __future__ import annotations

from typing import Literal

from providers.base import Provider
from providers.config import RemoteConfig
from providers.context import ProviderContext, ProviderType


class MistralProviderConfig(RemoteConfig):
    type: Literal["mistral"]


def build(context: ProviderContext, config: MistralProviderConfig) -> Provider:
    raise NotImplementedError("mistral")


TYPE = ProviderType("mistral", MistralProviderConfig, build)
