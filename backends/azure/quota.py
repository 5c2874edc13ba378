"""How many vCPUs of quota a run holds at once, per VM family, the way Azure ML counts them.

Two rules from the service's documentation, which `azure preflight` checks against the
region's usage and `azure dry-run` prints:

- A managed online deployment reserves `ceil(1.2 x instances) x cores of its SKU` of its
  family's quota: "Azure Machine Learning reserves 20% of your compute resources for
  performing upgrades on some VM SKUs. If you request a given number of instances for those
  VM SKUs in a deployment, you must have a quota for ceil(1.2 * number of instances requested
  for deployment) * number of cores for the VM SKU" (Manage and increase quotas, "Virtual
  machine quota allocation for deployment":
  https://learn.microsoft.com/azure/machine-learning/how-to-manage-quotas#virtual-machine-quota-allocation-for-deployment).
  The SKUs exempt from the 20% are marked "Skip 20% Reservation" in the managed online
  endpoints SKU list (below).
- During a blue-green rollout both colours exist at once: the new one is created at 0%
  traffic while the old one still serves, and the old one is deleted only at the end
  (finetune_phi/rollout.py). So the inference SKU's family needs two deployments' worth:
  two Standard_E4s_v3 deployments of one instance hold 2 x ceil(1.2 x 1) x 4 = 16 vCPUs of
  standardESv3Family, not 4.

The training cluster holds `max nodes x vCPUs` of its family (AmlCompute has no 20%
reservation) and keeps its nodes for `idle_seconds_before_scale_down` after the last job, so
while a rollout runs right after training the two add up when they share a family.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune_phi.settings import AzureBackendSettings

SKU_LIST_URL = "https://learn.microsoft.com/azure/machine-learning/reference-managed-online-endpoints-vm-sku-list"
QUOTA_RULE_URL = (
    "https://learn.microsoft.com/azure/machine-learning/how-to-manage-quotas"
    "#virtual-machine-quota-allocation-for-deployment"
)
# Deployments of the endpoint that exist at once during a blue-green rollout.
ROLLOUT_COLOURS = 2

# The managed online endpoints SKU list (SKU_LIST_URL: the page dated 2023-10-18, read
# 2026-11): family -> (size, cores) for each VM size a managed online deployment accepts. The
# page writes a few families with spaces ("standard NCASv3_T4 Family"); the names here are
# the ones usage reports carry (spaces removed), matched without regard to case.
MANAGED_ONLINE_SKUS: dict[str, tuple[tuple[str, int], ...]] = {
    "standardDASv4Family": tuple((f"Standard_D{n}as_v4", n) for n in (2, 4, 8, 16, 32, 48, 64, 96)),
    "standardDAv4Family": tuple((f"Standard_D{n}a_v4", n) for n in (2, 4, 8, 16, 32, 48, 64, 96)),
    "standardDSv2Family": (
        ("Standard_DS1_v2", 1),
        ("Standard_DS2_v2", 2),
        ("Standard_DS3_v2", 4),
        ("Standard_DS4_v2", 8),
        ("Standard_DS5_v2", 16),
    ),
    "standardESv3Family": tuple((f"Standard_E{n}s_v3", n) for n in (2, 4, 8, 16, 32, 48, 64)),
    "standardFSv2Family": tuple((f"Standard_F{n}s_v2", n) for n in (2, 4, 8, 16, 32, 48, 64, 72)),
    "standardFXMDVSFamily": tuple((f"Standard_FX{n}mds", n) for n in (4, 12, 24, 36, 48)),
    "standardLASv3Family": tuple((f"Standard_L{n}as_v3", n) for n in (8, 16, 32, 48, 64, 80)),
    "standardLSv2Family": tuple((f"Standard_L{n}s_v2", n) for n in (8, 16, 32, 48, 64, 80)),
    "standardLSv3Family": tuple((f"Standard_L{n}s_v3", n) for n in (8, 16, 32, 48, 64, 80)),
    "standardNCADSA100v4Family": tuple((f"Standard_NC{n}ads_A100_v4", n) for n in (24, 48, 96)),
    "standardNCASv3_T4Family": tuple((f"Standard_NC{n}as_T4_v3", n) for n in (4, 8, 16, 64)),
    "standardNCSv2Family": tuple((f"Standard_NC{n}s_v2", n) for n in (6, 12, 24)),
    "standardNCSv3Family": tuple((f"Standard_NC{n}s_v3", n) for n in (6, 12, 24)),
    "standardNCADSH100v5Family": (
        ("Standard_NC40ads_H100_v5", 40),
        ("Standard_NC80adis_H100_v5", 80),
    ),
    "standardNDAMSv4_A100Family": (("Standard_ND96amsr_A100_v4", 96),),
    "standardNDASv4_A100Family": (("Standard_ND96asr_v4", 96),),
    "standardNDSv2Family": (("Standard_ND40rs_v2", 40),),
    "standardNDv5H100Family": (
        ("Standard_ND96is_H100_v5", 96),
        ("Standard_ND96isr_H100_v5", 96),
    ),
    "standardNVADSA10v5Family": tuple((f"Standard_NV{n}ads_A10_v5", n) for n in (6, 12, 18, 36, 72))
    + (("Standard_NV36adms_A10_v5", 36),),
}
# The families the list marks "Skip 20% Reservation: Yes" (every size of each).
SKIPS_RESERVATION = frozenset(
    {
        "standardNCADSA100v4Family",
        "standardNCADSH100v5Family",
        "standardNDAMSv4_A100Family",
        "standardNDASv4_A100Family",
        "standardNDSv2Family",
        "standardNDv5H100Family",
    }
)


@dataclass(frozen=True)
class ManagedSku:
    """A VM size managed online deployments accept (MANAGED_ONLINE_SKUS)."""

    name: str
    family: str
    cores: int
    skips_reservation: bool


_BY_NAME = {
    size.lower(): ManagedSku(size, family, cores, family in SKIPS_RESERVATION)
    for family, sizes in MANAGED_ONLINE_SKUS.items()
    for size, cores in sizes
}


def family_key(family: str) -> str:
    """A family name as usages, VM sizes and the SKU list all agree on it."""
    return family.replace(" ", "").lower()


def managed_sku(name: str) -> ManagedSku | None:
    """The managed online endpoint SKU `name` (any case), or None: not deployable there."""
    return _BY_NAME.get(name.lower())


def similar_managed_skus(name: str, limit: int = 5) -> list[str]:
    """Managed online SKUs of the same series letter as `name` (Standard_E... -> E sizes)."""
    series = name.split("_")[1][:1].upper() if "_" in name else ""
    return [s.name for s in _BY_NAME.values() if s.name.split("_")[1][:1] == series][:limit]


def reserved_instances(instances: int, sku: ManagedSku) -> int:
    """ceil(1.2 x instances), or instances for a SKU exempt from the 20% (integer maths:
    ceil(6n / 5))."""
    return instances if sku.skips_reservation else (6 * instances + 4) // 5


@dataclass(frozen=True)
class QuotaNeed:
    """vCPUs one part of a run holds of one VM family, and the arithmetic, said in words."""

    role: str  # "training" | "inference"
    sku: str
    family: str
    vcpus: int
    how: str


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' * (count != 1)}"


def training_need(settings: AzureBackendSettings, family: str, cores: int) -> QuotaNeed:
    """The cluster at its maximum: max nodes x the training SKU's vCPUs."""
    nodes = settings.training_max_nodes
    return QuotaNeed(
        "training",
        settings.training_sku,
        family,
        nodes * cores,
        f"cluster {settings.training_compute} at {_plural(nodes, 'node')} x {cores} vCPUs "
        f"of {settings.training_sku}",
    )


