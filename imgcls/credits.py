"""Credit lines for the photographers: what a licence asks us to show next to an image."""
from __future__ import annotations

from typing import Any, Mapping, Optional

LICENSE_NAMES = {"cc0": "CC0", "pdm": "Public Domain Mark", "by": "CC BY", "by-sa": "CC BY-SA", "by-nd": "CC BY-ND",
                 "by-nc": "CC BY-NC", "by-nc-sa": "CC BY-NC-SA", "by-nc-nd": "CC BY-NC-ND"}


def license_name(license: Optional[str]) -> str:
    """'by-sa 4.0' -> 'CC BY-SA 4.0'; None -> 'licence unknown'."""
    if not license:
        return "licence unknown"
    code, _, version = license.strip().partition(" ")
    name = LICENSE_NAMES.get(code.lower())
    return f"{name} {version}".strip() if name else license


def credit_line(image: Mapping[str, Any], *, short: bool = False) -> Optional[str]:
    """The image's credit: the source's own attribution line when it gave one, else one built from
    title, creator and licence. `short` gives 'creator, licence' for captions. None for own uploads."""
    creator, licence = image.get("creator"), image.get("license")
    if image.get("source") in (None, "upload", "folder") and not (creator or licence or image.get("attribution")):
        return None
    if short:
        return ", ".join(p for p in (creator, license_name(licence)) if p)
    if image.get("attribution"):
        return str(image["attribution"])
    title = f'"{image["title"]}"' if image.get("title") else "Image"
    parts = [f"{title} by {creator}" if creator else title, license_name(licence)]
    if image.get("license_url"):
        parts[-1] += f" ({image['license_url']})"
    where = image.get("landing_url") or image.get("source_url")
    if where:
        parts.append(f"from {where}")
    return ", ".join(parts)
