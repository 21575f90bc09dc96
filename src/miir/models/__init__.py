"""Models, in one explicit registry: name -> model class and config preset.

A MIIR variant is the MIIR class with a preset (``miir-r`` = ``{"objective": "rec"}``); a
baseline is its own class. Every name builds the same way::

    config = model_config("sasrec", {"dropout": 0.2})
    model = build_model("sasrec", config, catalogue)

and every registered model gets the contract tests (tests/test_contract.py) for free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from miir.errors import ConfigError
from miir.models.base import ModelConfig, SequenceModel
from miir.models.fields import ItemCatalogue
from miir.models.miir import MIIR, VARIANTS


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type[SequenceModel]
    preset: dict[str, Any] = field(default_factory=dict)
    description: str = ""


REGISTRY: dict[str, ModelEntry] = {}


def register(
    name: str, cls: type[SequenceModel], preset: dict[str, Any] | None = None, description: str = ""
) -> None:
    if name in REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    REGISTRY[name] = ModelEntry(name, cls, dict(preset or {}), description)


for _name, _preset in VARIANTS.items():
    register(_name, MIIR, _preset, "MIIR variant")


def _register_baselines() -> None:
    """The paper's baselines, one file each (imported here so that the registry is explicit);
    FDSA+RFS and NOVA+RFS are presets of FDSA and NOVA, as MIIR's variants are of MIIR."""
    import importlib

    from miir.models.masking import RFS_DEFAULT_PROB

    rfs = {"rfs_prob": RFS_DEFAULT_PROB}
    for module, cls_name, name, preset, description in (
        ("gru4rec", "GRU4Rec", "gru4rec", {}, "GRU4Rec (Hidasi et al. 2016), IDs only"),
        ("sasrec", "SASRec", "sasrec", {}, "SASRec (Kang and McAuley 2018), IDs only"),
        ("bert4rec", "BERT4Rec", "bert4rec", {}, "BERT4Rec (Sun et al. 2019), IDs only"),
        ("prnn", "PRNN", "prnn", {}, "Parallel RNN (Hidasi et al. 2016), side information"),
        ("fdsa", "FDSA", "fdsa", {}, "FDSA (Zhang et al. 2019), side information"),
        ("fdsa", "FDSA", "fdsa-rfs", rfs, "FDSA+RFS: FDSA with random feature sampling"),
        ("nova", "NOVA", "nova", {}, "NOVA-BERT (Liu et al. 2021), side information"),
        ("nova", "NOVA", "nova-rfs", rfs, "NOVA+RFS: NOVA with random feature sampling"),
        ("lrmm", "LRMM", "lrmm", {}, "LRMM (Wang et al. 2018), non-sequential imputer"),
    ):
        try:
            mod = importlib.import_module(f"miir.models.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"miir.models.{module}":
                continue  # not written yet
            raise
        register(name, getattr(mod, cls_name), preset, description)


_register_baselines()


def get_entry(name: str) -> ModelEntry:
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; registered models: {', '.join(REGISTRY)}"
        ) from None


def model_config(
    name: str, overrides: dict[str, Any] | None = None, where: str | None = None
) -> ModelConfig:
    """The config of model ``name``: its class's defaults, its preset, then ``overrides``.
    Errors name the key, the allowed keys and the allowed range (and ``where`` the options
    came from, e.g. a config file)."""
    entry = get_entry(name)
    values = {**entry.preset, **(overrides or {})}
    try:
        return entry.cls.Config(**values)
    except ValidationError as exc:
        label = f"{where} (model {name!r})" if where else f"model {name!r}"
        raise ConfigError(describe_validation_error(exc, entry.cls.Config, label)) from None


def describe_validation_error(exc: ValidationError, config_cls: type, where: str) -> str:
    """One line per problem: the key, what is wrong, and what is allowed (no pydantic links)."""
    lines = []
    fields = config_cls.model_fields
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(config)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown option {key!r}; allowed: {', '.join(sorted(fields))}")
            continue
        info = fields.get(str(err["loc"][0])) if err["loc"] else None
        bounds = []
        for meta in getattr(info, "metadata", []) if info is not None else []:
            for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                if getattr(meta, attr, None) is not None:
                    bounds.append(f"{sym} {getattr(meta, attr)}")
        allowed = f" (allowed: {', '.join(bounds)})" if bounds else ""
        given = err.get("input")
        lines.append(f"{where}: option {key!r} = {given!r}: {err['msg']}{allowed}")
    return "\n".join(lines)


def build_model(name: str, config: ModelConfig, catalogue: ItemCatalogue) -> SequenceModel:
    """A freshly initialised model ``name`` over ``catalogue``; it remembers its registry name."""
    entry = get_entry(name)
    if not entry.cls.uses_side_info:
        catalogue = catalogue.without_side_fields()
    elif getattr(config, "fields", None) is not None:
        catalogue = catalogue.select(config.fields)
    model = entry.cls(config, catalogue)
    model.registry_name = entry.name
    return model


def variant_config(name: str, **overrides: object) -> ModelConfig:
    """Kept for callers of the MIIR-only API: the config of a named MIIR variant."""
    entry = get_entry(name)
    if entry.cls is not MIIR:
        raise ConfigError(f"{name!r} is not a MIIR variant; variants: {', '.join(VARIANTS)}")
    return model_config(name, dict(overrides))


__all__ = [
    "REGISTRY",
    "VARIANTS",
    "ModelEntry",
    "build_model",
    "get_entry",
    "model_config",
    "register",
    "variant_config",
]
