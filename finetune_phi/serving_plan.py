"""How a model is served on a SKU, and the timeouts that follow: decided from its size.

    plan_serving(parameters, sku, settings) -> ServingPlan      (pure)

A 3.8B model in fp32 on a 4-vCPU CPU VM (the tutorial's Standard_E4s_v3) reads its 15 GB of
weights for every token it generates: about a second a token, a minute for a 64-token smoke
answer, a minute or two to load. The same model in bf16 on an A100 answers in a second or
two. Fixed timeouts sized for the tiny model would roll back a healthy deployment on the CPU
VM; timeouts sized for the CPU VM would hide a hung GPU deployment for minutes. So every
waiting period of a rollout is derived here from two estimates:

- seconds per generated token = bytes of weights / the SKU's effective memory bandwidth
  (decoding is memory-bound: each token reads every weight once), and
- seconds to load = a fixed start-up plus bytes of weights / the SKU's load rate,

each with a safety factor, and each can be set in the profile (`serving:`) instead. The
catalogue below gives the SKUs the project documents; another SKU name is served with the
figures the profile sets (`serving.seconds_per_token`, `serving.load_seconds`), or refused with
the list of known ones.

A broken deployment still fails: it does not answer at all (readiness), answers an error
(status), or answers wrongly (the smoke test); only slowness within the plan is tolerated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from finetune_phi.errors import UsageError
from finetune_phi.settings import Profile
from serving.contract import MAX_NEW_TOKENS

Dtype = Literal["float32", "bfloat16", "float16"]

BYTES_PER_PARAMETER: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
AZURE_MAX_REQUEST_TIMEOUT_MS = 180_000  # managed online deployments refuse more
SAFETY = 2.0  # every estimate is doubled before it becomes a timeout
STARTUP_SECONDS = 30.0  # process start, imports, tokenizer: before the weights
PROMPT_TOKENS = 64  # a smoke or probe prompt with its chat template, about


class ServingPlanError(UsageError):
    """The model cannot be served on that SKU as configured (it does not fit, an unknown SKU)."""


@dataclass(frozen=True)
class Sku:
    """What serving needs to know of a VM size. Bandwidths are effective figures for
    decoding (about 60% of the hardware's peak), in GB/s."""

    name: str
    gpu: bool
    memory_gb: float  # GPU memory on a GPU SKU, RAM otherwise
    decode_gb_per_s: float
    load_gb_per_s: float
    bf16: bool = False  # GPU with native bf16 (Ampere and newer)


# Figures: Azure's VM size pages (vCPUs, memory, GPU), the GPUs' data sheets (memory bandwidth),
# and, for the CPU sizes, the measurement (a 3.8B fp32 model answers 64 tokens in about
# a minute on E4s_v3: ~16 GB/s) and this project's machine (2 cores: 1.5 tokens/s on 15 GB).
SKUS: dict[str, Sku] = {
    sku.name: sku
    for sku in (
        Sku("local", gpu=False, memory_gb=24, decode_gb_per_s=20, load_gb_per_s=0.3),
        Sku("Standard_E4s_v3", gpu=False, memory_gb=32, decode_gb_per_s=16, load_gb_per_s=0.2),
        Sku("Standard_E8s_v3", gpu=False, memory_gb=64, decode_gb_per_s=24, load_gb_per_s=0.25),
        Sku("Standard_E16s_v3", gpu=False, memory_gb=128, decode_gb_per_s=32, load_gb_per_s=0.3),
        Sku("Standard_NC4as_T4_v3", gpu=True, memory_gb=16, decode_gb_per_s=190, load_gb_per_s=0.5),
        Sku("Standard_NC6s_v3", gpu=True, memory_gb=16, decode_gb_per_s=540, load_gb_per_s=0.5),
        Sku(
            "Standard_NC24ads_A100_v4",
            gpu=True,
            memory_gb=80,
            decode_gb_per_s=1160,
            load_gb_per_s=1.0,
            bf16=True,
        ),
    )
}


@dataclass(frozen=True)
class ServingOverrides:
    """What a profile may set instead of the estimate (None: derived)."""

    dtype: Dtype | Literal["auto"] = "auto"
    seconds_per_token: float | None = None
    load_seconds: float | None = None
    request_timeout_ms: int | None = None
    max_concurrent_requests_per_instance: int | None = None
    readiness_timeout_seconds: int | None = None
    probe_initial_delay_seconds: int | None = None


@dataclass(frozen=True)
class Floors:
    """The least any wait may be, whatever the model: a busy 2-core machine (CI running the
    suite beside a training job) can take seconds to answer even the tiny model, and starting
    promptflow alone takes tens of seconds. Real-size estimates are far above these."""

    probe_seconds: float = 30.0
    smoke_seconds: float = 300.0
    readiness_seconds: int = 180


@dataclass(frozen=True)
class ServingPlan:
    sku: str
    parameters: int
    dtype: Dtype
    weights_gb: float
    seconds_per_token: float
    load_seconds: float
    request_timeout_ms: int  # Azure's request_timeout_ms; the local front's upstream timeout
    max_concurrent_requests_per_instance: int
    probe_initial_delay_seconds: int  # liveness/readiness probes start after the model loaded
    readiness_timeout_seconds: int  # how long a rollout waits for a new deployment
    probe_timeout_seconds: float  # one direct or endpoint probe request (32 tokens)
    smoke_timeout_seconds: float  # the whole Prompt flow smoke test
    longest_answer_tokens: int  # the most new tokens one request can get within the timeout

    def describe(self) -> str:
        return (
            f"{_count(self.parameters)} parameters in {self.dtype} ({self.weights_gb:.1f} GB) "
            f"on {self.sku}: ~{self.seconds_per_token:.2f} s/token, loads in "
            f"~{self.load_seconds:.0f} s; request timeout {self.request_timeout_ms / 1000:.0f} s "
            f"(answers up to ~{self.longest_answer_tokens} tokens), ready within "
            f"{self.readiness_timeout_seconds} s, {self.max_concurrent_requests_per_instance} "
            "concurrent request(s) per instance"
        )


def _count(parameters: int) -> str:
    """3.82B, 1.2M: readable at both the tiny model's size and the real one's."""
    if parameters >= 1e9:
        return f"{parameters / 1e9:.2f}B"
    return f"{parameters / 1e6:.1f}M"


def sku_named(name: str, overrides: ServingOverrides | None = None) -> Sku:
    """The catalogue's SKU; an unknown name is served as a CPU VM when the profile gives its
    figures (seconds per token and load time), refused otherwise."""
    try:
        return SKUS[name]
    except KeyError:
        if overrides is not None and overrides.seconds_per_token and overrides.load_seconds:
            return Sku(name, gpu=False, memory_gb=math.inf, decode_gb_per_s=1, load_gb_per_s=1)
        raise ServingPlanError(
            f"unknown serving SKU {name!r}: the serving plan knows {', '.join(sorted(SKUS))}; "
            "for another size set serving.seconds_per_token and serving.load_seconds"
        ) from None


def serving_dtype(sku: Sku, requested: Dtype | Literal["auto"] = "auto") -> Dtype:
    """auto: bf16 on a GPU that has it, fp16 on other GPUs, fp32 on a CPU (no bf16 hardware
    on these CPUs: a bf16 matmul runs ~50x slower there)."""
    if requested != "auto":
        if requested != "float32" and not sku.gpu:
            raise ServingPlanError(
                f"serving.dtype {requested} on {sku.name} (a CPU): half precision is emulated on "
                "a CPU and ~50x slower; use float32 or auto"
            )
        if requested == "bfloat16" and sku.gpu and not sku.bf16:
            raise ServingPlanError(f"serving.dtype bfloat16: the GPU of {sku.name} has no bf16")
        return requested
    if not sku.gpu:
        return "float32"
    return "bfloat16" if sku.bf16 else "float16"


def plan_serving(
    parameters: int,
    sku: Sku,
    overrides: ServingOverrides | None = None,
    *,
    smoke_questions: int = 3,
    smoke_tokens: int = 64,
    probe_tokens: int = 32,
    floors: Floors | None = None,
) -> ServingPlan:
    """The serving plan of a model of `parameters` on `sku` (pure)."""
    chosen = overrides or ServingOverrides()
    least = floors or Floors()
    dtype = serving_dtype(sku, chosen.dtype)
    weights_gb = parameters * BYTES_PER_PARAMETER[dtype] / 1e9
    if weights_gb * 1.2 > sku.memory_gb:
        where = "GPU memory" if sku.gpu else "memory"
        raise ServingPlanError(
            f"a {parameters / 1e9:.2f}B model in {dtype} needs about {weights_gb * 1.2:.1f} GB "
            f"(weights + 20%), more than the {sku.memory_gb:g} GB {where} of {sku.name}: pick a "
            "larger SKU"
        )
    per_token = chosen.seconds_per_token or weights_gb / sku.decode_gb_per_s
    load = chosen.load_seconds or STARTUP_SECONDS + weights_gb / sku.load_gb_per_s
    # The prompt is read in one pass (compute-bound, cheap next to decoding): a few tokens' time.
    prefill = per_token * 4

    def answer_seconds(tokens: int) -> float:
        return prefill + tokens * per_token

    # A CPU serves one generation at a time (a second would only halve both); a GPU batches.
    concurrent = chosen.max_concurrent_requests_per_instance or (4 if sku.gpu else 1)
    # Long enough for the longest answer the contract allows, waiting behind the requests in
    # flight, within Azure's cap (on a CPU that cap is what limits answers: see `longest`).
    longest_request = SAFETY * answer_seconds(MAX_NEW_TOKENS) * concurrent
    request_ms = chosen.request_timeout_ms or min(
        AZURE_MAX_REQUEST_TIMEOUT_MS, max(10_000, math.ceil(longest_request) * 1000)
    )
    longest = max(0, min(MAX_NEW_TOKENS, int((request_ms / 1000 - prefill) / per_token)))
    initial_delay = chosen.probe_initial_delay_seconds or math.ceil(SAFETY * load)
    readiness = chosen.readiness_timeout_seconds or max(
        least.readiness_seconds, initial_delay + math.ceil(load) + 60
    )
    probe = max(least.probe_seconds, SAFETY * answer_seconds(probe_tokens) * concurrent + 10)
    # promptflow's own start-up (a fresh process) plus each question in turn.
    smoke = max(least.smoke_seconds, 60 + smoke_questions * SAFETY * answer_seconds(smoke_tokens))
    return ServingPlan(
        sku=sku.name,
        parameters=parameters,
        dtype=dtype,
        weights_gb=weights_gb,
        seconds_per_token=per_token,
        load_seconds=load,
        request_timeout_ms=request_ms,
        max_concurrent_requests_per_instance=concurrent,
        probe_initial_delay_seconds=initial_delay,
        readiness_timeout_seconds=readiness,
        probe_timeout_seconds=probe,
        smoke_timeout_seconds=smoke,
        longest_answer_tokens=longest,
    )


def phi3_parameters(config: dict[str, int | bool]) -> int:
    """Parameters of a Phi-3 model from its config.json (embeddings, 32 decoder layers of
    attention (fused qkv) and gated MLP (fused gate/up) with two RMSNorms each, a final norm,
    the LM head unless tied): what `sum(p.numel())` of the loaded model gives."""
    hidden = int(config["hidden_size"])
    vocab = int(config["vocab_size"])
    inter = int(config["intermediate_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = hidden // heads
    qkv = hidden * (heads + 2 * kv_heads) * head_dim
    attention = qkv + heads * head_dim * hidden
    mlp = hidden * 2 * inter + inter * hidden
    per_layer = attention + mlp + 2 * hidden
    head = 0 if config.get("tie_word_embeddings") else vocab * hidden
    return vocab * hidden + layers * per_layer + hidden + head


def profile_serving_plan(profile: Profile, parameters: int) -> ServingPlan:
    """The plan for the profile's serving SKU (Azure: `backend.inference_sku`; the local
    backend: this machine) with what the profile sets instead of the estimates."""
    backend = profile.backend
    overrides = ServingOverrides(
        dtype=profile.serving.dtype,
        seconds_per_token=profile.serving.seconds_per_token,
        load_seconds=profile.serving.load_seconds,
        request_timeout_ms=getattr(backend, "request_timeout_ms", None),
        max_concurrent_requests_per_instance=getattr(
            backend, "max_concurrent_requests_per_instance", None
        ),
        readiness_timeout_seconds=profile.rollout.readiness_timeout_seconds,
        probe_initial_delay_seconds=getattr(backend, "probe_initial_delay_seconds", None),
    )
    sku = sku_named(getattr(backend, "inference_sku", "local"), overrides)
    return plan_serving(
        parameters,
        sku,
        overrides,
        smoke_questions=profile.smoke.questions if profile.smoke.enabled else 0,
    )
