"""What an ansible task hands to ansible-playbook: its extra vars (data, never templates)
and its inventory (a host list or a named inventory of the catalog).

Extra vars are written to `env/extravars` with every string (keys included) tagged
`!unsafe`, so Ansible never renders them: `{{ lookup('pipe', 'id') }}` reaches the play as
those 28 characters, not as the agent's user id. Names that steer Ansible itself
(`ansible_*`: the connection, the interpreter, become) or are its magic variables cannot be
set by a task: extra vars win over everything, so such a name would let a task's input
choose what runs where.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# types-PyYAML is not among the dev dependencies: yaml is untyped here.
import yaml  # type: ignore[import-untyped]

from chiffon.agent.tools.base import FORBIDDEN, INVALID_ARGUMENTS, ToolRefused

VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_EXTRA_VARS_BYTES = 256 * 1024
MAX_DEPTH = 16
#: Ansible's magic variables: set from outside, they would lie to the play about itself.
MAGIC_VARS = frozenset(
    {
        "environment",
        "group_names",
        "groups",
        "hostvars",
        "inventory_dir",
        "inventory_file",
        "inventory_hostname",
        "inventory_hostname_short",
        "omit",
        "play_hosts",
        "playbook_dir",
        "role_name",
        "role_path",
        "vars",
    }
)
HOST_LIST = re.compile(r"[A-Za-z0-9_.:-]{1,253}(,[A-Za-z0-9_.:-]{1,253})*,?")
INVENTORIES_DIR = "inventories"
INVENTORY_SUFFIXES = (".yml", ".yaml", ".ini")
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class _Unsafe(str):
    """A string Ansible must take as data: written with the `!unsafe` tag."""


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]
    pass


def _represent_unsafe(dumper: yaml.SafeDumper, value: _Unsafe) -> Any:
    return dumper.represent_scalar("!unsafe", str(value), style='"')


_Dumper.add_representer(_Unsafe, _represent_unsafe)


def check_extra_vars(raw: object) -> dict[str, Any]:
    """The task's extra vars, validated; ToolRefused if they cannot be handed over."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ToolRefused(INVALID_ARGUMENTS, "extra_vars must be an object")
    for name in raw:
        if not isinstance(name, str) or not VAR_NAME.fullmatch(name):
            raise ToolRefused(
                INVALID_ARGUMENTS,
                f"extra var {name!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
            )
        if name.lower().startswith("ansible_") or name in MAGIC_VARS:
            raise ToolRefused(
                FORBIDDEN, f"extra var {name!r} steers Ansible itself and may not be set by a task"
            )
    try:
        size = len(json.dumps(raw))
    except (TypeError, ValueError) as error:
        raise ToolRefused(INVALID_ARGUMENTS, f"extra_vars are not JSON data: {error}") from None
    if size > MAX_EXTRA_VARS_BYTES:
        raise ToolRefused(
            INVALID_ARGUMENTS, f"extra_vars take {size} bytes, more than {MAX_EXTRA_VARS_BYTES}"
        )
    _check_depth(raw, 0)
    return dict(raw)


def _check_depth(value: object, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ToolRefused(INVALID_ARGUMENTS, f"extra_vars nest deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        for item in value.values():
            _check_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth(item, depth + 1)


def _tagged(value: object) -> object:
    if isinstance(value, str):
        return _Unsafe(value)
    if isinstance(value, Mapping):
        return {_Unsafe(str(key)): _tagged(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_tagged(item) for item in value]
    return value


def extravars_yaml(extra_vars: Mapping[str, Any]) -> str:
    """The YAML of `env/extravars`: every string `!unsafe`, numbers, booleans and nulls as they are."""
    text: str = yaml.dump(
        _tagged(dict(extra_vars)), Dumper=_Dumper, allow_unicode=True, sort_keys=False
    )
    return text


def inventory_for(raw: object, catalog: Path, private_dir: Path) -> Path:
    """The inventory file for the task: a host list (`"localhost,"`, `"a,b"`) written to the
    private data dir, or the catalog's `inventories/NAME.(yml|yaml|ini)`.

    A host list is written as a file (not passed as `-i "a,"`), so a file of that name in
    the agent's working directory can never be taken for it. `localhost` in a host list runs
    as Ansible's implicit localhost does: a local connection, with the playbook's Python."""
    if not isinstance(raw, str) or not raw:
        raise ToolRefused(
            INVALID_ARGUMENTS, 'inventory must be a host list ("localhost,") or a name'
        )
    if "," in raw:
        if not HOST_LIST.fullmatch(raw):
            raise ToolRefused(
                INVALID_ARGUMENTS, f"inventory {raw!r} is not a list of host names separated by ','"
            )
        hosts: dict[str, dict[str, str]] = {}
        for host in filter(None, raw.split(",")):
            hosts[host] = (
                {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                }
                if host in LOCAL_HOSTS
                else {}
            )
        path = private_dir / "inventory.yml"
        path.write_text(yaml.safe_dump({"all": {"hosts": hosts}}, sort_keys=False))
        return path
    if not VAR_NAME.fullmatch(raw.replace("-", "_")):
        raise ToolRefused(
            FORBIDDEN,
            f"inventory {raw!r} is neither a host list nor an inventory name of the catalog",
        )
    folder = (catalog / INVENTORIES_DIR).resolve()
    for suffix in INVENTORY_SUFFIXES:
        path = folder / f"{raw}{suffix}"
        if path.is_file() and path.resolve().parent == folder:
            return path
    raise ToolRefused(FORBIDDEN, f"no inventory {raw!r} in the catalog's {INVENTORIES_DIR}/")
