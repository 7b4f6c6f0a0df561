#!/usr/bin/env python3
"""Process an OpenShift Template the way `oc process` does, for machines without `oc`.

Usage:
  hack/process-template.py [-f] TEMPLATE [-p NAME=VALUE]... [--param-file FILE]
                           [--ignore-unknown-parameters] [-o json|yaml]
  hack/process-template.py [-f] TEMPLATE --parameters
  (NAME=VALUE may also be given without -p, as `oc process` allows.)

The output is a v1 List of the processed objects on stdout, ready for `kubectl apply -f -`.
Exit 1 with one line per problem on stderr when the template cannot be processed.

Semantics of the Template API (template.openshift.io/v1), as `oc process` applies them:
  - parameters: name (letters, digits, _; unique), value (default), required, generate/from
    (generate: expression, from: e.g. "[a-z0-9]{8}"), description, displayName;
  - -p values replace defaults; an unknown name is an error unless --ignore-unknown-parameters;
  - a parameter still empty gets its generated value, and a required one still empty is an error;
  - every string of every object (map keys too) is substituted: "${NAME}" anywhere in a string
    gives text; a string that is exactly "${{NAME}}" becomes the value parsed as JSON (a number,
    boolean, object...), or stays text when the value is not JSON; unknown names stay as written;
  - a fixed metadata.namespace of an object is dropped (the object goes where it is applied);
    one holding a ${PARAMETER} reference is kept and substituted;
  - the template's `labels` (substituted) are added to every object's metadata.labels; the
    template's `message` is substituted and printed to stderr.
Needs PyYAML (python3-yaml) for YAML templates; JSON templates need nothing more.
"""

import argparse
import json
import random
import re
import string
import sys

STRING_PARAM = re.compile(r"\$\{([a-zA-Z0-9_]+?)\}")
NON_STRING_PARAM = re.compile(r"^\$\{\{([a-zA-Z0-9_]+)\}\}$")
PARAM_NAME = re.compile(r"^[a-zA-Z0-9_]+$")


class TemplateError(Exception):
    pass


def load(path):
    with open(path, encoding="utf-8") if path != "-" else sys.stdin as f:
        text = f.read()
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        import yaml  # noqa: PLC0415 (only needed for YAML templates)
    except ImportError as e:
        raise TemplateError(f"{path}: YAML template but PyYAML is missing (apt-get install python3-yaml)") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TemplateError(f"{path}: not valid YAML: {e}") from e


# --- generate: expression -------------------------------------------------------------------
CLASSES = {
    r"\w": string.ascii_letters + string.digits + "_",
    r"\d": string.digits,
    r"\a": string.ascii_letters,
    r"\A": "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
}


def expand_range(spec):
    chars, i = "", 0
    while i < len(spec):
        two = spec[i : i + 2]
        if two in CLASSES:
            chars += CLASSES[two]
            i += 2
        elif i + 2 < len(spec) and spec[i + 1] == "-":
            lo, hi = spec[i], spec[i + 2]
            if ord(lo) > ord(hi):
                raise TemplateError(f"invalid range {lo}-{hi} in expression")
            chars += "".join(chr(c) for c in range(ord(lo), ord(hi) + 1))
            i += 3
        else:
            chars += spec[i]
            i += 1
    return chars


def generate(expression, rng):
    """Values from expressions such as "[a-z0-9]{8}", "x\\d{3}", "[\\w]{10}"."""
    out, i = [], 0
    token = re.compile(r"(\[[^\]]+\]|\\[wdaA])(\{(\d+)\})?")
    while i < len(expression):
        m = token.match(expression, i)
        if m:
            chars = expand_range(m.group(1)[1:-1]) if m.group(1).startswith("[") else CLASSES[m.group(1)]
            count = int(m.group(3) or 1)
            out.append("".join(rng.choice(chars) for _ in range(count)))
            i = m.end()
        else:
            out.append(expression[i])
            i += 1
    return "".join(out)


# --- processing ------------------------------------------------------------------------------
def substitute(value, params):
    """Returns (new string or parsed JSON value)."""
    m = NON_STRING_PARAM.match(value)
    if m and m.group(1) in params:
        text = params[m.group(1)]
        try:
            return json.loads(text)
        except ValueError:
            return text

    def one(match):
        name = match.group(1)
        return params[name] if name in params else match.group(0)

    return STRING_PARAM.sub(one, value)


def visit(node, params):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            new_key = substitute(key, params) if isinstance(key, str) else key
            out[new_key if isinstance(new_key, str) else key] = visit(value, params)
        return out
    if isinstance(node, list):
        return [visit(v, params) for v in node]
    if isinstance(node, str):
        return substitute(node, params)
    return node


