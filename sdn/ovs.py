"""Open vSwitch plumbing through ovsdbapp: bridges and VIF ports.

VIF ports carry Neutron's Interface external_ids (iface-id = VIF uuid, attached-mac, vm-uuid,
iface-status=active) so other OVS tools recognise them; the sdn controller binds ports to VIFs
by name (``sdn.view.vif_port_name``).
"""

from __future__ import annotations

import logging
import warnings

with warnings.catch_warnings():
    # ovs.poller (imported by ovsdbapp) tries ``from eventlet import patcher`` only to detect
    # monkey-patching; eventlet >= 0.37 warns on import, 9 lines on every plug/unplug. sdn does not
    # use eventlet here, so that one warning, from that one import, is dropped.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated", module=r"ovs\.poller")
    from ovsdbapp.backend.ovs_idl import connection
    from ovsdbapp.schema.open_vswitch import impl_idl

from sdn import exception

DEFAULT_TIMEOUT = 10


def _not_post_commit_check(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Post-commit checks failed")


# ovsdbapp logs a traceback when vswitchd could not add an interface, then reports success;
# plug_vif reads the Interface row itself and raises PortNotCreated, so the traceback is noise.
logging.getLogger(impl_idl.__name__).addFilter(_not_post_commit_check)


def _reason(err: Exception) -> str:
    """``err`` as one line. Some ovsdbapp exceptions cannot render themselves (their ``msg`` is
    set only when the constructor's kwargs fit the message template; a timeout during
    connection set-up produced one whose ``str()`` raised AttributeError)."""
    try:
        return str(err) or err.__class__.__name__
    except Exception:   # noqa: BLE001 - describing an error must not raise another
        return f"{err.__class__.__name__}{err.args!r}"


class Ovs:
    """A connection to ovsdb-server at ``ovsdb_connection`` (e.g. ``unix:/var/run/openvswitch/db.sock``)."""

    #: enough for bridge_by_datapath_id and name_tables (what the controller uses)
    BRIDGE_TABLES = ("Open_vSwitch", "Bridge", "Flow_Table")

    def __init__(self, ovsdb_connection: str, timeout: int = DEFAULT_TIMEOUT,
                 tables: tuple[str, ...] | None = None):
        """``tables`` limits the in-memory replica to those tables (default: all of them);
        a replica of every Port and Interface costs ~20 kB per port (200 MB at 10k ports)."""
        try:
            idl = connection.OvsdbIdl.from_server(ovsdb_connection, "Open_vSwitch",
                                                  helper_tables=list(tables) if tables else None)
            self.api = impl_idl.OvsdbIdl(connection.Connection(idl=idl, timeout=timeout))
        except Exception as err:  # ovsdbapp raises assorted errors for an unreachable server
            raise exception.OvsError(what=f"a connection to {ovsdb_connection}", reason=_reason(err)) from None

    def _commit(self, what: str, commands) -> None:
        try:
            with self.api.transaction(check_error=True) as txn:
                for cmd in commands:
                    txn.add(cmd)
        except exception.SdnError:
            raise
        except Exception as err:  # surfaced to the operator as one line
            raise exception.OvsError(what=what, reason=_reason(err)) from None

    def ensure_bridge(self, name: str, datapath_type: str, controller_target: str | None,
                      fail_mode: str = "secure", protocols: str = "OpenFlow13",
                      table_names: dict[int, str] | None = None) -> None:
        """Create ``name`` if missing and (re)set its datapath type, controller (e.g.
        ``tcp:127.0.0.1:6653``), fail mode, OpenFlow version and, given ``{table_id: name}``,
        the Flow_Table names shown by ``ovs-ofctl dump-tables``. Idempotent."""
        api = self.api
        cmds = [api.add_br(name, may_exist=True, datapath_type=datapath_type),
                api.db_set("Bridge", name, ("datapath_type", datapath_type), ("protocols", [protocols])),
                api.set_fail_mode(name, fail_mode)]
        if controller_target:
            cmds.append(api.set_controller(name, [controller_target]))
        self._commit(f"bridge {name}", cmds)
        if table_names:
            self._name_tables(name, {int(tid): tname for tid, tname in table_names.items()})

    def bridge_by_datapath_id(self, dpid: int) -> str | None:
        """Name of the local bridge whose OpenFlow datapath id is ``dpid``, if any."""
        want = f"{dpid:016x}"
        for row in self.api.tables["Bridge"].rows.values():
            ids = row.datapath_id if isinstance(row.datapath_id, list) else [row.datapath_id]
            if want in ids:  # optional column: the IDL gives a list
                return row.name
        return None

    def name_tables(self, bridge: str, table_names: dict[int, str]) -> None:
        """Set the Flow_Table names ``{table_id: name}`` shown by ``ovs-ofctl dump-flows --names``."""
        self._name_tables(bridge, {int(tid): tname for tid, tname in table_names.items()})

    def _name_tables(self, bridge: str, table_names: dict[int, str]) -> None:
        # A separate transaction once the bridge row exists; skipped when the names already match
        # so a restart does not churn Flow_Table rows (unreferenced old rows are garbage-collected).
        current = self.api.db_get("Bridge", bridge, "flow_tables").execute(check_error=True) or {}
        if {tid: row.name for tid, row in current.items()} == table_names:
            return
        api = self.api
        creates = {tid: api.db_create("Flow_Table", name=tname) for tid, tname in table_names.items()}
        self._commit(f"flow table names on {bridge}",
                     [*creates.values(), api.db_set("Bridge", bridge, ("flow_tables", creates))])

    def plug_vif(self, bridge: str, port_name: str, vif_uuid: str, mac: str, instance_uuid: str,
                 internal: bool = False) -> None:
        """Add ``port_name`` to ``bridge`` (an internal port when ``internal``; otherwise the
        device must exist, e.g. a veth end) with the Neutron external_ids. Idempotent."""
        api = self.api
        external_ids = {"iface-id": vif_uuid, "attached-mac": mac, "vm-uuid": instance_uuid,
                        "iface-status": "active"}
        cols = [("external_ids", external_ids)]
        if internal:
            cols.append(("type", "internal"))
        self.require_bridge(bridge)
        self._commit(f"port {port_name} on {bridge}",
                     [api.add_port(bridge, port_name, may_exist=True),
                      api.db_set("Interface", port_name, *cols)])
        if internal:
            return
        problem = self._attach_problem(port_name)
        if problem:  # a port that cannot carry traffic is removed: the bridge is as it was
            self._commit(f"removal of port {port_name}", [api.del_port(port_name, bridge, if_exists=True)])
            raise exception.PortNotCreated(port=port_name, bridge=bridge, reason=problem)

    def _attach_problem(self, port_name: str) -> str | None:
        """Why vswitchd could not attach the interface (its ``error`` column, ofport -1 or none
        assigned), or None when it has an OpenFlow port number."""
        row = self.api.db_list("Interface", [port_name], columns=["ofport", "error"],
                               if_exists=True).execute(check_error=True)
        if not row:
            return "the interface row is gone"
        ofport = row[0]["ofport"]
        ofport = ofport[0] if isinstance(ofport, list) and ofport else ofport
        error = row[0]["error"]
        error = error[0] if isinstance(error, list) and error else error
        if error:
            return str(error)
        if ofport in ([], None) or ofport < 0:
            return f"ofport {ofport if ofport != [] else 'unassigned'}: no such device"
        return None

    def require_bridge(self, bridge: str) -> None:
        """Raises BridgeNotFound (naming the bridges there are) unless ``bridge`` exists."""
        if not self.bridge_exists(bridge):
            names = sorted(self.api.list_br().execute(check_error=True))
            raise exception.BridgeNotFound(bridge=bridge, existing=", ".join(names) or "there are none")

    def unplug_vif(self, bridge: str, port_name: str) -> None:
        """Remove ``port_name`` from ``bridge``; no error if it is not there. Raises
        BridgeNotFound for a bridge that does not exist."""
        self.require_bridge(bridge)
        self._commit(f"removal of port {port_name}", [self.api.del_port(port_name, bridge, if_exists=True)])

    def port_exists(self, bridge: str, port_name: str) -> bool:
        """Whether ``port_name`` is a port of ``bridge``."""
        return port_name in self.api.list_ports(bridge).execute(check_error=True)

    def bridge_exists(self, name: str) -> bool:
        return bool(self.api.br_exists(name).execute(check_error=True))
