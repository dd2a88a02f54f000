"""Study specs: YAML -> validated, frozen pydantic models (`schema`), read and resolved by `loading`.

Everything past `resolve()` receives a frozen `RunConfig`, never a raw dict.
"""

from distill_lab.spec.loading import (interpolate, load_raw, load_spec, parse_override, parse_spec, resolve,
                                      set_dotted)
from distill_lab.spec.schema import (RUN_SECTIONS, AugmentSpec, CategoricalParam, CorruptSpec, DataSpec, DiagnosisSpec,
                                     DistillSpec, FinetuneSpec, FloatParam, FromTeacherSpec, GridParam, InitSpec,
                                     IntParam, LayerMappingSpec, MappingStrategyParam, MonotoneMappingParam,
                                     ProjectionSpec, RunConfig, StudentSpec, StudySection, StudySpec, SyntheticSpec,
                                     TeacherSpec, TrackingSpec, TrainingSpec, TransferSpec, flatten)

__all__ = [
    "RUN_SECTIONS", "AugmentSpec", "CategoricalParam", "CorruptSpec", "DataSpec", "DiagnosisSpec", "DistillSpec", "FinetuneSpec",
    "FloatParam", "FromTeacherSpec", "GridParam", "InitSpec", "IntParam", "LayerMappingSpec", "MappingStrategyParam",
    "MonotoneMappingParam", "ProjectionSpec", "RunConfig", "StudentSpec", "StudySection", "StudySpec",
    "SyntheticSpec", "TeacherSpec", "TrackingSpec", "TrainingSpec", "TransferSpec", "flatten", "interpolate",
    "load_raw", "load_spec", "parse_override", "parse_spec", "resolve", "set_dotted",
]
