"""Engine, transactions, migrations and the StateView reader.

Concurrency: every write goes through ``transaction()``. On SQLite it starts with ``BEGIN
IMMEDIATE`` (the write lock is taken up front, so two processes can never both read "address X is
free" and both take it; the loser waits up to the busy timeout) in WAL mode (readers never block
the writer). On PostgreSQL the pick of a free row uses ``SELECT ... FOR UPDATE SKIP LOCKED``
(``with_for_update(skip_locked=True)``, which SQLite ignores).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import zlib
from collections.abc import Iterator
from importlib import resources

from sqlalchemy import create_engine, event, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from sdn import exception, ipv6, view
from sdn.db import changes, limits, models

#: seconds a SQLite writer waits for another process's write transaction to finish
SQLITE_BUSY_TIMEOUT = 30
#: execution option: seconds this write transaction may wait for a lock (SQLite's write lock,
#: PostgreSQL's row locks) before failing, instead of the default
LOCK_WAIT = "sdn_lock_wait"


def _sqlite_file(url) -> str | None:
    """Absolute path of a SQLite database file URL (None for other databases and :memory:)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return os.path.abspath(parsed.database)


def get_engine(url: str) -> Engine:
    """An engine for ``url``; for a SQLite file, sets up WAL + busy timeout + BEGIN IMMEDIATE
    for writers (plain deferred BEGIN for readers).

    Connecting never creates a SQLite file or its directory (only ``sync`` does): a command run
    before ``sdn db sync`` raises DatabaseMissing and leaves the disk as it was."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":   # SQLAlchemy's default would be psycopg2; sdn ships psycopg 3
        url = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True)

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            options = conn.get_execution_options()
            if options.get("sdn_readonly"):
                # one snapshot for the whole read (READ COMMITTED takes one per statement, and a
                # StateView could pair VIFs with networks of another moment); read-only
                # transactions under REPEATABLE READ never fail to serialize
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return
            wait = options.get(LOCK_WAIT)
            if wait is not None:   # this transaction waits for row locks at most that long
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(wait * 1000)}ms'")
        return engine
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT})
    path = _sqlite_file(url)

    @event.listens_for(engine, "do_connect")
    def _existing_file_only(_dialect, _record, _cargs, _cparams):
        if path is not None and not os.path.exists(path):
            raise exception.DatabaseMissing(url=url, detail=f" (file {path} does not exist)")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy emit BEGIN itself (pysqlite's implicit BEGIN is deferred and too late).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        options = conn.get_execution_options()
        if options.get("sdn_readonly"):
            conn.exec_driver_sql("BEGIN")
            return
        # per transaction: a pooled connection must not keep another caller's wait
        wait = options.get(LOCK_WAIT, SQLITE_BUSY_TIMEOUT)
        conn.exec_driver_sql(f"PRAGMA busy_timeout={int(wait * 1000)}")
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_KEEP_REVISION = "sdn_keep_revision"


def keep_revision(session: Session) -> None:
    """Declare that this transaction's writes change nothing ``load_views`` reads (e.g. only
    ``fixed_ips.leased``/``updated_at``): the revision stays, no controller reloads state."""
    session.info[_KEEP_REVISION] = True


@contextlib.contextmanager
def transaction(engine: Engine, lock_wait: float | None = None) -> Iterator[Session]:
    """One write transaction: yields a Session and commits on success, bumping ``state_revision``
    if anything was written and recording what changed under it (``sdn.db.changes``); rolls everything back on any exception (no partial write).

    A transaction that wrote nothing (an idempotent repeat, a periodic task with nothing to do),
    or only what no view shows (``keep_revision``), leaves the revision alone so the controller
    does not reload and recompile for nothing. ``lock_wait`` (seconds) bounds the wait for
    another writer's lock (raises OperationalError past it); None: the engine's default.
    """
    wrote = []
    bind = engine if lock_wait is None else engine.execution_options(**{LOCK_WAIT: lock_wait})
    with Session(bind, expire_on_commit=False) as session, session.begin():
        event.listen(session, "before_flush", limits.before_flush)   # same limits on every database
        event.listen(session, "after_flush", lambda *_: wrote.append(True))
        event.listen(session, "do_orm_execute",
                     lambda state: wrote.append(True) if state.is_insert or state.is_update or state.is_delete
                     else None)
        recorder = changes.install(session)     # the change feed (sdn.db.changes)
        yield session
        session.flush()
        if wrote and not session.info.get(_KEEP_REVISION):
            session.execute(update(models.StateRevision).where(models.StateRevision.id == 1)
                            .values(value=models.StateRevision.value + 1))
            recorder.commit_record(session)


@contextlib.contextmanager
def read_transaction(engine: Engine) -> Iterator[Session]:
    """One read-only transaction (a consistent snapshot; takes no write lock on SQLite)."""
    with Session(engine.execution_options(sdn_readonly=True), expire_on_commit=False) as session, \
            session.begin():
        yield session


def sync(engine: Engine) -> None:
    """``alembic upgrade head`` on ``engine`` with the migrations shipped in this package."""
    path = _sqlite_file(engine.url)
    if path is not None and not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sqlite3.connect(path).close()  # the one place that creates the file
    migrate(engine, "head")


def migrate(engine: Engine, revision: str, downgrade: bool = False) -> None:
    """``alembic upgrade`` (or ``downgrade``) to ``revision`` ("head", "base", "0002", ...) in one
    transaction (both SQLite and PostgreSQL have transactional DDL)."""
    from alembic import command
    from alembic.config import Config

    ini = resources.files("sdn.db") / "alembic.ini"
    cfg = Config(str(ini))
    cfg.set_main_option("script_location", str(resources.files("sdn.db") / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if downgrade else command.upgrade)(cfg, revision)


def explain(err: sa_exc.DBAPIError, url: str) -> exception.SdnError:
    """The operator's view of a database error: no schema (run ``sdn db sync``), permission
    denied, locked by another process, or otherwise unusable; each with its own advice."""
    reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
    low = reason.lower()
    shown = make_url(url).render_as_string(hide_password=True)
    if "does not exist" in low and 'database "' in low:   # PostgreSQL: sync does not create databases
        return exception.DatabaseUnusable(url=shown, reason=f"{reason}; create it (createdb, or CREATE "
                                                            f"DATABASE), then run 'sdn db sync'")
    if "no such table" in low or ("does not exist" in low and "relation" in low):
        return exception.DatabaseMissing(url=shown, detail=f" (it has no sdn schema: {reason})")
    if "readonly database" in low or "read-only" in low:
        return exception.DatabasePermission(url=shown, access="written", reason=reason)
    if "permission denied" in low or "unable to open database file" in low:
        return exception.DatabasePermission(url=shown, access="opened", reason=reason)
    if "locked" in low or "busy" in low or "lock timeout" in low:
        return exception.DatabaseLocked(url=shown, reason=reason)
    return exception.DatabaseUnusable(url=shown, reason=reason)


#: namespaces of sdn's advisory locks (the first key of ``pg_advisory_xact_lock(int, int)``), so
#: two purposes never share a lock by a hash collision
LOCK_PROJECT_NETWORKS = 0x5D01
LOCK_HOSTNAME = 0x5D02
#: a project's security group by name (key ``project/name``): creating it, changing its rules
LOCK_SECGROUP = 0x5D03
#: the provider firewall rules (one key): adding one checks all of them
LOCK_PROVIDER_RULES = 0x5D04
#: the address space (one key): network CIDRs and VLANs, floating ranges; each creation checks
#: the others for overlaps
LOCK_ADDRESS_SPACE = 0x5D05
#: an instance's allowed address pairs (key: the instance's name)
LOCK_INSTANCE = 0x5D06


def lock_key(session: Session, namespace: int, key: str) -> None:
    """Serialise this write transaction with every other one that locks (``namespace``,
    ``key``) until it commits or rolls back.

    Every check-then-insert of something that must exist once (a name, a rule, an address)
    takes the lock of what it checks before the check: a concurrent duplicate then waits, sees
    the first one's row and is refused with the same error as a later duplicate, never with the
    database's unique violation (``explain`` words one that escapes anyway).

    PostgreSQL: ``pg_advisory_xact_lock(namespace, crc32(key))`` (a hash collision only
    serialises two keys more than needed). SQLite: nothing to do, ``BEGIN IMMEDIATE`` already
    serialises every writer. In READ COMMITTED each later statement of the transaction sees what
    the previous holder committed (its commit is visible before its locks are released).
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    crc = zlib.crc32(key.encode())
    session.execute(text("SELECT pg_advisory_xact_lock(CAST(:ns AS integer), CAST(:key AS integer))"),
                    {"ns": namespace, "key": crc - (1 << 32) if crc >= 1 << 31 else crc})


