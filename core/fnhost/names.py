"""Rules for identifiers users choose: app ids, function names, env var names."""

from __future__ import annotations

import re

from fnhost.errors import BadInput, InvalidField

IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
IDENTIFIER_RULE = "1-100 characters of A-Z a-z 0-9 _ -, starting with a letter or digit"


def check_app_id(app_id: str) -> str:
    if not IDENTIFIER.fullmatch(app_id):
        raise BadInput(f"invalid app id: {IDENTIFIER_RULE}", {"field": "app_id"})
    return app_id


def check_function_name(name: str, *, field: str = "name") -> str:
    if not IDENTIFIER.fullmatch(name):
        raise InvalidField(f"{field}: must be {IDENTIFIER_RULE}", {"field": field})
    return name


def check_env_name(name: str, field: str) -> str:
    if not ENV_NAME.fullmatch(name):
        raise InvalidField(
            f"{field}: env var names are letters, digits and _, not starting with a digit",
            {"field": field},
        )
    return name
