"""The key-value service's requests: tagged msgspec structs (the tag picks the handler).

Tags are the wire names: never rename or reuse one; add requests with new tags.
"""

import msgspec


class Get(msgspec.Struct, tag="get"):
    key: str


class Put(msgspec.Struct, tag="put"):
    key: str
    value: str


class Delete(msgspec.Struct, tag="delete"):
    key: str


class Keys(msgspec.Struct, tag="keys"):
    prefix: str = ""


NAME = "demo.kv"