def current_revision(engine: Engine) -> int:
    """The state revision: increases on every committed write."""
    with read_transaction(engine) as session:
        return session.scalar(select(models.StateRevision.value).where(models.StateRevision.id == 1))


def load_views(engine: Engine, *, domain: str = "novalocal", lease_time: int = 120,
               mtu: int | None = None, metadata_route: bool = False,
               allow_same_net_traffic: bool = True, ipv6_backend: str = "rfc2462",
               ra_interval: int = 10) -> view.StateView:
    """Every network and VIF as a StateView, read in one transaction.

    ``domain``/``lease_time``/``mtu`` are the dhcp_domain, dhcp_lease_time (s) and
    network_device_mtu options. A VIF's ``addresses`` are the fixed IPs allocated to it.
    ``metadata_route`` gives every network a host route 169.254.169.254/32 via its gateway
    (DHCP option 121), where sdn's router forwards metadata requests. Security groups with
    their rules, each VIF's groups and the provider rules come along (``sdn.firewall``).
    IPv6: a network's cidr_v6/gateway_v6/modes/dns_v6 with ``ra_interval`` (s, config
    ipv6_ra_interval); a VIF's ``addresses_v6`` is derived from its MAC, its network's cidr_v6
    and its instance's project by ``sdn.ipv6.to_global`` with ``ipv6_backend``.
    """
    with read_transaction(engine) as session:
        revision = session.scalar(select(models.StateRevision.value).where(models.StateRevision.id == 1))
        networks = network_views(session, domain=domain, lease_time=lease_time, mtu=mtu,
                                  metadata_route=metadata_route, ra_interval=ra_interval)
        floating_ips = tuple(
            view.FloatingView(address=address, fixed_address=fixed, network_id=network_id,
                              project_id=project_id)
            for address, fixed, network_id, project_id in session.execute(
                select(models.FloatingIp.address, models.FixedIp.address, models.FixedIp.network_id,
                       models.FloatingIp.project_id)
                .join(models.FixedIp, models.FloatingIp.fixed_ip_id == models.FixedIp.id)
                .order_by(models.FloatingIp.id)))
        return view.StateView(revision=revision or 0, networks=networks,
                              vifs=vif_views(session, networks, ipv6_backend),
                              floating_ips=floating_ips, security_groups=_security_groups(session),
                              provider_rules=tuple(
                                  view.ProviderRuleView(id=r.id, cidr=r.cidr, protocol=r.protocol,
                                                        port_min=r.port_min, port_max=r.port_max)
                                  for r in session.scalars(select(models.ProviderFirewallRule)
                                                           .order_by(models.ProviderFirewallRule.id))),
                              allow_same_net_traffic=allow_same_net_traffic)


