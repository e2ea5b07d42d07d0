"""THE table of RKLLM releases: which ABI family each release speaks, what each family has, the
SoCs the runtime supports. Every other copy (the shim's loader, the simulator, setup.py, the
tests) derives from this module or is checked against it by tests/test_architecture.py.

Standard library only and importing nothing from ``rkllm``: setup.py reads it before the
package is built.

A *release* is a version of Rockchip's runtime (``1.2.3``). A *family* is a set of releases
with one binary layout of ``rkllm.h``; it is named after its first release and declared in
``include/<family>/rkllm.h``. Adding a release with an existing layout: one line in
``RELEASES``. A new layout: see docs/architecture.md.
"""

from __future__ import annotations

import re

#: ABI families, oldest first, each with the releases that share its layout (oldest first;
#: the newest is the release the simulated runtime of that family reports).
RELEASES: dict[str, tuple[str, ...]] = {
    "1.1.0": ("1.1.0", "1.1.1", "1.1.2", "1.1.3", "1.1.4"),
    "1.2.0": ("1.2.0",),
    "1.2.1": ("1.2.1", "1.2.2", "1.2.3"),
    "1.3.0": ("1.3.0",),
}
FAMILIES: tuple[str, ...] = tuple(RELEASES)
#: The family ``runtime="sim"`` simulates when none is named.
DEFAULT_FAMILY = FAMILIES[-1]

#: Run options and calls of the Python API -> the first family that has them.
FEATURES: dict[str, str] = {
    "keep_history": "1.2.0",
    "logits": "1.2.0",
    "role": "1.2.1",
    "enable_thinking": "1.2.1",
    "sampling": "1.3.0",
    "image_markers": "1.3.0",
    "clear_kv_cache": "1.2.0",
    "kv_cache_range": "1.2.1",
    "kv_cache_size": "1.2.1",
    "set_chat_template": "1.2.0",
    "set_function_tools": "1.2.1",
}

#: Functions the runtime library exports -> the first family that has them (the shim's loader
#: tells families apart by them when a library carries no version string).
FUNCTIONS: dict[str, str] = {
    **dict.fromkeys((
        "rkllm_createDefaultParam", "rkllm_init", "rkllm_load_lora", "rkllm_load_prompt_cache",
        "rkllm_release_prompt_cache", "rkllm_destroy", "rkllm_run", "rkllm_run_async",
        "rkllm_abort", "rkllm_is_running"), "1.1.0"),
    "rkllm_clear_kv_cache": "1.2.0",
    "rkllm_set_chat_template": "1.2.0",
    "rkllm_get_kv_cache_size": "1.2.1",
    "rkllm_set_function_tools": "1.2.1",
    "rkllm_set_cross_attn_params": "1.2.1",
}

#: Exported functions the shim does not bind, and why.
UNBOUND_FUNCTIONS = {"rkllm_run_async": "the shim runs rkllm_run on a thread of its own"}

#: SoCs the runtime supports, as the device tree and model names spell them.
SOCS: tuple[str, ...] = ("rk3588", "rk3576", "rk3562", "rv1126b")
#: Other spellings of a supported SoC (the RK3588S runs RK3588 models).
SOC_ALIASES: dict[str, str] = {"rk3588s": "rk3588"}


class UnknownReleaseError(ValueError):
    """A release that belongs to no family this package knows."""


def release_key(release: str) -> tuple[int, int, int]:
    """``"v1.2.3"`` -> ``(1, 2, 3)`` for comparing releases; ValueError when not a release
    number (a suffix such as ``b1`` after the three numbers is ignored)."""
    m = re.match(r"\s*v?(\d+)\.(\d+)\.(\d+)", release, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a release number: {release!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def supported_releases() -> tuple[str, ...]:
    return tuple(r for rs in RELEASES.values() for r in rs)


def family_of(release: str) -> str:
    """The ABI family of a release or family name: ``"1.1.4"`` -> ``"1.1.0"``, ``"v1.2.3"`` ->
    ``"1.2.1"``. Raises :class:`UnknownReleaseError` (a ValueError) naming the supported
    releases when it is in no family. ``known_family`` is the variant returning None."""
    found = known_family(release)
    if found is None:
        raise UnknownReleaseError(
            f"unknown RKLLM release {release!r}; supported releases: "
            f"{', '.join(supported_releases())}")
    return found


def known_family(release: str) -> str | None:
    """:func:`family_of`, but None for a release in no family (or not a release at all)."""
    try:
        key = release_key(release)
    except ValueError:
        return None
    for family, releases in RELEASES.items():
        if any(release_key(r) == key for r in releases):
            return family
    return None


def newest_release(family: str) -> str:
    """The newest release of a family (what its simulated runtime reports)."""
    return RELEASES[family_of(family)][-1]


def is_newer_than_every_family(release: str) -> bool:
    return release_key(release) > release_key(RELEASES[FAMILIES[-1]][-1])


def has(family: str, feature: str) -> bool:
    """Whether ``family`` has a feature (a ``FEATURES`` key) or function (a ``FUNCTIONS`` key)."""
    since = FEATURES.get(feature) or FUNCTIONS[feature]
    return release_key(family) >= release_key(since)


def family_code(family: str) -> int:
    """The number the C sources use for a family: ``"1.2.1"`` -> ``121``."""
    major, minor, patch = release_key(family_of(family))
    return major * 100 + minor * 10 + patch


def normalise_soc(name: str) -> str | None:
    """A supported SoC's canonical name (``"RK3588S"`` -> ``"rk3588"``), else None."""
    low = name.strip().lower()
    low = SOC_ALIASES.get(low, low)
    return low if low in SOCS else None


#: A regex alternation of every supported SoC spelling (longest first), for scanning text.
SOC_PATTERN = "|".join(sorted([*SOCS, *SOC_ALIASES], key=len, reverse=True))
