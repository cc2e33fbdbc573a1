"""How to install an optional extra, in words true for this installation.

vramwatch is installed from its source tree, not from PyPI: ``pip install
'vramwatch[plot]'`` would fetch whatever PyPI has under that name. pip records
where a package came from (PEP 610, ``direct_url.json``), so the advice names
that source tree and the environment's own pip; the Debian package's advice is
its apt package. Read only on the error path (importlib.metadata is not
cheap), never by the loop.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEBIAN_SITE = "/usr/lib/python3/dist-packages/"


@dataclass(frozen=True, slots=True)
class Installation:
    """What the advice depends on, gathered once from the running interpreter."""

    debian: bool  # the .deb: Debian's python3, /usr/lib/python3/dist-packages
    pip: str  # the pip of the environment vramwatch runs in
    source: str | None  # the tree or file pip installed from, if it still exists
    requires: tuple[str, ...]  # Requires-Dist lines of the installed metadata


def hint(extra: str, apt_package: str, where: Installation) -> str:
    """The one command that installs ``extra`` here, e.g.
    ``/opt/vramwatch/bin/pip install '/root/vramwatch[plot]'``."""
    if where.debian:
        return f"apt install {apt_package}"
    if where.source is not None:
        return f"{where.pip} install '{where.source}[{extra}]'"
    marker = re.compile(rf"""extra\s*==\s*["']{re.escape(extra)}["']""")
    needs = [r.split(";")[0].strip() for r in where.requires if marker.search(r)]
    if needs:
        wanted = " ".join(f"'{n.replace(' ', '')}'" for n in needs)
        return f"{where.pip} install {wanted} (the {extra} extra)"
    return (
        f"{where.pip} install '/path/to/vramwatch[{extra}]' with the source tree vramwatch "
        f"was installed from, or apt install {apt_package} for the Debian package"
    )


def source_of(direct_url: str | None) -> str | None:
    """The local directory or file of a PEP 610 ``direct_url.json``, if it still exists."""
    if not direct_url:
        return None
    try:
        url = json.loads(direct_url).get("url", "")
    except (ValueError, AttributeError):
        return None
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme != "file":
        return None
    path = unquote(parts.path)
    return path if os.path.exists(path) else None


def this_installation() -> Installation:
    here = os.path.abspath(__file__)
    bin_dir = os.path.dirname(sys.executable)
    pip = os.path.join(bin_dir, "pip")
    if not os.access(pip, os.X_OK):
        pip = f"{sys.executable} -m pip"
    direct_url: str | None = None
    requires: tuple[str, ...] = ()
    try:
        from importlib import metadata

        dist = metadata.distribution("vramwatch")
        direct_url = dist.read_text("direct_url.json")
        requires = tuple(dist.requires or ())
    except Exception:  # noqa: BLE001 - no metadata (a checkout on PYTHONPATH): say less
        pass
    return Installation(DEBIAN_SITE in here, pip, source_of(direct_url), requires)


def install_hint(extra: str, apt_package: str) -> str:
    """:func:`hint` for the running vramwatch."""
    return hint(extra, apt_package, this_installation())
