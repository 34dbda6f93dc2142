"""`type: together` (being written: the config model and adapter land here)."""

from __future__ import annotations

from typing import Literal

from providers.base import Provider
from providers.config import RemoteConfig
from providers.context import ProviderContext, ProviderType


class TogetherProviderConfig(RemoteConfig):
    type: Literal["together"]


def build(context: ProviderContext, config: TogetherProviderConfig) -> Provider:
    raise NotImplementedError("together")


TYPE = ProviderType("together", TogetherProviderConfig, build)
