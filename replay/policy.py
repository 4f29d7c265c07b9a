"""Charge policies: named settings of the same few knobs (shared/KERNEL-MODEL.md §5).

Every policy the 2015 thread argued about, and today's kernel, is one `Policy`. New ones
come from a TOML file of the same keys:

    [policy.my-idea]
    description = "mainline, but stocks of 128 pages"
    base = "mainline-6.18"      # optional: start from a built-in policy
    stock_batch = 128
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from replay.ops import NR_MEMCG_STOCK
from traces.errors import UserError

CHARGE_UNITS = ("slab", "object")
SLAB_GROWTH = ("caller", "nowait-high-order")
NODE_LOCAL_CHARGES = ("caller", "nowait")
HIGH_MODES = ("sync", "return-to-user", "mainline", "fail-nowait", "watermark")
THP_CHARGE_GFPS = ("fault", "no-reclaim", "reclaim")


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    # What a kmem charge is for: a whole slab page (4.x per-memcg caches) or one object
    # with byte-granular object stocks (6.x obj_cgroup).
    charge_unit: str = "object"
    # gfp of the charge for a new slab: the caller's, or (4.3, 6af3142bed1f) without
    # __GFP_DIRECT_RECLAIM when SLUB tries an order above the cache's minimum.
    slab_growth_gfp: str = "caller"
    # gfp of the charge for a new slab on the NUMA node an allocation prefers: as slab_growth_gfp
    # says ("caller"), or (4.2 SLAB, gfp_exact_node) without __GFP_DIRECT_RECLAIM ("nowait"); when
    # that charge fails, SLAB's fallback_alloc takes a free object from another node's slabs, and
    # only then charges a new slab with the caller's gfp.
    node_local_charge: str = "caller"
    stock_batch: int = 64  # MEMCG_CHARGE_BATCH: 32 up to ~5.15, 64 from ~6.1
    # How many memcgs a CPU's page stock caches: 1 before 6.16 (memcgs charging on one CPU
    # drain each other's stock), NR_MEMCG_STOCK = 7 since (f735eebe55f8). It matters where the
    # trace has memcgs below the target (sibling memcgs under a shared limit).
    stock_memcgs: int = 1
    # memory.high: "sync" (4.2: reclaim in the charge path, blocking charges only),
    # "return-to-user" (4.4: reclaim the overage when the task returns to user space),
    # "mainline" (6.x: as 4.4, plus synchronous reclaim past 64 pages, async in irq, and
    # throttling), "fail-nowait" (4.2, and non-blocking charges fail above high),
    # "watermark" (4.2, plus async reclaim whenever max - usage < watermark_margin).
    high_mode: str = "mainline"
    max_reclaim_retries: int = 16  # MAX_RECLAIM_RETRIES: 5 in 4.x, 16 in 6.x
    # Whether slab the shrinkers free during memcg reclaim counts as its progress (a reclaim
    # that made progress is retried without using up a retry): up to 6.4 it does, since
    # "mm: vmscan: ignore non-LRU-based reclaim in memcg reclaim" (583c27a167c2, 6.5) not.
    shrunk_slab_counts: bool = False
    watermark_margin_pages: int = 0
    # A huge page's charge in its fault: with the fault's own gfp ("fault": __GFP_DIRECT_RECLAIM
    # where THP defrag lets the fault compact, as with defrag=madvise for MADV_HUGEPAGE), never
    # reclaiming ("no-reclaim": the 2015 thread's "THP pages are allocated without GFP_WAIT when
    # defrag is disabled"), or always ("reclaim": Davydov's "better reclaim 2 MB now than 512
    # small pages a moment later"). A failed one falls back to small pages.
    thp_charge_gfp: str = "fault"

    def validate(self) -> None:
        for knob, allowed in (("charge_unit", CHARGE_UNITS), ("slab_growth_gfp", SLAB_GROWTH), ("high_mode", HIGH_MODES),
                              ("thp_charge_gfp", THP_CHARGE_GFPS), ("node_local_charge", NODE_LOCAL_CHARGES)):
            if getattr(self, knob) not in allowed:
                raise UserError(f"policy {self.name}: {knob} = {toml_text(getattr(self, knob))}; choose one of {', '.join(allowed)}")
        if not isinstance(self.shrunk_slab_counts, bool):
            raise UserError(f"policy {self.name}: shrunk_slab_counts = {toml_text(self.shrunk_slab_counts)}; give true or false")
        for knob, low, high in (("stock_batch", 1, None), ("stock_memcgs", 1, NR_MEMCG_STOCK), ("max_reclaim_retries", 0, None),
                                ("watermark_margin_pages", 0, None)):
            value = getattr(self, knob)
            if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
                within = f">= {low}" if high is None else f"from {low} to {high}"
                raise UserError(f"policy {self.name}: {knob} = {toml_text(value)}; give a whole number {within}")
        if self.high_mode == "watermark" and self.watermark_margin_pages == 0:
            raise UserError(f"policy {self.name}: high_mode watermark needs watermark_margin_pages > 0")

    def knobs(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("name", "description")}


def toml_text(value: object) -> str:
    """A value as a TOML file writes it (true, "lazy", 3), for messages about one."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


