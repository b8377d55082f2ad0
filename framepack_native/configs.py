"""The JSON files beside the weights (configs, manifests, tokenizer and scheduler files), read and checked
field by field, so that a damaged one is a CheckpointError naming its file and the field."""
import dataclasses
import json
import math

from framepack_native.files import CheckpointError, json_type, read_json  # noqa: F401 (re-exported)

KINDS = {int: ("an integer", "integers"), float: ("a finite number", "finite numbers"),
         bool: ("true or false", "booleans"), str: ("a string", "strings"), dict: ("an object", "objects")}


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def kind_name(kind):
    """How a message names a kind: int, float, bool, str, dict, (item kind,) for a list, or None for anything."""
    if isinstance(kind, tuple):
        return f"a list of {KINDS[kind[0]][1]}" if kind[0] else "a list"
    return KINDS[kind][0] if kind else "anything"


def is_kind(value, kind):
    """Whether a parsed JSON value is of `kind` (see kind_name); ints count as floats, booleans as neither."""
    if isinstance(kind, tuple):
        return isinstance(value, (list, tuple)) and all(is_kind(v, kind[0]) for v in value)
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        if isinstance(value, int):
            return abs(value) <= 1e308  # float() of a larger JSON integer overflows
        return isinstance(value, float) and math.isfinite(value)
    return kind is None or isinstance(value, kind)


def check_field(where, name, value, kind, error=CheckpointError):
    """Raise `error` naming the file (`where`, if any) and the field unless value is of `kind`."""
    if not is_kind(value, kind):
        shown = json.dumps(value, default=str)
        message = f"field {name!r} must be {kind_name(kind)}, got {shown if len(shown) <= 60 else shown[:57] + '...'}"
        raise error(f"{where}: {message}" if where else message)


def field_kind(field):
    """The kind of a config dataclass field: its annotation; a tuple's items take the kind of the default's."""
    if field.type is tuple:
        default = field.default if isinstance(field.default, tuple) else ()
        return (type(default[0]) if default and type(default[0]) in KINDS else None,)
    return field.type if field.type in KINDS else None


def config_from_dict(config_class, fields, where=None):
    """A config dataclass from JSON fields (lists -> tuples), each type-checked; errors name `where` and the field."""
    label = f"{where}: {config_class.__name__}" if where else config_class.__name__  # for the class's own errors
    where = where or config_class.__name__
    if not isinstance(fields, dict):
        raise CheckpointError(f"{where}: the config must be an object of fields, got {json_type(fields)}")
    kinds = {f.name: field_kind(f) for f in dataclasses.fields(config_class)}
    unknown = sorted(set(fields) - set(kinds))
    if unknown:
        raise CheckpointError(f"{label}: unknown config fields {unknown}")
    for name, value in fields.items():
        check_field(where, name, value, kinds[name])
    try:
        return config_class(**{k: _tuples(v) for k, v in fields.items()})
    except (TypeError, ValueError, ArithmeticError) as e:
        raise CheckpointError(f"{label}: {e}") from None
