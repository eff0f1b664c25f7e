#!/usr/bin/env python3
"""The wire contract's JSON Schemas (docs/schemas) as Python validators, and the checks of
scripts/check-spec that check-jsonschema cannot do alone.

As a module (Tests/IntegrationTests/interop/pika_drive.py uses it):

    import contract_schemas
    errors = contract_schemas.errors("event", body)      # [] when valid
    contract_schemas.validator("headers", "#/$defs/event")

Every schema file is registered under its `$id`, so the relative `$ref`s between the files
resolve offline (nothing is fetched). Formats are asserted where the installed packages can
check them.

As a script: `contract_schemas.py check` runs the checks below and exits 1 on any failure.
  - every `examples` entry of every schema (and of every `$defs` entry) validates against it;
  - docs/schemas/examples/valid/<kind>/*.json validate against docs/schemas/<kind>.json, and
    docs/schemas/examples/invalid/<kind>/*.json do not; an invalid example's name starts with
    the worker's error code (`validation_error--fail-without-error.json`);
  - docs/asyncapi.yaml: every `$ref` resolves (files and JSON pointers), every message
    example's payload and headers validate against the message's schemas, and every AMQP
    binding validates against the official AMQP binding schema it names (vendored in
    docs/schemas/meta/).
"""
import json
import os
import re
import sys
from pathlib import Path

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7, DRAFT202012

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "docs" / "schemas"
EXAMPLES = SCHEMAS / "examples"
META = SCHEMAS / "meta"
ASYNCAPI = ROOT / "docs" / "asyncapi.yaml"

# The entry points, by kind of message.
ENTRY_POINTS = {"command": "command.json", "event": "event.json", "reply": "reply.json"}
# The codes an invalid example may expect, per kind: the worker refuses commands at decode time
# with these; events and replies that do not decode are malformed_message.
EXPECTED_CODES = {
    "command": {"malformed_message", "validation_error", "unknown_command"},
    "event": {"malformed_message"},
    "reply": {"malformed_message"},
}

_FORMAT_CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER


def schema_files():
    return sorted(SCHEMAS.glob("*.json"))


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


_registry = None
_by_name = {}


def registry():
    """Every docs/schemas/*.json under its `$id` (draft 2020-12), and the vendored AsyncAPI
    AMQP binding schemas (draft-07) under theirs."""
    global _registry
    if _registry is None:
        resources = []
        for path in schema_files():
            schema = _load(path)
            _by_name[path.name] = schema
            resources.append((schema["$id"], DRAFT202012.create_resource(schema)))
        for path in sorted(META.glob("*.json")):
            schema = _load(path)
            if "$id" in schema:
                resources.append((schema["$id"], Resource.from_contents(schema, default_specification=DRAFT7)))
        _registry = Registry().with_resources(resources)
    return _registry


def schema(name):
    registry()
    return _by_name[name if name.endswith(".json") else name + ".json"]


def validator(name, pointer=""):
    """A validator for docs/schemas/<name>.json, or for the subschema at `pointer` (`#/$defs/x`)."""
    root = schema(name)
    target = {"$ref": root["$id"] + pointer} if pointer else root
    return jsonschema.Draft202012Validator(target, registry=registry(), format_checker=_FORMAT_CHECKER)


# The entry points that dispatch on a field with `oneOf`: the field, and where the branches are.
_DISPATCH = {"command.json": "command", "event.json": "type"}


