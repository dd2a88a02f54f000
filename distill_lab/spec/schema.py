"""The spec's schema: frozen pydantic models, extra keys forbidden, every default in one place."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, PrivateAttr, field_validator, model_validator

from distill_lab.errors import SpecError
from distill_lab.spec.base import Model as _Model
from distill_lab.spec.data_schema import AugmentSpec, CorruptSpec, SyntheticSpec, TransferSpec


# --------------------------------------------------------------------------- data
class DataSpec(_Model):
    source: Literal["synthetic", "conll", "hub"] = "synthetic"
    path: str | None = None  # conll: a directory with train/dev/test files
    name: str | None = None  # hub: dataset name, e.g. conll2003
    config: str | None = None  # hub: dataset config, e.g. "en" for wikiann
    scheme: Literal["auto", "iob1", "iob2", "bioes"] = "auto"
    synthetic: SyntheticSpec = SyntheticSpec()
    max_train_sentences: int | None = Field(None, ge=1)
    max_eval_sentences: int | None = Field(None, ge=1)
    max_test_sentences: int | None = Field(None, ge=1)
    max_length: int = Field(128, ge=8, le=4096)
    train_sample_size: int = Field(500, ge=1)  # train sentences scored for the overfitting signal
    trust_remote_code: bool = False
    transfer: TransferSpec | None = None
    augment: AugmentSpec | None = None
    corrupt: CorruptSpec | None = None  # induced failures (training split only)

    @model_validator(mode="after")
    def _source_fields(self) -> "DataSpec":
        if self.source == "conll" and not self.path:
            raise ValueError("source 'conll' needs 'path' (a directory with train/dev/test files)")
        if self.source == "hub" and not self.name:
            raise ValueError("source 'hub' needs 'name' (a dataset name such as conll2003)")
        return self


# --------------------------------------------------------------------------- optimisation
class OptimisationSpec(_Model):
    """The optimiser settings the teacher fine-tune and the student share (`TrainRecipe.from_settings`)."""

    epochs: float = Field(2.0, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    seed: int = 13


# --------------------------------------------------------------------------- models
class FinetuneSpec(OptimisationSpec):
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(5e-5, gt=0)


class TeacherSpec(_Model):
    model: str = "minilm-l6"
    finetune: FinetuneSpec | None = None
    checkpoint: str | None = None  # an already fine-tuned token classifier
    trust_remote_code: bool = False

    @model_validator(mode="before")
    @classmethod
    def _one_source(cls, data: Any) -> Any:
        # Without a checkpoint the teacher is fine-tuned with the default recipe.
        if isinstance(data, dict):
            if data.get("finetune") is not None and data.get("checkpoint"):
                raise ValueError("set either 'finetune' or 'checkpoint', not both")
            if data.get("finetune") is None and not data.get("checkpoint"):
                data = {**data, "finetune": {}}
        return data


class FromTeacherSpec(_Model):
    num_layers: int = Field(3, ge=1)
    hidden_size: int | None = Field(None, ge=1)
    num_attention_heads: int | None = Field(None, ge=1)
    intermediate_size: int | None = Field(None, ge=1)


class InitSpec(_Model):
    # finetuned: student.model fine-tuned on the task with `finetune` (cached like a teacher), then cut:
    # a fine-tuned init when the KD teacher is another (bigger, other-family) model.
    strategy: Literal["teacher", "pretrained", "finetuned", "checkpoint", "random"] = "teacher"
    layers: Union[Literal["uniform", "first"], list[int]] = "uniform"
    checkpoint: str | None = None
    finetune: FinetuneSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_recipe(cls, data: Any) -> Any:
        finetuned = isinstance(data, dict) and data.get("strategy") == "finetuned"
        return {**data, "finetune": {}} if finetuned and data.get("finetune") is None else data

    @model_validator(mode="after")
    def _checkpoint_path(self) -> "InitSpec":
        if self.strategy == "checkpoint" and not self.checkpoint:
            raise ValueError("strategy 'checkpoint' needs 'checkpoint: PATH'")
        if self.finetune is not None and self.strategy != "finetuned":
            raise ValueError(f"'finetune' only applies to strategy 'finetuned', not '{self.strategy}'")
        if isinstance(self.layers, list) and any(i < 0 for i in self.layers):
            raise ValueError(f"layers must be non-negative teacher layer indices, got {self.layers}")
        return self


class StudentSpec(_Model):
    from_teacher: FromTeacherSpec | None = None
    model: str | None = None
    num_layers: int | None = Field(None, ge=1)  # with `model`: keep this many layers (init.layers picks them)
    init: InitSpec = InitSpec()

    @model_validator(mode="before")
    @classmethod
    def _one_source(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("from_teacher") is None and data.get("model") is None:
                data = {**data, "from_teacher": {}}
            elif data.get("from_teacher") is not None and data.get("model") is not None:
                raise ValueError("set either 'from_teacher' or 'model', not both")
        return data

    @model_validator(mode="after")
    def _own_model_fields(self) -> "StudentSpec":
        if self.num_layers is not None and self.model is None:
            raise ValueError("'num_layers' needs the student's own 'model' (else use from_teacher.num_layers)")
        if self.init.strategy == "finetuned" and self.model is None:
            raise ValueError("init strategy 'finetuned' fine-tunes the student's own 'model' (set student.model); "
                             "for the teacher's weights use init strategy 'teacher'")
        return self


# --------------------------------------------------------------------------- training
class TrainingSpec(OptimisationSpec):
    eval_batch_size: int = Field(64, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    # Optimizer steps between dev evaluations; 0 = dev only after the last step (no curve, no
    # checkpoint choice, nothing for a pruner): for studies that keep the last weights anyway.
    eval_every: int = Field(50, ge=0)
    max_steps: int | None = Field(None, ge=1)  # a fixed optimizer-step budget (overrides epochs)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(None, ge=1)
    # Teacher outputs: computed once and kept on disk (shared by local workers), in memory only,
    # or "off" = the teacher runs at every step (what most toolkits do).
    teacher_cache: Literal["disk", "memory", "off"] = "disk"
    teacher_cache_max_gb: float = Field(8.0, gt=0)
    # PyTorch's fused AdamW kernel (CPU and CUDA): the same update as the per-parameter loop, ~5x
    # faster on CPU, where the loop over a 30k-row embedding costs a quarter of every step.
    fused_optimizer: bool = True
    # fp32, or autocast to bf16 / fp16 (CUDA only) with fp32 master weights; auto = bf16 where the
    # hardware multiplies bf16 natively (AMX / AVX512-BF16 CPUs, CUDA compute >= 8.0), else fp32.
    # Also used by the teacher fine-tune, the teacher-output cache fill and every evaluation.
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    # Which weights the run keeps and scores: the best dev evaluation's, or the last step's.
    checkpoint: Literal["best_dev", "last"] = "best_dev"
    batching: Literal["length_buckets", "random"] = "length_buckets"
    # batch_mean: a batch's loss is the mean over its words, so a batch of 2-word sentences weighs
    # as much as one of 40-word sentences; fixed_tokens: sum over words / the epoch's mean words
    # per batch (every word weighs the same; same scale as batch_mean on average).
    loss_normalization: Literal["batch_mean", "fixed_tokens"] = "batch_mean"
    speed_sentences: int = Field(256, ge=0)  # dev sentences timed for the speedup column (speed.py); 0 = off
    # Resume points (distill/resume.py): a killed run continues from its state, saved this often; 0 = never.
    resume_every_minutes: float = Field(10.0, ge=0)

    @model_validator(mode="after")
    def _end_only_evaluation(self) -> "TrainingSpec":
        if self.eval_every == 0 and self.checkpoint == "best_dev":
            raise ValueError("eval_every 0 scores dev only after the last step: checkpoint 'best_dev' has "
                             "nothing to choose from; set checkpoint: last")
        return self

    @field_validator("teacher_cache", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` / `on` as a boolean.
        return {False: "off", True: "disk"}.get(value, value) if isinstance(value, bool) else value


class LayerMappingSpec(_Model):
    strategy: Literal["uniform", "explicit", "many_to_one", "last", "skip"] = "uniform"
    pairs: list[tuple[int, int]] | None = None  # explicit: [teacher_layer, student_layer]
    groups: list[list[int]] | None = None  # many_to_one: teacher layers per student layer
    include_embeddings: bool = False  # also match the embedding outputs (TinyBERT's layer 0)

    @model_validator(mode="after")
    def _strategy_fields(self) -> "LayerMappingSpec":
        if self.strategy == "explicit" and not self.pairs:
            raise ValueError("strategy 'explicit' needs 'pairs: [[teacher, student], ...]'")
        if self.pairs and self.strategy != "explicit":
            raise ValueError(f"'pairs' only applies to strategy 'explicit', not '{self.strategy}'")
        if self.groups and self.strategy != "many_to_one":
            raise ValueError(f"'groups' only applies to strategy 'many_to_one', not '{self.strategy}'")
        return self


class ProjectionSpec(_Model):
    kind: Literal["linear", "conv1d"] = "linear"
    direction: Literal["student_to_teacher", "teacher_to_student"] = "student_to_teacher"
    kernel_size: int = Field(1, ge=1)


class DistillSpec(_Model):
    temperature: float = 4.0
    alpha_hard: float = 0.5
    alpha_soft: float = 0.5
    alpha_hidden: float = 0.0
    alpha_attention: float = 0.0
    hidden_loss: Literal["mse", "cosine"] = "mse"
    # Where the soft loss compares teacher and student: each word's first sub-token, or every
    # attended sub-token (TextBrewer's NER recipe; needs one tokenizer for teacher and student).
    soft_positions: Literal["first_subtoken", "all_subtokens"] = "first_subtoken"
    layer_mapping: LayerMappingSpec = LayerMappingSpec()
    projection: ProjectionSpec = ProjectionSpec()
    class_weights: Union[Literal["none", "inverse_frequency"], dict[str, float]] = "none"

    @field_validator("temperature")
    @classmethod
    def _positive_temperature(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"temperature must be > 0 but got {value}")
        return value

    @field_validator("alpha_hard", "alpha_soft", "alpha_hidden", "alpha_attention")
    @classmethod
    def _non_negative_alpha(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"loss weights cannot be negative but got {value}")
        return value

    @model_validator(mode="after")
    def _some_loss(self) -> "DistillSpec":
        if self.alpha_hard + self.alpha_soft + self.alpha_hidden + self.alpha_attention == 0:
            raise ValueError(
                "all loss weights are 0: set at least one of alpha_hard, alpha_soft, "
                "alpha_hidden, alpha_attention > 0"
            )
        return self


# --------------------------------------------------------------------------- study
class FloatParam(_Model):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None


class IntParam(_Model):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1


class CategoricalParam(_Model):
    type: Literal["categorical"]
    choices: list[Any]


class GridParam(_Model):
    type: Literal["grid"]
    values: list[Any]


class MappingStrategyParam(_Model):
    """A categorical over named layer-mapping strategies."""

    type: Literal["mapping_strategy"]
    choices: list[Literal["uniform", "last", "skip", "many_to_one"]]


class MonotoneMappingParam(_Model):
    """Searches the teacher layer of every student layer, strictly increasing."""

    type: Literal["monotone_mapping"]
    pin_ends: bool = True  # head -> head and tail -> tail


ParamSpec = Annotated[
    Union[
        FloatParam, IntParam, CategoricalParam, GridParam, MappingStrategyParam, MonotoneMappingParam
    ],
    Field(discriminator="type"),
]


class StudySection(_Model):
    n_trials: int = Field(6, ge=1)
    timeout: float | None = Field(None, gt=0)
    direction: Literal["maximize", "minimize"] = "maximize"
    metric: Literal["dev_f1"] = "dev_f1"
    sampler: Literal["tpe", "random", "grid", "gp", "cmaes"] = "tpe"
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = "none"
    seeds: list[int] | None = None
    search_space: dict[str, ParamSpec] = {}
    sampler_seed: int = 0


class DiagnosisSpec(_Model):
    overfit_gap: float = Field(0.15, ge=0, le=1)  # train-sample F1 minus dev F1
    # dev F1 below this looks like noise: shuffled CoNLL labels gave 8-10 F1 (diagnosis_data), which 0.05 missed
    random_floor: float = Field(0.15, ge=0, le=1)
    underfit_ratio: float = Field(0.8, ge=0, le=1)  # train-sample F1 below this x the teacher's dev F1


class TrackingSpec(_Model):
    experiment: str | None = None  # defaults to the study name
    tracking_uri: str | None = None
    log_artifacts: bool = True
    save_best: bool = False


RUN_SECTIONS = ("data", "teacher", "student", "training", "distill", "diagnosis")


def _check_search_path(path: str, param: Any) -> None:
    section = path.split(".")[0]
    if section not in RUN_SECTIONS:
        raise ValueError(f"study.search_space key {path!r}: must start with one of {', '.join(RUN_SECTIONS)}")
    if isinstance(param, (MappingStrategyParam, MonotoneMappingParam)) and path != "distill.layer_mapping":
        raise ValueError(f"study.search_space key {path!r}: a {param.type} parameter must be keyed distill.layer_mapping")
    if path == "distill.layer_mapping" and not isinstance(param, (MappingStrategyParam, MonotoneMappingParam, GridParam)):
        raise ValueError("search_space key 'distill.layer_mapping': use type mapping_strategy, monotone_mapping or grid")
    if isinstance(param, (FloatParam, IntParam)):
        if param.low > param.high:
            raise ValueError(f"study.search_space {path!r}: low ({param.low}) must be <= high ({param.high})")
        if param.log and param.low <= 0:
            raise ValueError(f"study.search_space {path!r}: log scale needs low > 0 but got {param.low}")
    if isinstance(param, CategoricalParam) and not param.choices:
        raise ValueError(f"study.search_space {path!r}: categorical 'choices' must not be empty")
    if isinstance(param, GridParam) and not param.values:
        raise ValueError(f"study.search_space {path!r}: grid 'values' must not be empty")
    if isinstance(param, MappingStrategyParam) and not param.choices:
        raise ValueError(f"study.search_space {path!r}: mapping_strategy 'choices' must not be empty")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


class StudySpec(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    data: DataSpec = DataSpec()
    teacher: TeacherSpec = TeacherSpec()
    student: StudentSpec = StudentSpec()
    training: TrainingSpec = TrainingSpec()
    distill: DistillSpec = DistillSpec()
    study: StudySection = StudySection()
    diagnosis: DiagnosisSpec = DiagnosisSpec()
    tracking: TrackingSpec = TrackingSpec()
    # The spec as the user wrote it (overrides applied, ${VAR} not expanded): what is stored.
    _written: dict[str, Any] | None = PrivateAttr(default=None)

    def written(self) -> dict[str, Any]:
        """The spec as written, `${VAR}` references unexpanded, so no secret from the environment is
        stored or shown; the expanded values only for a spec that was not read from text."""
        return self._written if self._written is not None else self.model_dump(mode="json")

    def keep_written(self, written: dict[str, Any]) -> "StudySpec":
        """Remember the text this spec was parsed from (overrides applied, `${VAR}` unexpanded)."""
        self._written = written
        return self

    @model_validator(mode="after")
    def _search_space_paths(self) -> "StudySpec":
        for path, param in self.study.search_space.items():
            _check_search_path(path, param)
        if self.study.pruner != "none" and self.training.eval_every == 0:
            raise ValueError(f"pruner {self.study.pruner!r} needs dev scores during training: "
                             "training.eval_every 0 gives one, after the last step")
        return self


class RunConfig(_Model):
    """Everything one distillation run needs: the spec with sampled values filled in."""

    name: str
    data: DataSpec
    teacher: TeacherSpec
    student: StudentSpec
    training: TrainingSpec
    distill: DistillSpec
    diagnosis: DiagnosisSpec = DiagnosisSpec()

    def flat(self) -> dict[str, Any]:
        """Dotted-key view of the config, as logged to tracking."""
        return flatten(self.model_dump(mode="json"))
