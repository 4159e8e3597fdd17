"""flownb-connector-example: the template for writing a flownb connector.

Components (registered through the ``flownb.components`` entry points in pyproject.toml):

- ``example.jsonl.poll`` — :class:`~.trigger.JsonLinesPoll`, a polling trigger that emits each new
  line of a JSON Lines file, remembering how far it read (its cursor) between polls and restarts.
- ``example.format`` — :class:`~.action.Format`, an action that adds a field built from a text
  template filled with the message's fields.
"""

from .action import Format, FormatConfig
from .trigger import JsonLinesPoll, JsonLinesPollConfig

__all__ = ["JsonLinesPoll", "JsonLinesPollConfig", "Format", "FormatConfig"]
__version__ = "0.1.0"