KERNEL_4X = dict(charge_unit="slab", slab_growth_gfp="nowait-high-order", stock_batch=32, max_reclaim_retries=5,
                 shrunk_slab_counts=True)

BUILTIN = {
    p.name: p
    for p in (
        Policy("nowait-slab-charge", "4.3-rc: high-order slab charges without reclaim, memory.high checked only for blocking charges (the bug in the seed thread)",
               high_mode="sync", **KERNEL_4X),
        Policy("caller-gfp", "Davydov's fix: slab charges take the caller's gfp, so memcg reclaim runs for high-order slabs too",
               high_mode="sync", **{**KERNEL_4X, "slab_growth_gfp": "caller"}),
        Policy("nowait-node-charge", "4.2 SLAB: a new slab on the preferred NUMA node is charged without reclaim; when "
                                     "that fails, a free object is taken from another node (the seed thread's first case)",
               high_mode="sync", node_local_charge="nowait", **{**KERNEL_4X, "slab_growth_gfp": "caller"}),
        Policy("return-to-user", "Tejun's 4.4 change: memory.high overage is reclaimed when the task returns to user space",
               high_mode="return-to-user", **KERNEL_4X),
        Policy("fail-nowait-above-high", "Hocko's alternative: non-blocking charges fail while usage is above memory.high",
               high_mode="fail-nowait", **KERNEL_4X),
        Policy("watermark", "Davydov's memcg-internal watermarks: async reclaim whenever max - usage drops below a margin",
               high_mode="watermark", watermark_margin_pages=256, **KERNEL_4X),
        Policy("mainline-6.1", "6.1 LTS: as today's kernel, but slab the shrinkers free counts as memcg reclaim progress",
               shrunk_slab_counts=True),
        Policy("mainline-6.12", "6.12 LTS: as today's kernel, but each CPU's page stock caches one memcg",
               stock_memcgs=1),
        Policy("mainline-6.18", "today's kernel: object charging, caller's gfp, 64-page stocks for up to 7 memcgs per CPU, "
                                "deferred and throttled memory.high", stock_memcgs=NR_MEMCG_STOCK),
        Policy("thp-no-reclaim", "today's kernel, but a huge page's charge never reclaims (the thread: as with THP defrag "
                                 "off); one that fails falls back to small pages", stock_memcgs=NR_MEMCG_STOCK,
               thp_charge_gfp="no-reclaim"),
        Policy("thp-reclaim", "today's kernel, but a huge page's charge always may reclaim (Davydov: 2 MB now rather than "
                              "512 small pages later)", stock_memcgs=NR_MEMCG_STOCK, thp_charge_gfp="reclaim"),
    )
}


