"""Models. ``MODELS`` is the explicit registry: name -> (model class, config class)."""

from __future__ import annotations

from miir.errors import ConfigError
from miir.models.miir import MIIR, VARIANTS, MIIRConfig

MODELS: dict[str, tuple[type, type]] = {"miir": (MIIR, MIIRConfig)}


def get_model(name: str) -> tuple[type, type]:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}"
        ) from None


def variant_config(name: str, **overrides: object) -> MIIRConfig:
    """The config of a named MIIR variant (miir, miir-r, miir-f, miir-m, ...) with overrides."""
    key = name.lower()
    if key not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; valid variants: {', '.join(VARIANTS)}")
    return MIIRConfig(**{**VARIANTS[key], **overrides})