def network_views(session: Session, *, domain: str = "novalocal", lease_time: int = 120,
                  mtu: int | None = None, metadata_route: bool = False,
                  ra_interval: int = 10) -> dict[int, view.NetworkView]:
    """Every network by id (``load_views``' options)."""
    vpn_running = set(session.scalars(
        select(models.FixedIp.address).join(models.Network, models.Network.vpn_private_address
                                            == models.FixedIp.address)
        .where(models.FixedIp.allocated.is_(True))))
    networks = {}
    for net in session.scalars(select(models.Network).order_by(models.Network.id)):
        networks[net.id] = view.NetworkView(
            id=net.id, label=net.label or "", cidr=net.cidr, netmask=net.netmask, gateway=net.gateway,
            broadcast=net.broadcast, dns=tuple(d for d in (net.dns1, net.dns2) if d), vlan=net.vlan,
            project_id=net.project_id, dhcp_server=net.gateway, domain=domain, lease_time=lease_time,
            mtu=mtu, vpn_public_address=net.vpn_public_address, vpn_public_port=net.vpn_public_port,
            vpn_private_address=net.vpn_private_address,
            vpn_running=net.vpn_private_address in vpn_running, host=net.host,
            host_routes=(("169.254.169.254/32", net.gateway),) if metadata_route and net.gateway
            else (),
            cidr_v6=net.cidr_v6, gateway_v6=net.gateway_v6, ipv6_ra_mode=net.ipv6_ra_mode,
            ipv6_address_mode=net.ipv6_address_mode, dns_v6=split_list(net.dns_v6),
            ra_interval=ra_interval)
    return networks


