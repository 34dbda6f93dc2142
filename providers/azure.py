"""`type: azure` (being written: the config model and adapter land here)."""

from __future__ import annotations

from typing import Literal

from providers.base import Provider
from providers.config import RemoteConfig
from providers.context import ProviderContext, ProviderType


class AzureProviderConfig(RemoteConfig):
    type: Literal["azure"]


def build(context: ProviderContext, config: AzureProviderConfig) -> Provider:
    raise NotImplementedError("azure")


TYPE = ProviderType("azure", AzureProviderConfig, build)
