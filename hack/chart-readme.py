#!/usr/bin/env python3
"""Regenerates the values table of deploy/helm/README.md from deploy/helm/values.yaml.

Each key of values.yaml is one row: its default as written, the type values.schema.json gives it
and the comment above it (else the schema's description). A key the schema does not know is an
error, so the schema keeps covering every value. The table replaces what lies between the
README's `<!-- values -->` and `<!-- /values -->` lines.

    hack/chart-readme.py            # rewrite deploy/helm/README.md
    hack/chart-readme.py -o FILE    # write the result to FILE instead (make lint diffs it)

Python 3 standard library only: values.yaml is read as the block mappings, scalars and flow
values it is written in, not as general YAML.
"""

import argparse
import json
import re
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parent.parent / "deploy" / "helm"
BEGIN, END = "<!-- values -->", "<!-- /values -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?: (?P<value>.*))?$")

# How the table names the schema's shared definitions.
TYPE_NAMES = {
    "managerBool": "boolean (true/false, 1/0, yes/no)",
    "quantity": "quantity",
    "podQuantity": "quantity",
    "duration": "duration (30s, 10m, 6h)",
    "positiveDuration": "duration (30s, 10m, 6h)",
    "goDuration": "Go duration (720h)",
    "prometheusDuration": "Prometheus duration (30s)",
    "port": "port",
    "dnsLabel": "name (DNS label)",
    "optionalDnsLabel": "name (DNS label)",
    "dnsSubdomain": "name (DNS subdomain)",
    "optionalDnsSubdomain": "name (DNS subdomain)",
    "stringMap": "map of strings",
    "networkPolicyPeers": "list of NetworkPolicyPeer",
    "stringList": "string or list",
    "namespaceList": "namespaces (string or list)",
}


def parse_values(text):
    """(dotted key, default as written or None for a mapping, comment) in file order."""
    rows, comment, parents = [], [], []  # parents: (indent, key)
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            comment = []
            continue
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            if not body.startswith("---"):  # section rulers are not descriptions
                comment.append(body)
            continue
        match = KEY.match(line)
        if not match:
            sys.exit(f"values.yaml: cannot read line {line!r} (block mappings and flow values only)")
        indent = len(match["indent"])
        while parents and parents[-1][0] >= indent:
            parents.pop()
        path = ".".join([key for _, key in parents] + [match["key"]])
        value = match["value"]
        if value is not None and " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        rows.append((path, value if value else None, " ".join(comment)))
        if not value:
            parents.append((indent, match["key"]))
        comment = []
    return rows


def schema_at(schema, path):
    """The schema of a dotted key, or None when the schema does not describe it."""
    node = schema
    for key in path.split("."):
        node = resolve(schema, node)
        props = dict(node.get("properties", {}))
        for part in node.get("allOf", []):
            props = {**resolve(schema, part).get("properties", {}), **props}
        if key in props:
            node = props[key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif not props and node.get("additionalProperties", True) is True:
            return {}  # inside a free-form object (a securityContext): any key
        else:
            return None
    return node


def resolve(schema, node):
    while "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def type_name(schema, node):
    ref = node.get("$ref", "").rsplit("/", 1)[-1]
    if ref in TYPE_NAMES:
        return TYPE_NAMES[ref]
    node = resolve(schema, node)
    for part in node.get("allOf", []):
        node = {**resolve(schema, part), **node}
    if "anyOf" in node:
        parts = [n for n in node["anyOf"] if n.get("type") != "null" and n.get("const") != ""]
        return " or ".join(dict.fromkeys(type_name(schema, n) for n in parts))
    enum = node.get("enum")
    if enum and any(isinstance(v, bool) for v in enum):
        return "boolean"
    if enum:
        return " \\| ".join(f"`{v}`" for v in enum if v not in ("", None))
    types = node.get("type", "")
    types = [t for t in (types if isinstance(types, list) else [types]) if t != "null"]
    return " or ".join(types)


def cell(text):
    """Text safe in a Markdown table cell: no column breaks, no <placeholder> read as HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def table(values_text, schema):
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    missing = []
    for path, default, comment in parse_values(values_text):
        node = schema_at(schema, path)
        if node is None:
            missing.append(path)
            continue
        description = comment or node.get("description", "")
        shown = f"`{cell(default)}`" if default is not None else ""
        lines.append(f"| `{path}` | {type_name(schema, node)} | {shown} | {cell(description)} |")
    if missing:
        sys.exit("values.schema.json lacks: " + ", ".join(missing))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=CHART / "README.md")
    args = parser.parse_args()
    readme = (CHART / "README.md").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    before, sep, rest = readme.partition(BEGIN + "\n")
    _, sep2, after = rest.partition(END)
    if not sep or not sep2:
        sys.exit(f"deploy/helm/README.md: no {BEGIN} ... {END} lines")
    generated = table((CHART / "values.yaml").read_text(), schema)
    args.output.write_text(f"{before}{BEGIN}\n{generated}\n{END}{after}")


if __name__ == "__main__":
    main()
