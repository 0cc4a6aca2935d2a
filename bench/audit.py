"""C-STORE ingest with DICOM audit messages (IHE ATNA) sent to a loopback syslog
receiver, against the same ingest without them, in the same round.

Each round starts two fresh ``ilm serve`` (SQLite, hot tier with fsync, the
default): one without ``[audit]``, one with ``[audit] syslog_host`` pointing
at a TCP receiver in this process (RFC 6587 octet-counted frames, counted and
parsed). ``storescu`` sends the data set over one association to each, in
alternating order. The audited run is checked afterwards: the receiver must
hold one Import message per study whose instance counts add up to the data set.
"""

from __future__ import annotations

import socketserver
import threading
import time
import xml.etree.ElementTree as ET
from typing import Any

from bench import harness as h
from bench.cstore import storescu_cmd
from bench.report import fmt, median, ratio_cell, spread, table

NAME = "audit"
TITLE = "C-STORE with ATNA audit messages to a syslog receiver vs without"
MODES = ("off", "on")
LABELS = {"off": "ilm serve, no [audit]", "on": "ilm serve, [audit] to a loopback syslog receiver (TCP)"}


class _Receiver:
    """RFC 6587 octet-counting receiver on 127.0.0.1 (a thread of the bench process)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                buf = b""
                while True:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    while True:
                        sp = buf.find(b" ")
                        if sp < 0 or len(buf) < sp + 1 + int(buf[:sp]):
                            break
                        end = sp + 1 + int(buf[:sp])
                        with receiver._lock:
                            receiver.frames.append(buf[sp + 1:end])
                        buf = buf[end:]

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def take(self) -> list[bytes]:
        with self._lock:
            out, self.frames = self.frames, []
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait_for_frames(receiver: _Receiver, timeout: float) -> None:
    """Until the receiver has the Import messages (they follow the association's end), within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with receiver._lock:
            if any(b'csd-code="110107"' in f for f in receiver.frames):
                return
        time.sleep(0.05)


def _imported(frames: list[bytes]) -> tuple[int, int]:
    """Import messages among the frames, and the instances they name."""
    messages = instances = 0
    for f in frames:
        xml = f[f.index(b"<AuditMessage"):]
        root = ET.fromstring(xml)
        if root.find("EventIdentification/EventID[@csd-code='110107']") is None:
            continue
        messages += 1
        instances += sum(int(s.get("NumberOfInstances", "0")) for s in root.iter("SOPClass"))
    return messages, instances


def _measure(mode: str, data: Any, receiver: _Receiver, timeout: float) -> dict[str, Any]:
    h.settle()
    row: dict[str, Any] = {"mode": mode, "load_before": h.loadavg()}
    with h.scratch(f"audit-{mode}") as folder:
        srv = None
        try:
            home = h.make_ilm_home(folder / "home", fsync=True)
            if mode == "on":
                cfg = home / "ilm.toml"
                cfg.write_text(cfg.read_text() + f'\n[audit]\nsyslog_host = "127.0.0.1"\nsyslog_port = {receiver.port}\n')
            receiver.take()
            srv = h.start_ilm_serve(home)
            cpu0 = h.process_cpu_s(srv.pid)
            t = h.run_timed(storescu_cmd("ILM", srv.ports["dicom"], str(data.root)), timeout=timeout)
            row.update(seconds=t.seconds, rc=t.rc)
            if mode == "on":  # the sender thread's work belongs to the figure: let it finish first
                _wait_for_frames(receiver, timeout=60.0)
            row["server_cpu_ms"] = round((h.process_cpu_s(srv.pid) - cpu0) * 1000 / data.count, 2)
            h.stop_server(srv)  # SIGTERM: ilm sends what is still queued before it exits
            row["stored"] = h.ilm_instance_count(home)
            ok = t.rc == 0 and row["stored"] == data.count
            if mode == "on":
                frames = receiver.take()
                row["messages"] = len(frames)
                row["import_messages"], row["audited_instances"] = _imported(frames)
                row["spooled"] = (home / "audit-spool.log").exists() and (home / "audit-spool.log").stat().st_size > 0
                ok = ok and row["audited_instances"] == data.count
            row["ok"] = ok
            if not ok:
                row["error"] = (f"storescu rc={t.rc}, stored {row['stored']} of {data.count}, audited "
                                f"{row.get('audited_instances')}\n{t.tail()}\n{srv.log_tail()}")
        except h.BenchError as exc:
            row.update(ok=False, error=str(exc))
        finally:
            if srv is not None:
                h.stop_server(srv)
    if row.get("ok"):
        row["instances_per_s"] = data.count / row["seconds"]
    return row


def run(ctx: Any) -> dict[str, Any]:
    data = ctx.dataset()
    problem = h.ilm_command_problem("serve")
    if problem:
        raise h.BenchError(problem)
    timeout = 900.0 if not ctx.quick else 300.0
    receiver = _Receiver()
    rounds = []
    try:
        for r in range(ctx.rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            res = {}
            for mode in order:
                ctx.log(f"audit round {r + 1}/{ctx.rounds}: {mode} ...")
                row = _measure(mode, data, receiver, timeout)
                res[mode] = row
                ctx.log(f"  {mode}: " + (f"{row['instances_per_s']:.1f} inst/s ({row['seconds']:.1f} s)"
                                         if row.get("ok") else f"FAILED: {row.get('error', '')[:400]}"))
            rounds.append(res)
    finally:
        receiver.stop()
    return {"instances": data.count, "bytes": data.total_bytes, "rounds": rounds}


def _ratios(res: dict[str, Any], key: str = "instances_per_s") -> list[float | None]:
    out: list[float | None] = []
    for rd in res["rounds"]:
        x, y = rd.get("on", {}).get(key), rd.get("off", {}).get(key)
        out.append(x / y if x and y else None)
    return out


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [("C-STORE with audit / without", ratio_cell(_ratios(res)), "(none; reported)", "-")]


def render(res: dict[str, Any]) -> str:
    n, mb = res["instances"], res["bytes"] / 1e6
    rows = []
    for mode in MODES:
        rates = [rd.get(mode, {}).get("instances_per_s") for rd in res["rounds"]]
        fails = sum(1 for rd in res["rounds"] if mode in rd and not rd[mode].get("ok"))
        cpu = [rd.get(mode, {}).get("server_cpu_ms") for rd in res["rounds"] if rd.get(mode, {}).get("ok")]
        rows.append((LABELS[mode], fmt(median(rates)), spread(rates), fmt(median(cpu), 2),
                     f"{fails} failed" if fails else "all"))
    out = [f"{n:,} CT instances ({mb:,.0f} MB) sent by `storescu` over one association to a fresh `ilm serve` "
           "(SQLite, fsync on) per run; with audit on, every instance must come back in the Import messages the "
           "receiver got (one per study)."]
    out.append(table(["receiver", "instances/s", "range", "receiver CPU ms per instance",
                      f"verified {n} stored (and audited)"], rows))
    out.append(table(["same-round ratio", "value"], [
        ("instances/s, audit on / audit off", ratio_cell(_ratios(res))),
        ("receiver CPU per instance, audit on / audit off", ratio_cell(_ratios(res, "server_cpu_ms"))),
    ]))
    out.append("The CPU time of `ilm serve` (all its threads, from /proc, until the Import messages have reached "
               "the receiver) depends much less on the load of the machine than the rates do.")
    msgs = [rd["on"].get("import_messages") for rd in res["rounds"] if rd.get("on", {}).get("ok")]
    if msgs:
        out.append(f"Import messages per audited run: {fmt(median(msgs), 0)} (one per study of the association); "
                   "a C-STORE only notes its instance in the association's batch, the messages are built and sent "
                   "by the sender thread.")
    errors = [f"- {m} round {i + 1}: {rd[m].get('error', '')[:300]}" for i, rd in enumerate(res["rounds"])
              for m in rd if not rd[m].get("ok")]
    if errors:
        out.append("Failures:\n\n" + "\n".join(errors))
    return "\n\n".join(out)