def inference_need(
    settings: AzureBackendSettings, sku: ManagedSku, *, existing: int = 0
) -> QuotaNeed:
    """The deployments a blue-green rollout adds to the `existing` ones of the endpoint (whose
    reservation the region's usage already counts): ROLLOUT_COLOURS at once in all, each of
    the profile's SKU and instance count reserving ceil(1.2 x instances) x cores
    (QUOTA_RULE_URL)."""
    deployments = max(0, ROLLOUT_COLOURS - existing)
    count = settings.inference_instance_count
    reserved = reserved_instances(count, sku)
    if existing:
        colours = (
            f"{_plural(deployments, 'new deployment')} (the endpoint's "
            f"{_plural(existing, 'deployment')} already in the usage)"
        )
    else:
        colours = f"{_plural(deployments, 'deployment')} (both colours of a blue-green rollout)"
    if sku.skips_reservation:
        per = f"{_plural(count, 'instance')} (no 20% reservation for this SKU)"
    else:
        per = f"ceil(1.2 x {_plural(count, 'instance')})"
    return QuotaNeed(
        "inference",
        settings.inference_sku,
        sku.family,
        deployments * reserved * sku.cores,
        f"{colours} x {per} x {sku.cores} vCPUs of {settings.inference_sku} "
        f"= {deployments} x {reserved} x {sku.cores}",
    )


def by_family(needs: list[QuotaNeed]) -> dict[str, list[QuotaNeed]]:
    """Needs grouped by family (one family's parts are held at once and add up), in order."""
    grouped: dict[str, list[QuotaNeed]] = {}
    for need in needs:
        grouped.setdefault(family_key(need.family), []).append(need)
    return grouped


def describe(needs: list[QuotaNeed]) -> str:
    """'<total> vCPUs of <family>: <role> <vcpus> = <how> + ...' for one family's needs."""
    total = sum(n.vcpus for n in needs)
    parts = " + ".join(f"{n.role} {n.vcpus} = {n.how}" for n in needs)
    return f"{total} vCPUs of {needs[0].family}: {parts}"