# The model of each kernel era: (first release, policy, what it models).
KERNEL_ERAS = (
    ((4, 2), "caller-gfp", "4.2: slab pages charged with the caller's gfp, memory.high reclaimed in the charge path"),
    ((4, 3), "nowait-slab-charge", "4.3: high-order slab charges without direct reclaim (6af3142bed1f)"),
    ((4, 4), "return-to-user", "4.4 to 6.0: memory.high reclaimed on return to user space (b23afb93d317)"),
    ((6, 1), "mainline-6.1", "6.1 to 6.4: object charging, 64-page stocks, throttled memory.high"),
    ((6, 5), "mainline-6.12", "6.5 to 6.15: as 6.1, but memcg reclaim no longer counts slab the shrinkers free "
                              "(583c27a167c2)"),
    ((6, 16), "mainline-6.18", "6.16 and later: as 6.5, but each CPU's page stock caches up to 7 memcgs "
                               "(f735eebe55f8)"),
)


def for_kernel(release: str) -> tuple[Policy, str]:
    """The built-in policy closest to a kernel release (e.g. "6.18.44-fc"), and why."""
    try:
        version = tuple(int(part) for part in release.split("-")[0].split(".")[:2])
    except ValueError:
        raise UserError(f"kernel release {release!r}: expected MAJOR.MINOR...") from None
    eras = [era for era in KERNEL_ERAS if era[0] <= version] or [KERNEL_ERAS[0]]
    _, name, what = eras[-1]
    return BUILTIN[name], f"{name} for kernel {release} ({what})"


def kernel_model_among(release: str | None, names: list[str]) -> str:
    """What a trace's policies are compared with: the model of its kernel (for_kernel) if it
    is among `names`, else the first of them."""
    try:
        model = for_kernel(release)[0].name if release else None
    except UserError:  # a release that names no version
        model = None
    return model if model in names else names[0]


def get(name: str) -> Policy:
    if name not in BUILTIN:
        raise UserError(f"no policy {name!r}; the built-in policies are {', '.join(BUILTIN)} (see chargeplay policies)")
    return BUILTIN[name]


# Columns that sit beside one column per policy in outcomes.parquet and the report's tables.
RESERVED_NAMES = frozenset({"row", "call_site", "cache", "pid", "comm", "kind", "gfp", "symbol", "gfp_class", "task"})


def load_toml(path: Path) -> dict[str, Policy]:
    """Policies defined in a TOML file, each validated; errors name the policy and the key."""
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML ({err})") from None
    tables = document.get("policy")
    if not isinstance(tables, dict) or not tables:
        raise UserError(f"{path}: no [policy.NAME] tables; see chargeplay policies --help")
    policies = {}
    for name, table in tables.items():
        try:
            policies[name] = _policy_of(name, table)
        except UserError as error:
            raise UserError(f"{path}: {error}") from None
    return policies


def _policy_of(name: str, table: object) -> Policy:
    """One [policy.NAME] table as a validated Policy."""
    known = {f.name for f in fields(Policy)} - {"name"}
    if name in RESERVED_NAMES:
        raise UserError(f"policy.{name}: {name!r} is a column of the result and the report; choose another name")
    if name in BUILTIN:
        raise UserError(f"policy.{name}: a built-in policy's name; give yours another (base = \"{name}\" starts from it)")
    if not isinstance(table, dict):
        raise UserError(f"policy.{name} is not a table")
    nested = [key for key, value in table.items() if isinstance(value, dict)]
    if nested:  # [policy.mainline-6.18] unquoted reads as a table "18" inside a table "mainline-6"
        raise UserError(f"[policy.{name}.{nested[0]}] is a table inside a table: quote a name with dots, "
                        f"[policy.\"{name}.{nested[0]}\"]")
    unknown = set(table) - known - {"base"}
    if unknown:
        raise UserError(f"policy {name}: unknown keys {', '.join(sorted(unknown))}; the knobs are {', '.join(sorted(known))}")
    if not isinstance(table.get("description", ""), str) or not isinstance(table.get("base", ""), str):
        key = "description" if not isinstance(table.get("description", ""), str) else "base"
        raise UserError(f"policy {name}: {key} = {toml_text(table[key])}; give a string in quotes")
    base = get(table["base"]) if "base" in table else Policy(name, "")
    settings = {k: v for k, v in table.items() if k != "base"}
    policy = replace(base, name=name, description=settings.pop("description", base.description), **settings)
    policy.validate()
    return policy
