"""What the ansible tool hands to ansible-playbook: extra vars as `!unsafe` data, names that
steer Ansible refused, host lists written as inventory files, catalog inventories by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chiffon.agent.tools.ansible_vars import check_extra_vars, extravars_yaml, inventory_for
from chiffon.agent.tools.base import ToolRefused


def test_every_string_is_written_unsafe_and_other_values_as_they_are() -> None:
    text = extravars_yaml(
        {
            "probe": "{{ lookup('pipe', 'id') }}",
            "port": 3001,
            "on": True,
            "none": None,
            "nested": {"{{ key }}": ["{% raw %}x"]},
        }
    )
    assert "!unsafe \"{{ lookup('pipe', 'id') }}\"" in text
    assert '"port": 3001' in text and '"on": true' in text and '"none": null' in text
    assert '!unsafe "{{ key }}"' in text and '!unsafe "{% raw %}x"' in text

    class Plain(yaml.SafeLoader):
        pass

    Plain.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))
    assert yaml.load(text, Loader=Plain)["nested"] == {"{{ key }}": ["{% raw %}x"]}  # noqa: S506


@pytest.mark.parametrize(
    ("extra_vars", "error_type", "says"),
    [
        ({"ansible_connection": "ssh"}, "forbidden", "steers Ansible"),
        ({"ANSIBLE_PYTHON_INTERPRETER": "/bin/sh"}, "forbidden", "steers Ansible"),
        ({"hostvars": {}}, "forbidden", "steers Ansible"),
        ({"a-b": 1}, "invalid_arguments", "not a variable name"),
        ({"9lives": 1}, "invalid_arguments", "not a variable name"),
        (["a"], "invalid_arguments", "must be an object"),
        ({"big": "x" * 300_000}, "invalid_arguments", "bytes"),
    ],
)
def test_extra_vars_that_cannot_be_handed_over_are_refused(
    extra_vars: object, error_type: str, says: str
) -> None:
    with pytest.raises(ToolRefused) as refused:
        check_extra_vars(extra_vars)
    assert refused.value.error_type == error_type and says in refused.value.message


def test_deep_nesting_is_refused() -> None:
    deep: object = "x"
    for _ in range(20):
        deep = [deep]
    with pytest.raises(ToolRefused, match="deeper"):
        check_extra_vars({"deep": deep})


def test_a_host_list_becomes_an_inventory_file_with_a_local_localhost(tmp_path: Path) -> None:
    path = inventory_for("localhost,web1,", tmp_path / "catalog", tmp_path)
    hosts = yaml.safe_load(path.read_text())["all"]["hosts"]
    assert hosts["web1"] == {}
    assert hosts["localhost"]["ansible_connection"] == "local"
    assert path.parent == tmp_path


def test_a_named_inventory_comes_from_the_catalog_only(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog"
    (catalog / "inventories").mkdir(parents=True)
    (catalog / "inventories" / "homelab.yml").write_text("all: {hosts: {nas: {}}}\n")
    assert (
        inventory_for("homelab", catalog, tmp_path)
        == (catalog / "inventories" / "homelab.yml").resolve()
    )
    for hostile in ("../../etc/hosts", "/etc/hosts", "missing", "a b,", "x;y,"):
        with pytest.raises(ToolRefused):
            inventory_for(hostile, catalog, tmp_path)
