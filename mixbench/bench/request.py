"""What a benchmark measures: the methods, models, batch, steps and overrides, resolved from the command line
and the device's defaults, and each row's config composed and validated before anything is timed."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mixbench.config import CONFIG_DIR, ConfigError, check_group_choice, validate
from mixbench.engine.build import build_model_and_method
from mixbench.engine.runtime import Runtime, resolve_runtime
from mixbench.methods import METHODS

REFERENCE_METHOD = "vanilla"
SELECTED_BY_FLAGS = {"data": "--data", "model": "--models", "method": "--methods"}


@dataclass(frozen=True)
class DeviceDefaults:
    """What a plain ``tools/bench.py`` measures on a kind of device."""

    models: tuple[str, ...]
    batch_size: int
    steps: int
    warmup: int
    loop_window: int  # steps per window of the trainer-vs-bare comparison (mixbench.bench.data_path)
    loop_windows: int  # windows per loop


DEFAULTS = {
    # All methods on the three CIFAR CNNs at batch 128 (the GPU table of issue 5/5).
    "cuda": DeviceDefaults(
        models=("r18", "wrn16_8", "rx50"), batch_size=128, steps=30, warmup=5, loop_window=25, loop_windows=12
    ),
    # The published PreActResNet18 at CIFAR's 32 px, a small batch (results/bench/README.md gives the time).
    "cpu": DeviceDefaults(models=("r18",), batch_size=32, steps=15, warmup=2, loop_window=2, loop_windows=8),
}


@dataclass
class BenchRequest:
    """A resolved benchmark: every field has its final value."""

    methods: list[str]
    models: list[str]
    data: str
    batch_size: int
    image_size: int | None  # None: the data config's size (or the schedule's train_size)
    steps: int
    warmup: int
    compile: bool
    overrides: list[str] = field(default_factory=list)  # free key=value overrides applied to every row
    loop_window: int = 0  # trainer-vs-bare comparison: steps per window
    loop_windows: int = 0  # and windows per loop (0: not measured)
    profile_dir: Path | None = None  # --profile: where each row's profile is written (None: not profiled)
    random_adain: bool = False  # --random-adain: time StyleMix/StyleCutMix with stand-in AdaIN weights
    # the stand-in files while the benchmark runs: override key -> path (mixbench.bench.external_weights)
    stand_in_weights: dict[str, str] = field(default_factory=dict)


def resolve_request(
    methods: str | None,
    models: str | None,
    data: str,
    batch_size: int | None,
    image_size: int | None,
    steps: int | None,
    warmup: int | None,
    compile_model: bool,
    overrides: list[str],
    loop_windows: int | None = 0,
    profile_dir: Path | None = None,
    random_adain: bool = False,
) -> tuple[BenchRequest, Runtime]:
    """Fill what was not given with the defaults of the device the overrides select (``device=auto``: CUDA
    when visible); raise :class:`ConfigError` with one line for anything invalid.  ``loop_windows``: windows
    of the trainer-vs-bare comparison per model, ``None`` for the device's default, 0 for none."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "=" not in override:
            raise ConfigError(f"'{override}' is not a key=value override; flags start with --")
        if key in SELECTED_BY_FLAGS:
            raise ConfigError(f"select {key} with {SELECTED_BY_FLAGS[key]}, not the override {override}")
    check_group_choice("data", data)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        base = _compose([f"data={data}", *overrides, f"compile={str(compile_model).lower()}"])
    runtime = resolve_runtime(base)  # the rows are timed with this runtime: --compile must reach it
    defaults = DEFAULTS["cuda" if runtime.device.type == "cuda" else "cpu"]
    model_names = _split(models) if models else list(defaults.models)
    for name in model_names:
        check_group_choice("model", name)
    requested = ["all"] if methods is None else split_method_specs(methods)
    method_names = [name for spec in requested for name in (sorted(METHODS) if spec == "all" else [spec])]
    for spec in method_names:
        check_group_choice("method", parse_method_spec(spec)[0])
    method_names = [REFERENCE_METHOD] + [
        name for name in dict.fromkeys(method_names) if name != REFERENCE_METHOD
    ]
    request = BenchRequest(
        methods=method_names,
        models=list(dict.fromkeys(model_names)),
        data=data,
        batch_size=batch_size if batch_size is not None else defaults.batch_size,
        image_size=image_size,
        steps=steps if steps is not None else defaults.steps,
        warmup=warmup if warmup is not None else defaults.warmup,
        compile=compile_model,
        overrides=list(overrides),
        loop_window=defaults.loop_window,
        loop_windows=defaults.loop_windows if loop_windows is None else loop_windows,
        profile_dir=profile_dir,
        random_adain=random_adain,
    )
    _check_numbers(request)
    return request, runtime


