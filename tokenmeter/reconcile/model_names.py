"""The key a model is compared under: the provider's name and tokenmeter's meet there (docs/reconcile.md).

The two sides name one model differently: a dated snapshot (``gpt-4o-2024-08-06``) on one side and the alias
(``gpt-4o``) on the other, upper and lower case, an ``org/`` prefix, a display name with spaces
(``GPT-5 nano``). The rule: lower case, spaces inside to ``-``, drop an ``org/`` prefix, drop a trailing
snapshot date (``-2024-08-06``, ``-20240806``, ``-0613``). What the rule cannot see (``DeepSeek-V3.2`` billed
for ``deepseek-chat`` calls) an alias says, given when the export is imported:
``export name -> tokenmeter name``. The same rule in SQL (:func:`model_key_sql`) lets the panel and the alert
join the two tables; tests check that both give the same keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

# -YYYY-MM-DD, -YYYYMMDD, or -MMDD with a real month (gpt-4-0613, qwen-max-0428); not other 4-digit endings.
SNAPSHOT_PATTERN: Final = r"-(\d{4}-\d{2}-\d{2}|\d{8}|(0[1-9]|1[0-2])\d{2})$"
_SNAPSHOT: Final = re.compile(SNAPSHOT_PATTERN)
_SPACES: Final = re.compile(r" +")


def model_key(name: str) -> str:
    """``GPT-4o-2024-08-06`` -> ``gpt-4o``; ``deepseek-ai/DeepSeek-V3`` -> ``deepseek-v3``."""
    lowered = _SPACES.sub("-", name.strip(" ").lower())
    return _SNAPSHOT.sub("", lowered[lowered.rfind("/") + 1 :])


def export_model_key(name: str, aliases: Mapping[str, str]) -> str:
    """The key of a model as an export names it: through an alias (matched by key) when one is given."""
    key = model_key(name)
    for export_name, tokenmeter_name in aliases.items():
        if model_key(export_name) == key:
            return model_key(tokenmeter_name)
    return key


def parse_aliases(texts: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``--model-alias EXPORT=TOKENMETER`` values; ValueError naming a malformed one."""
    aliases: dict[str, str] = {}
    for text in texts:
        export_name, equals, tokenmeter_name = text.partition("=")
        if not equals or not export_name.strip() or not tokenmeter_name.strip():
            raise ValueError(
                f"model-alias: {text!r} is not EXPORT_NAME=TOKENMETER_NAME, e.g. DeepSeek-V3.2=deepseek-chat"
            )
        aliases[export_name.strip()] = tokenmeter_name.strip()
    return aliases


def model_key_sql(column: str) -> str:
    """The same key in ClickHouse SQL, of the column or expression ``column``. The end of the name is RE2's ``\\z``
    rather than ``$``: Grafana's provisioning files would read a dollar as a variable."""
    pattern = (SNAPSHOT_PATTERN.removesuffix("$") + "\\z").replace("\\", "\\\\")
    spaced = f"replaceRegexpAll(lowerUTF8(trimBoth({column})), ' +', '-')"
    return f"replaceRegexpOne(splitByChar('/', {spaced})[-1], '{pattern}', '')"