def _lines(errs):
    out = []
    for e in sorted(errs, key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        line = f"{where}: {e.message[:300]}"
        if e.context:  # anyOf/oneOf: what the closest branch wanted
            best = jsonschema.exceptions.best_match(e.context)
            line += f" (closest: {'/'.join(str(p) for p in best.absolute_path) or '(root)'}: {best.message[:200]})"
        out.append(line)
    return out


def errors(name, instance, pointer=""):
    """The validation errors of `instance` against a schema, as readable lines ([] when valid).
    For a command or event whose `command`/`type` names a branch, the errors of that branch
    are listed instead of the bare `oneOf` failure."""
    name = name if name.endswith(".json") else name + ".json"
    errs = list(validator(name, pointer).iter_errors(instance))
    if not errs:
        return []
    key = _DISPATCH.get(name) if not pointer else None
    if key and isinstance(instance, dict) and isinstance(instance.get(key), str):
        branch = instance[key]
        if branch in schema(name).get("$defs", {}):
            inner = [e for e in errs if e.validator != "oneOf"]
            inner += list(validator(name, f"#/$defs/{branch}").iter_errors(instance))
            if inner:
                return sorted(set(_lines(inner)))
    return _lines(errs)


# ---------------------------------------------------------------------------------------------
# The checks of scripts/check-spec.

class Report:
    def __init__(self):
        self.failures = []
        self.checked = 0

    def ok(self):
        self.checked += 1

    def fail(self, what):
        self.checked += 1
        self.failures.append(what)


def check_inline_examples(report):
    """Each schema's `examples` (and each `$defs` entry's) validate against that schema."""
    for path in schema_files():
        doc = schema(path.name)
        places = [("", doc)] + [(f"#/$defs/{k}", v) for k, v in doc.get("$defs", {}).items()]
        for pointer, sub in places:
            for n, example in enumerate(sub.get("examples", [])):
                # Examples of plain value definitions are values of that definition.
                errs = errors(path.name, example, pointer)
                if errs:
                    report.fail(f"{path.name}{pointer} examples[{n}] is not valid: " + "; ".join(errs))
                else:
                    report.ok()


def check_example_files(report):
    for kind, entry in ENTRY_POINTS.items():
        valid = sorted((EXAMPLES / "valid" / kind).glob("*.json"))
        invalid = sorted((EXAMPLES / "invalid" / kind).glob("*.json"))
        if not valid or not invalid:
            report.fail(f"examples/{{valid,invalid}}/{kind} must both hold examples")
        for path in valid:
            errs = errors(entry, _load(path))
            if errs:
                report.fail(f"{path.relative_to(ROOT)} should be valid: " + "; ".join(errs))
            else:
                report.ok()
        for path in invalid:
            code = path.name.split("--", 1)[0]
            if "--" not in path.name or code not in EXPECTED_CODES[kind]:
                report.fail(f"{path.relative_to(ROOT)}: the name must start with one of "
                            f"{sorted(EXPECTED_CODES[kind])} and `--`")
                continue
            if not errors(entry, _load(path)):
                report.fail(f"{path.relative_to(ROOT)} should be invalid ({code}) but validates")
            else:
                report.ok()


def _resolve_pointer(doc, pointer):
    node = doc
    for part in [p for p in pointer.lstrip("/").split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(part)]
        else:
            node = node[part]
    return node


def _refs(node, path="#"):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield path, v
            else:
                yield from _refs(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _refs(v, f"{path}/{i}")


def _deref(doc, ref):
    """Resolves an AsyncAPI `$ref`: `#/...` inside the document, `./schemas/x.json#/...` a file."""
    target, _, pointer = ref.partition("#")
    if not target:
        return ("asyncapi", None, _resolve_pointer(doc, pointer))
    path = (ASYNCAPI.parent / target).resolve()
    contents = _load(path)
    return (path.name, pointer, _resolve_pointer(contents, pointer))


def check_asyncapi(report):
    with open(ASYNCAPI, encoding="utf-8") as f:
        text = f.read()
    try:
        import yaml  # PyYAML, when present

        doc = yaml.safe_load(text)
    except ImportError:
        from ruamel.yaml import YAML  # what check-jsonschema itself depends on

        doc = YAML(typ="safe").load(text)
    # Every $ref resolves.
    for where, ref in _refs(doc):
        try:
            _deref(doc, ref)
            report.ok()
        except Exception as e:  # noqa: BLE001 - any failure to resolve is the finding
            report.fail(f"asyncapi.yaml {where}: $ref {ref!r} does not resolve ({e!r})")

    def deref_all(node):
        while isinstance(node, dict) and set(node) == {"$ref"} and node["$ref"].startswith("#"):
            node = _resolve_pointer(doc, node["$ref"][1:])
        return node

    # Messages: payload/headers schema files, and their examples.
    messages = {}
    for name, msg in (doc.get("components", {}).get("messages", {}) or {}).items():
        messages[name] = deref_all(msg)
    if not messages:
        report.fail("asyncapi.yaml has no components.messages")
    for name, msg in messages.items():
        payload_ref = (msg.get("payload") or {}).get("$ref")
        headers_ref = (deref_all(msg.get("headers") or {}) or {}).get("$ref")
        for n, example in enumerate(msg.get("examples", [])):
            for part, ref in (("payload", payload_ref), ("headers", headers_ref)):
                if part not in example:
                    continue
                if not ref:
                    continue  # no schema to hold it to (the dead letter's body is any bytes)
                file, _, pointer = ref.partition("#")
                errs = errors(Path(file).name, example[part], "#" + pointer if pointer else "")
                if errs:
                    report.fail(f"asyncapi.yaml message {name} examples[{n}].{part}: " + "; ".join(errs))
                else:
                    report.ok()
        if not msg.get("examples"):
            report.fail(f"asyncapi.yaml message {name} has no examples")

    # AMQP bindings against the official binding schemas (the AsyncAPI 2.6 schema does not
    # look inside bindings).
    kinds = {"channel": "channel", "operation": "operation", "message": "message"}

    def binding_errors(kind, binding):
        version = binding.get("bindingVersion", "0.2.0")
        uri = f"http://asyncapi.com/bindings/amqp/{version}/{kinds[kind]}.json"
        v = jsonschema.Draft7Validator({"$ref": uri}, registry=registry())
        return [e.message for e in v.iter_errors(binding)]

    for cname, channel in (doc.get("channels") or {}).items():
        places = [("channel", channel.get("bindings"))]
        for op in ("publish", "subscribe"):
            if op in channel:
                places.append(("operation", channel[op].get("bindings")))
        for kind, bindings in places:
            if bindings and "amqp" in bindings:
                errs = binding_errors(kind, bindings["amqp"])
                if errs:
                    report.fail(f"asyncapi.yaml channel {cname} {kind} amqp binding: " + "; ".join(errs))
                else:
                    report.ok()
    for name, msg in messages.items():
        if (msg.get("bindings") or {}).get("amqp") is not None:
            errs = binding_errors("message", msg["bindings"]["amqp"])
            if errs:
                report.fail(f"asyncapi.yaml message {name} amqp binding: " + "; ".join(errs))
            else:
                report.ok()

    # The document names the contract version the schemas describe.
    version = doc.get("info", {}).get("version", "")
    if not re.fullmatch(r"1\.1\.[0-9]+", str(version)):
        report.fail(f"asyncapi.yaml info.version is {version!r}, expected 1.1.x (contract 1.1)")
    else:
        report.ok()


def main(argv):
    if len(argv) < 2 or argv[1] not in ("check", "validate"):
        print("usage: contract_schemas.py check\n"
              "       contract_schemas.py validate KIND FILE...   (KIND: command, event, reply, or a schema file name)",
              file=sys.stderr)
        return 2
    if argv[1] == "validate":
        kind, files = argv[2], argv[3:]
        name = ENTRY_POINTS.get(kind, kind)
        bad = 0
        for f in files:
            errs = errors(name, _load(f))
            if errs:
                bad += 1
                print(f"{f}: INVALID\n  " + "\n  ".join(errs))
            else:
                print(f"{f}: ok")
        return 1 if bad else 0
    report = Report()
    check_inline_examples(report)
    check_example_files(report)
    check_asyncapi(report)
    for f in report.failures:
        print(f"FAIL {f}")
    print(f"contract_schemas: {report.checked - len(report.failures)} checks passed, {len(report.failures)} failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