def as_text(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def resolve_parameters(template, given, ignore_unknown, rng):
    errors = []
    declared = template.get("parameters") or []
    if not isinstance(declared, list):
        raise TemplateError("parameters: expected a list")
    names = []
    for i, p in enumerate(declared):
        name = p.get("name") if isinstance(p, dict) else None
        if not name or not PARAM_NAME.match(str(name)):
            errors.append(f"template.parameters[{i}].name: invalid name {name!r} (letters, digits, _)")
        elif name in names:
            errors.append(f"template.parameters[{i}].name: duplicate parameter {name}")
        names.append(name)
    for name in given:
        if name not in names and not ignore_unknown:
            errors.append(f'unknown parameter name "{name}"')
    if errors:
        raise TemplateError("\n".join(errors))
    values = {}
    for i, p in enumerate(declared):
        name = p["name"]
        value = given[name] if name in given else as_text(p.get("value"))
        if not value and p.get("generate"):
            if p["generate"] != "expression":
                errors.append(f"template.parameters[{i}]: Unknown generator name '{p['generate']}' for parameter {name}")
                continue
            value = generate(str(p.get("from", "")), rng)
        if not value and p.get("required"):
            errors.append(f"template.parameters[{i}]: parameter {name} is required and must be specified")
        values[name] = value
    if errors:
        raise TemplateError("\n".join(errors))
    return values


def strip_namespace(obj):
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "namespace" in meta:
        ns = meta["namespace"]
        if not (isinstance(ns, str) and STRING_PARAM.search(ns)):
            del meta["namespace"]


def process(template, given, ignore_unknown=False, rng=None):
    if not isinstance(template, dict) or template.get("kind") != "Template":
        raise TemplateError(f"expected kind: Template, got {template.get('kind') if isinstance(template, dict) else template!r}")
    values = resolve_parameters(template, given, ignore_unknown, rng or random.SystemRandom())
    labels = {}
    for key, value in (template.get("labels") or {}).items():
        labels[substitute(str(key), values)] = as_text(substitute(as_text(value), values))
    items = []
    for i, obj in enumerate(template.get("objects") or []):
        if not isinstance(obj, dict) or not obj.get("kind") or not obj.get("apiVersion"):
            raise TemplateError(f"item[{i}]: an object needs apiVersion and kind")
        obj = json.loads(json.dumps(obj))
        strip_namespace(obj)
        obj = visit(obj, values)
        if labels:
            meta = obj.setdefault("metadata", {})
            meta["labels"] = {**(meta.get("labels") or {}), **labels}
        items.append(obj)
    message = template.get("message")
    return {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}, (
        substitute(message, values) if isinstance(message, str) else None
    )


def parse_assignment(text, where):
    if "=" not in text:
        raise TemplateError(f"{where}: expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    return name.strip(), value


def main(argv):
    ap = argparse.ArgumentParser(description="Process an OpenShift Template like `oc process`.")
    ap.add_argument("-f", "--filename", dest="file_opt")
    ap.add_argument("file", nargs="?")
    ap.add_argument("assignments", nargs="*", help="NAME=VALUE, like -p")
    ap.add_argument("-p", "--param", action="append", default=[])
    ap.add_argument("--param-file", action="append", default=[])
    ap.add_argument("--ignore-unknown-parameters", action="store_true")
    ap.add_argument("--parameters", action="store_true", help="list the parameters and exit")
    ap.add_argument("-o", "--output", choices=["json", "yaml"], default="json")
    args = ap.parse_args(argv)
    path = args.file_opt or args.file
    assignments = list(args.assignments)
    if args.file_opt and args.file:
        assignments.insert(0, args.file)
    if not path:
        ap.error("a template file is required (-f FILE)")
    try:
        template = load(path)
        if args.parameters:
            rows = [("NAME", "DESCRIPTION", "GENERATOR", "VALUE")]
            for p in template.get("parameters") or []:
                gen = p.get("generate", "")
                rows.append((p["name"], p.get("description", ""), gen, p.get("from", "") if gen else as_text(p.get("value"))))
            width = [max(len(str(r[i])) for r in rows) for i in range(3)]
            for r in rows:
                print("  ".join(str(c).ljust(width[i]) if i < 3 else str(c) for i, c in enumerate(r)).rstrip())
            return 0
        given = {}
        for param_file in args.param_file:
            with open(param_file, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    line = line.rstrip("\n")
                    if line.strip() and not line.lstrip().startswith("#"):
                        name, value = parse_assignment(line, f"{param_file}:{n}")
                        given[name] = value
        for text in args.param + assignments:
            name, value = parse_assignment(text, "-p")
            given[name] = value
        result, message = process(template, given, args.ignore_unknown_parameters)
    except (TemplateError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if message:
        print(message, file=sys.stderr)
    if args.output == "yaml":
        import yaml  # noqa: PLC0415

        sys.stdout.write(yaml.safe_dump(result, sort_keys=False, default_flow_style=False))
    else:
        json.dump(result, sys.stdout, indent=4)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
