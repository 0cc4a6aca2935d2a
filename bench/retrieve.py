"""C-MOVE and C-GET of a 100-instance CT study (issue 4): ilm against Orthanc.

The study: the first 100 files of the data set (one series of one study),
stored in ilm (hot tier, imported before ``ilm serve`` starts) and in
Orthanc (REST upload), the same files in the same round.

- C-MOVE: dcmtk ``movescu`` asks the server to move the study (Study Root,
  STUDY level) to pynetdicom's ``storescp`` app (``--max-pdu 0``, writing
  files), a fresh one per measurement; the destination is configured in each
  server (ilm: ``[dicom.destinations.STORESCP]``; Orthanc: ``PUT
  /modalities``). Time: movescu's wall time, association to release, after
  one untimed warm-up move; checked: storescp wrote 100 files and movescu
  exited 0. Target: ilm >= 1.0x Orthanc.
- C-GET: dcmtk ``getscu`` of the same study, writing files. dcmtk's receiver
  spends 50-70 ms per 512 KB instance on these machines, so this bounds both
  servers alike: figures only.
"""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import harness as h
from bench.report import fmt, median, ratio_cell, spread, table, target_cell

NAME = "retrieve"
TITLE = "C-MOVE and C-GET of a 100-instance study vs Orthanc"
STUDY_SIZE = 100
TARGET = 1.0
SYSTEMS = ("ilm", "orthanc")


def _study(data: Any) -> tuple[list[Path], str]:
    import pydicom

    files = list(data.files[:STUDY_SIZE])
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    if len(uids) != 1:
        raise h.BenchError(f"the first {STUDY_SIZE} files are not one study: {len(uids)} studies")
    return files, uids.pop()


def _orthanc_put(port: int, path: str, body: Any, method: str = "PUT") -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()


def _orthanc(folder: Path, files: list[Path], dest: h.Server) -> h.Server:
    srv = h.start_orthanc(folder / "orthanc")
    port = srv.ports["http"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda p: _orthanc_put(port, "/instances", p.read_bytes(), "POST"), files))
    _orthanc_put(port, "/modalities/storescp", {"AET": "STORESCP", "Host": "127.0.0.1", "Port": dest.ports["dicom"]})
    # Orthanc serves C-MOVE and C-GET only to the AEs it knows (DicomAlwaysAllowMove/Get are off by default)
    for aet in ("MOVESCU", "GETSCU"):
        _orthanc_put(port, f"/modalities/{aet.lower()}", {"AET": aet, "Host": "127.0.0.1", "Port": 104,
                                                          "AllowMove": True, "AllowGet": True})
    return srv


def _ilm(folder: Path, files: list[Path], dest: h.Server) -> h.Server:
    from ilm.config import load_settings
    from ilm.service import ArchiveService

    home = h.make_ilm_home(folder / "home", fsync=False)
    with open(home / "ilm.toml", "a") as f:
        f.write(f'\n[dicom.destinations.STORESCP]\nhost = "127.0.0.1"\nport = {dest.ports["dicom"]}\n')
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        for p in files:
            r = svc.ingest_path(p)
            if r.status.value != "stored":
                raise h.BenchError(f"ilm import of {p}: {r.status.value} {r.reason}")
    finally:
        svc.close()
    return h.start_ilm_serve(home)


def _measure(system: str, op: str, files: list[Path], study_uid: str) -> dict[str, Any]:
    row: dict[str, Any] = {"system": system, "op": op}
    with h.scratch(f"retrieve-{system}-{op}") as folder:
        dest = srv = None
        try:
            (folder / "dest").mkdir()
            dest = h.start_storescp(folder / "dest")
            srv = (_ilm if system == "ilm" else _orthanc)(folder, files, dest)
            aec = "ILM" if system == "ilm" else "ORTHANC"
            keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
            h.settle()
            row["load_before"] = h.loadavg()
            if op == "move":
                cmd = ["movescu", "-S", "-aet", "MOVESCU", "-aec", aec, "-aem", "STORESCP", *keys,
                       "127.0.0.1", str(srv.ports["dicom"])]
                got_in = dest.folder
            else:
                got_in = folder / "got"
                got_in.mkdir()
                cmd = ["getscu", "-S", "-aet", "GETSCU", "-aec", aec, "-od", str(got_in), *keys,
                       "127.0.0.1", str(srv.ports["dicom"])]
            warm = h.run_timed(cmd, timeout=600)  # untimed: first-association costs of both servers
            if not warm.ok:
                raise h.BenchError(f"warm-up {op} failed: {warm.tail(5)}\n{srv.log_tail(5)}")
            for p in list(got_in.iterdir()):
                p.unlink()
            h.settle()
            t = h.run_timed(cmd, timeout=600)
            got = h.count_files(got_in)
            row.update(seconds=t.seconds, received=got, ok=t.ok and got == len(files))
            if not row["ok"]:
                row["error"] = f"exit {t.rc}, {got} of {len(files)} received: {t.tail(5)}\n{srv.log_tail(5)}"
            else:
                row["instances_per_s"] = len(files) / t.seconds
        except h.BenchError as exc:
            row.update(ok=False, error=str(exc))
        finally:
            for s in (srv, dest):
                if s is not None:
                    h.stop_server(s)
    return row