def vif_views(session: Session, networks: dict[int, view.NetworkView], ipv6_backend: str,
              network_ids: list[int] | None = None) -> tuple[view.VifView, ...]:
    """The VIFs (of ``network_ids`` only, if given), by id, as ``load_views`` builds them."""
    Vif, Inst, Fixed = models.VirtualInterface, models.Instance, models.FixedIp
    Pair, Member = models.AllowedAddressPair, models.SecurityGroupInstance
    of_vifs = select(Vif.id)
    if network_ids is not None:
        of_vifs = of_vifs.where(Vif.network_id.in_(network_ids))
    addresses: dict[int, list[str]] = {}
    for vif_id, address in session.execute(
            select(Fixed.virtual_interface_id, Fixed.address)
            .where(Fixed.allocated.is_(True), Fixed.virtual_interface_id.is_not(None),
                   *(() if network_ids is None else (Fixed.virtual_interface_id.in_(of_vifs),)))
            .order_by(Fixed.id)):
        addresses.setdefault(vif_id, []).append(address)
    # Core rows, not ORM objects: at 10k VIFs the ORM load (identity map, selectinload)
    # was most of a state reload, which the controller does on every revision change
    pairs: dict[int, list[tuple[str, str]]] = {}
    for vif_id, mac, ip_cidr in session.execute(
            select(Pair.vif_id, Pair.mac, Pair.ip_cidr)
            .where(*(() if network_ids is None else (Pair.vif_id.in_(of_vifs),)))
            .order_by(Pair.id)):
        pairs.setdefault(vif_id, []).append((mac, ip_cidr))
    groups_of: dict[str, list[int]] = {}
    members = select(Member.instance_uuid, Member.security_group_id)
    if network_ids is not None:
        members = members.where(Member.instance_uuid.in_(
            select(Vif.instance_uuid).where(Vif.network_id.in_(network_ids))))
    for uuid, gid in session.execute(members.order_by(Member.security_group_id)):
        groups_of.setdefault(uuid, []).append(gid)
    rows = (select(Vif.id, Vif.uuid, Vif.address, Vif.network_id, Vif.port_security, Inst.name,
                   Inst.hostname, Inst.project_id, Inst.uuid, Inst.rx_kbps, Inst.tx_kbps)
            .join(Inst, Vif.instance_uuid == Inst.uuid).order_by(Vif.id))
    if network_ids is not None:
        rows = rows.where(Vif.network_id.in_(network_ids))
    return tuple(
        view.VifView(uuid=uuid, mac=mac, network_id=network_id, instance=name, hostname=hostname,
                     addresses=tuple(addresses.get(vif_id, ())), project_id=project_id,
                     port_security=port_security,
                     allowed_address_pairs=tuple(pairs.get(vif_id, ())), id=vif_id,
                     security_groups=tuple(groups_of.get(inst_uuid, ())),
                     rx_kbps=rx_kbps, tx_kbps=tx_kbps,
                     addresses_v6=_addresses_v6(networks.get(network_id), mac, project_id,
                                                ipv6_backend))
        for (vif_id, uuid, mac, network_id, port_security, name, hostname, project_id, inst_uuid,
             rx_kbps, tx_kbps) in session.execute(rows))


def split_list(text: str | None) -> tuple[str, ...]:
    """A comma-separated column (``networks.dns_v6``) as a tuple; NULL or "" -> ()."""
    return tuple(item.strip() for item in (text or "").split(",") if item.strip())


def _addresses_v6(net: view.NetworkView | None, mac: str, project_id: str | None,
                  backend: str) -> tuple[str, ...]:
    address = ipv6.vif_address(net.cidr_v6 if net else None, mac, project_id, backend)
    return (address,) if address else ()


def _security_groups(session: Session) -> dict[int, view.SecurityGroupView]:
    Rule = models.SecurityGroupRule
    rules: dict[int, list[view.RuleView]] = {}
    for r in session.execute(select(Rule.id, Rule.parent_group_id, Rule.direction, Rule.ethertype,
                                    Rule.protocol, Rule.port_min, Rule.port_max, Rule.remote_cidr,
                                    Rule.remote_group_id).order_by(Rule.id)):
        rules.setdefault(r.parent_group_id, []).append(view.RuleView(
            id=r.id, direction=r.direction, ethertype=r.ethertype, protocol=r.protocol,
            port_min=r.port_min, port_max=r.port_max, remote_cidr=r.remote_cidr,
            remote_group=r.remote_group_id))
    Group = models.SecurityGroup
    return {g.id: view.SecurityGroupView(id=g.id, name=g.name, project_id=g.project_id,
                                         stateful=g.stateful, rules=tuple(rules.get(g.id, ())))
            for g in session.execute(select(Group.id, Group.name, Group.project_id, Group.stateful)
                                     .order_by(Group.id))}
