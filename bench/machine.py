"""What CPU this is (best effort, from /proc/cpuinfo and lscpu): used by the
report header, the steady-state baseline (keyed by CPU) and the peak probe."""
from __future__ import annotations

import platform
import re
import shutil
import subprocess
from typing import Dict

# AMD family (decimal) -> core generation; family 25 (19h) is split by model
_AMD_FAMILIES = {21: "Bulldozer family", 22: "Jaguar/Puma", 23: "Zen/Zen+/Zen 2",
                 26: "Zen 5"}


def amd_generation(family: int, model: int) -> str:
    if family == 23:
        return "Zen 2" if model >= 0x30 else "Zen/Zen+"
    if family == 25:
        return "Zen 4" if 0x10 <= model <= 0x1f or 0x60 <= model <= 0xaf else "Zen 3"
    if family == 26:
        return "Zen 5" if model < 0x80 else "Zen 6"
    return _AMD_FAMILIES.get(family, "")


def intel_generation(family: int, model: int) -> str:
    if family != 6:
        return ""
    return {0x55: "Skylake-SP/Cascade Lake", 0x6a: "Ice Lake-SP", 0x6c: "Ice Lake-D",
            0x7e: "Ice Lake", 0x8c: "Tiger Lake", 0x8f: "Sapphire Rapids",
            0xcf: "Emerald Rapids", 0xad: "Granite Rapids", 0x97: "Alder Lake",
            0x9a: "Alder Lake", 0xb7: "Raptor Lake", 0xba: "Raptor Lake",
            0xaa: "Meteor Lake", 0xc6: "Arrow Lake", 0xbd: "Lunar Lake",
            0x9e: "Coffee Lake", 0x8e: "Kaby/Whiskey/Comet Lake",
            0x4f: "Broadwell", 0x3f: "Haswell"}.get(model, "")


def _lscpu() -> Dict[str, str]:
    if shutil.which("lscpu") is None:
        return {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={"LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_info() -> Dict[str, object]:
    """vendor, model name, family/model/stepping, core generation, clocks, ISA
    extensions that matter here, hypervisor; missing fields are left out."""
    info: Dict[str, object] = {}
    raw: Dict[str, str] = {}
    mhz = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "cpu MHz":
                    try:
                        mhz.append(float(value))
                    except ValueError:
                        pass
                raw.setdefault(key, value.strip())
    except OSError:
        pass
    ls = _lscpu()
    info["vendor"] = raw.get("vendor_id") or ls.get("Vendor ID") or platform.machine()
    info["model_name"] = (raw.get("model name") or ls.get("Model name")
                          or platform.processor() or platform.machine())
    try:
        fam = int(raw.get("cpu family") or ls.get("CPU family"))
        model = int(raw.get("model") or ls.get("Model"))
        info["family"], info["model"] = fam, model
        gen = (amd_generation(fam, model) if info["vendor"] == "AuthenticAMD"
               else intel_generation(fam, model) if info["vendor"] == "GenuineIntel" else "")
        if gen:
            info["generation"] = gen
    except (TypeError, ValueError):
        pass
    if raw.get("stepping", "").isdigit():
        info["stepping"] = int(raw["stepping"])
    if mhz:
        info["mhz_now"] = max(mhz)
    for key, name in (("CPU max MHz", "mhz_max"), ("CPU min MHz", "mhz_min")):
        try:
            info[name] = float(ls[key])
        except (KeyError, ValueError):
            pass
    m = re.search(r"@\s*([\d.]+)\s*GHz", str(info["model_name"]))
    if m:
        info["mhz_nominal"] = float(m.group(1)) * 1000
    if ls.get("Hypervisor vendor"):
        info["hypervisor"] = ls["Hypervisor vendor"]
    flags = set((raw.get("flags") or ls.get("Flags") or "").split())
    info["isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16",
                               "amx_tile", "asimd", "sve") if f in flags]
    if ls.get("L2 cache"):
        info["l2"] = ls["L2 cache"]
    if ls.get("L3 cache"):
        info["l3"] = ls["L3 cache"]
    return info


def cpu_summary(info: Dict[str, object] = None) -> str:
    """One line: 'AMD EPYC (AuthenticAMD family 26 model 2: Zen 5; 2596 MHz; AVX-512 yes)'."""
    info = cpu_info() if info is None else info
    parts = [str(info.get("vendor", ""))]
    if "family" in info:
        parts[0] += f" family {info['family']} model {info['model']}"
        if info.get("generation"):
            parts[0] += f": {info['generation']}"
    clock = info.get("mhz_max") or info.get("mhz_nominal") or info.get("mhz_now")
    if clock:
        parts.append(f"{clock:.0f} MHz" + (" max" if info.get("mhz_max") else ""))
    isa = info.get("isa") or []
    if isa:
        parts.append("AVX-512 " + ("yes" if "avx512f" in isa else "no"))
    if info.get("hypervisor"):
        parts.append(f"under {info['hypervisor']}")
    return f"{info.get('model_name')} ({'; '.join(p for p in parts if p)})"


def cpu_key(info: Dict[str, object] = None) -> str:
    """A key for per-CPU baselines: vendor, model name, family/model."""
    info = cpu_info() if info is None else info
    return f"{info.get('vendor')}|{info.get('model_name')}|{info.get('family')}|{info.get('model')}"


if __name__ == "__main__":
    print(cpu_summary())
    print(cpu_info())