def run(ctx: Any) -> dict[str, Any]:
    from bench import data as bench_data

    files, study_uid = _study(bench_data.ensure_dataset())
    size = sum(f.stat().st_size for f in files)
    rounds = []
    for r in range(ctx.rounds):
        res: dict[str, Any] = {}
        for op in ("move", "get"):
            for s in (SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]):
                ctx.log(f"retrieve round {r + 1}/{ctx.rounds}: C-{op.upper()} from {s} ...")
                row = _measure(s, op, files, study_uid)
                res[f"{s}/{op}"] = row
                ctx.log(f"  {s}/{op}: " + (f"{row['instances_per_s']:.1f} inst/s ({row['seconds']:.2f} s)"
                                           if row.get("ok") else f"FAILED: {row.get('error', '')[:400]}"))
        rounds.append(res)
    return {"instances": len(files), "bytes": size, "rounds": rounds}


def _ratios(res: dict[str, Any], op: str) -> list[float | None]:
    out: list[float | None] = []
    for rd in res["rounds"]:
        x, y = rd.get(f"ilm/{op}", {}).get("instances_per_s"), rd.get(f"orthanc/{op}", {}).get("instances_per_s")
        out.append(x / y if x and y else None)
    return out


def targets(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rs = _ratios(res, "move")
    return [("C-MOVE of 100 instances to pynetdicom storescp: ilm / Orthanc", ratio_cell(rs), f">= {TARGET:g}x",
             target_cell(rs, TARGET).split(": ", 1)[1])]


def render(res: dict[str, Any]) -> str:
    n, mb = res["instances"], res["bytes"] / 1e6
    labels = {"move": "C-MOVE (movescu) to pynetdicom storescp", "get": "C-GET (dcmtk getscu)"}
    rows = []
    for op in ("move", "get"):
        for s in SYSTEMS:
            k = f"{s}/{op}"
            rates = [rd.get(k, {}).get("instances_per_s") for rd in res["rounds"]]
            secs = [rd.get(k, {}).get("seconds") for rd in res["rounds"] if rd.get(k, {}).get("ok")]
            fails = sum(1 for rd in res["rounds"] if k in rd and not rd[k].get("ok"))
            rows.append((labels[op], "ilm" if s == "ilm" else "Orthanc", fmt(median(rates)), spread(rates),
                         fmt(median(secs), 2), f"{fails} failed" if fails else "all"))
    out = [f"One CT study of {n} instances ({mb:,.0f} MB), stored in both servers from the same files; "
           "wall time of the dcmtk client from association to release; every file counted at the receiver."]
    out.append(table(["operation", "server", "instances/s", "range", "seconds", f"received {n}"], rows))
    out.append("Same-round ratios (instances/s):\n\n" + table(
        ["ratio", "value", "target"],
        [("C-MOVE: ilm / Orthanc", ratio_cell(_ratios(res, "move")), target_cell(_ratios(res, "move"), TARGET)),
         ("C-GET: ilm / Orthanc (dcmtk's receiver bounds both)", ratio_cell(_ratios(res, "get")), "figures only")]))
    errors = [f"- round {i + 1} {k}: {row.get('error', '')[:300]}" for i, rd in enumerate(res["rounds"])
              for k, row in rd.items() if not row.get("ok")]
    if errors:
        out.append("Failures:\n\n" + "\n".join(errors))
    return "\n\n".join(out)
