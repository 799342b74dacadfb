"""The one typed configuration: the schema (``diga.config.schema``) and how presets, YAML files
and ``key.sub=value`` overrides become a validated ``Config`` (``diga.config.loading``).

Import from here: ``from diga.config import Config, load_config``.
"""

from diga.config.loading import (
    build_config,
    check_data_paths,
    config_from_dict,
    deep_merge,
    load_config,
    merge_overrides,
    parse_overrides,
    read_yaml,
    save_config,
    saved_config_with,
)
from diga.config.schema import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    AugmentConfig,
    BenchConfig,
    BuiltinData,
    CentroidsConfig,
    Config,
    DataConfig,
    DomainData,
    EvalConfig,
    ExportConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    PseudoConfig,
    RunConfig,
    Section,
    SelftrainConfig,
    Size,
    TrainConfig,
    TranslatorConfig,
    WarmupConfig,
    parse_size,
)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "PRESETS", "AugmentConfig", "BenchConfig", "BuiltinData",
    "CentroidsConfig", "Config", "DataConfig", "DomainData", "EvalConfig", "ExportConfig",
    "MethodConfig", "ModelConfig", "OptimConfig", "PseudoConfig", "RunConfig", "Section", "SelftrainConfig",
    "Size", "TrainConfig", "TranslatorConfig", "WarmupConfig", "build_config",
    "check_data_paths", "config_from_dict", "deep_merge", "load_config", "merge_overrides",
    "parse_overrides", "parse_size", "read_yaml", "save_config", "saved_config_with",
]