def _split(names: str) -> list[str]:
    return [name.strip() for name in names.split(",") if name.strip()]


def split_method_specs(text: str) -> list[str]:
    """``--methods``'s comma-separated rows; commas inside a variant's ``[...]`` (or a value's ``{...}``)
    belong to that row: ``"puzzlemix,sumix[base=puzzlemix,gamma=1.0]"`` is two rows."""
    specs, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if depth < 0:
            raise ConfigError(f"--methods '{text}' closes a bracket it never opened")
        if char == "," and depth == 0:
            specs.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise ConfigError(f"--methods '{text}' leaves a bracket open: close each variant's [...]")
    return [spec.strip() for spec in [*specs, current] if spec.strip()]


def parse_method_spec(spec: str) -> tuple[str, list[str]]:
    """A row of ``--methods``: a method name, or a variant ``name[key=value,...]`` whose settings become
    ``method.key=value`` overrides of that row alone (e.g. ``sumix[base=puzzlemix]``,
    ``stylecutmix[style_size=null]``); the row is labelled by the whole spec."""
    if "[" not in spec:
        return spec, []
    name, _, rest = spec.partition("[")
    if not rest.endswith("]") or not name:
        raise ConfigError(
            f"method variant '{spec}' is not of the form name[key=value,...], e.g. sumix[base=puzzlemix]"
        )
    settings = split_method_specs(rest[:-1])
    for setting in settings:
        key = setting.split("=", 1)[0]
        if "=" not in setting or not key or not key.replace("_", "").replace(".", "").isalnum():
            raise ConfigError(
                f"method variant '{spec}': '{setting}' is not a key=value setting of method {name}"
            )
    return name.strip(), [f"method.{setting}" for setting in settings]


def _check_numbers(request: BenchRequest) -> None:
    if request.batch_size < 2:
        raise ConfigError(f"--batch-size must be at least 2 (mixing pairs samples), got {request.batch_size}")
    if request.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {request.steps}")
    if request.loop_windows < 0:
        raise ConfigError(f"--loops must be 0 or more, got {request.loop_windows}")
    if request.warmup < 0:
        raise ConfigError(f"--warmup must be 0 or more, got {request.warmup}")
    if request.image_size is not None and request.image_size < 8:
        raise ConfigError(f"--image-size must be at least 8 px, got {request.image_size}")


def _compose(overrides: list[str]) -> DictConfig:
    try:
        return compose(config_name="train", overrides=overrides)
    except Exception as error:  # Hydra and OmegaConf errors: one line
        raise ConfigError(
            f"the overrides {' '.join(overrides)} do not compose: {_first_line(error)}"
        ) from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def needs_external_weights(method: str) -> bool:
    """Whether ``method`` (a name or a variant spec) runs only with weight files the user supplies
    (StyleMix, StyleCutMix)."""
    return getattr(METHODS[parse_method_spec(method)[0]], "needs_external_weights", False)


def row_overrides(request: BenchRequest, model: str, spec: str) -> list[str]:
    """The ``tools/train.py`` overrides of one row (``spec``: a method name or a variant)."""
    method, settings = parse_method_spec(spec)
    overrides = [f"data={request.data}", f"model={model}", f"method={method}", *settings, *request.overrides]
    overrides += [f"schedule.batch_size={request.batch_size}", f"compile={str(request.compile).lower()}"]
    if request.image_size is not None:  # the network's input and the data's size (AlignMixup/AE's decoder)
        overrides += [f"data.image_size={request.image_size}", f"schedule.train_size={request.image_size}"]
    if request.stand_in_weights and needs_external_weights(method):
        accepted = inspect.signature(METHODS[method]).parameters  # StyleCutMix also reads the distance matrix
        overrides += [
            f"method.{key}={path}" for key, path in request.stand_in_weights.items() if key in accepted
        ]
    return overrides


def data_classes(request: BenchRequest) -> int:
    """The number of classes of the request's data config (with its overrides)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = _compose([f"data={request.data}", *request.overrides])
    return int(cfg.data.num_classes)


def compose_row_configs(request: BenchRequest) -> dict[tuple[str, str], DictConfig]:
    """Every row's config, composed and validated, and every model built once on the CPU, before anything is
    timed: an override that does not fit a model fails here with one line, not after minutes of timing."""
    configs = {}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for model in request.models:
            for method in request.methods:
                cfg = _compose(row_overrides(request, model, method))
                validate(cfg)
                configs[model, method] = cfg
    cpu = Runtime.cpu()
    for model in request.models:
        build_model_and_method(configs[model, REFERENCE_METHOD], cpu)  # vanilla runs on every model
    return configs
