"""Length limits of text columns: one place, the same answer on SQLite and PostgreSQL.

PostgreSQL refuses a value longer than its ``VARCHAR(n)`` (``DataError: value too long``, naming
no field) while SQLite stores any length, so the same command used to fail on one database and
succeed on the other. The limits are the models' ``String(n)`` lengths (``LIMITS``), and every
write transaction (``sdn.db.api.transaction``) checks each object it flushes against them before
any SQL is sent (``before_flush``): whatever the caller (CLI, REST API, a manager), a value over
the limit is refused with ``FieldTooLong`` naming the field, and the transaction writes nothing.
Lengths are counted in characters, as PostgreSQL's ``VARCHAR(n)`` counts them.

Managers may also check a value up front (``check``) to name the field the caller gave (an
instance's project) rather than the first row it would reach (its network's project).
"""

from __future__ import annotations

from sqlalchemy import String, inspect
from sqlalchemy.orm import Session

from sdn import exception
from sdn.db import models

#: (table, column) -> the most characters the column holds
LIMITS: dict[tuple[str, str], int] = {
    (table.name, column.name): column.type.length
    for table in models.Base.metadata.sorted_tables for column in table.columns
    if isinstance(column.type, String) and column.type.length}

#: what a row of each table is called in messages (default: the table name)
_NOUNS = {
    "networks": "network", "instances": "instance", "virtual_interfaces": "VIF", "fixed_ips": "fixed IP",
    "floating_ips": "floating IP", "allowed_address_pairs": "allowed address pair",
    "security_groups": "security group", "security_group_rules": "security group rule",
    "provider_fw_rules": "provider firewall rule",
}


def field_name(table: str, column: str) -> str:
    """How a message names a column: ``the network's label``."""
    return f"the {_NOUNS.get(table, table)}'s {column}"


def check(model: type[models.Base], **values) -> None:
    """Refuse any of ``values`` (column name -> value) longer than ``model``'s column holds.
    Raises FieldTooLong; None and non-strings pass."""
    table = model.__table__.name
    for column, value in values.items():
        limit = LIMITS.get((table, column))
        if limit is not None and isinstance(value, str) and len(value) > limit:
            raise exception.FieldTooLong(field=field_name(table, column), length=len(value), limit=limit)


def check_object(obj: models.Base) -> None:
    """``check`` every string column of an ORM object about to be written."""
    mapper = inspect(obj).mapper
    check(mapper.class_, **{attr.columns[0].name: getattr(obj, attr.key) for attr in mapper.column_attrs
                            if (mapper.local_table.name, attr.columns[0].name) in LIMITS})


def before_flush(session: Session, _context, _instances) -> None:
    """Session ``before_flush`` hook: check every new and changed object (``check_object``)."""
    for obj in (*session.new, *session.dirty):
        check_object(obj)
