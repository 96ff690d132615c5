"""The report: the results as a table of figures, each with its target and
verdict (for the A/B against another commit, ``--baseline``: baseline ->
working medians, their ratio and "no worse" or not), and the heading line
that names the machine and the run."""

import statistics

from . import procprofile
from .delete import METHOD_LABEL, METHODS
from .stats import fmt_ms, fmt_s
from .targets import QUIET_OTHERS_CORES, QUIET_OTHERS_S, QUIET_ROUNDS_NEEDED, TARGETS


def verdict(ok):
    return "-" if ok is None else ("met" if ok else "NOT MET")


def _deletion_rows(res):
    rows = []
    for fs, shapes in res.get("deletion", {}).items():
        for key, rec in shapes.items():
            for m in METHODS:
                mr = rec["methods"][m]
                ratio = mr.get("ratio_to_rm")
                val = fmt_s(mr.get("stats"))
                if mr["errors"] and not mr["seconds"]:
                    val = "failed: " + mr["errors"][0].split(":")[0]
                elif mr["errors"]:
                    val += f" [{len(mr['errors'])} failed]"
                target, ok = "", None
                goal = TARGETS["delete_ratio"].get(key)
                if goal is not None and m == "cleanup":
                    target = f"<= {goal}x rm -rf"
                    ok = ratio is not None and ratio <= goal
                note = f"{ratio:.2f}x" if ratio is not None else "-"
                if mr.get("paired_ratio_median") is not None and m != "rm" and rec["rounds"] > 1:
                    note += f" (per round {mr['paired_ratio_median']:.2f}x)"
                if m == "cleanup" and rec.get("cleanup_in_mechanism"):
                    note += f"; in mechanism {rec['cleanup_in_mechanism']['median']:.3f} s"
                quiet = mr.get("quiet_round_ratios") or []
                if m != "rm" and rec["rounds"] > 1:
                    note += (f"; quiet rounds {len(quiet)}, median {statistics.median(quiet):.2f}x" if quiet
                             else "; no quiet round")
                rows.append((f"[{fs}] {rec['label']}: {METHOD_LABEL[m]}", val, note, target,
                             verdict(ok) if fs == "tmpfs" else ("(" + verdict(ok) + ")" if ok is not None else "-")))
                if key == "a" and m == "cleanup":
                    good = sum(q <= TARGETS["delete_a_round"] for q in quiet)
                    rows.append((f"[{fs}] {rec['label']}: quiet rounds <= {TARGETS['delete_a_round']}x",
                                 f"{good} of {len(quiet)} quiet ({rec['rounds']} rounds)",
                                 f"quiet: others used <= {QUIET_OTHERS_S} s CPU",
                                 f">= {QUIET_ROUNDS_NEEDED} quiet, each <= {TARGETS['delete_a_round']}x",
                                 verdict(len(quiet) >= QUIET_ROUNDS_NEEDED and good == len(quiet))
                                 if fs == "tmpfs" else "-"))
            peaks = rec.get("mechanism_peak_above_mib") or []
            if key == "f" and peaks:
                rows.append((f"[{fs}] {rec['label']}: mechanism peak RSS above its size before", f"{max(peaks):.1f} MiB",
                             "", f"<= {TARGETS['delete_peak_mib']:.0f} MiB",
                             verdict(max(peaks) <= TARGETS["delete_peak_mib"])))
            if rec.get("build"):
                rows.append((f"[{fs}] {rec['label']}: build (not timed above)", fmt_s(rec["build"]),
                             f"{rec['build_us_per_entry']:.1f} us/entry", "", "-"))
    return rows


def _over_polkit(lat, key, target, label):
    """Cleanup's p50 (``key``) minus the direct CheckAuthorization's."""
    c, k = lat.get(key), lat.get("polkit")
    if not c or not k or c["p50_ms"] is None or k["p50_ms"] is None:
        return []
    over = c["p50_ms"] - k["p50_ms"]
    return [(f"latency p50 Cleanup ({LATENCY_NAMES[key]}) minus p50 CheckAuthorization direct, {label}",
             fmt_ms(over), "", f"<= {TARGETS[target]} ms", verdict(over <= TARGETS[target] and not c["errors"]))]


LATENCY_NAMES = {"cleanup": "small leftover", "cleanup_missing": "missing target"}


def _latency_rows(res):
    rows = []
    for label, lat in res.get("latency", {}).items():
        real = label == "real polkitd"
        if real:
            rows += _over_polkit(lat, "cleanup", "over_polkit_ms", label)
        for what, name in (("cleanup", "Cleanup of a small leftover"), ("cleanup_missing", "Cleanup of a missing target"),
                           ("polkit", "CheckAuthorization direct"), ("ping", "Peer.Ping to the mechanism"),
                           ("driver", "bus driver GetId")):
            if what not in lat:
                continue
            r = lat[what]
            err = f" [{r['errors']} errors]" if r["errors"] else ""
            cpu = (r.get("server_cpu_ms_per_call") or {}).get("mechanism") if what.startswith("cleanup") else None
            note = "" if cpu is None else f"mechanism {cpu * 1000:.0f} us/call"
            if not r.get("quiet", True):
                note += " (NOT quiet)"
            if what == "cleanup_missing" and real:
                ok = not r["errors"]
                rows.append((f"latency p50, {name}, {label}", fmt_ms(r["p50_ms"]) + err, note,
                             f"<= {TARGETS['p50_missing_ms']} ms",
                             verdict(r["p50_ms"] is not None and r["p50_ms"] <= TARGETS["p50_missing_ms"] and ok)))
                rows.append((f"latency p99, {name}, {label}", fmt_ms(r["p99_ms"]) + err, "",
                             f"<= {TARGETS['p99_missing_ms']} ms",
                             verdict(r["p99_ms"] is not None and r["p99_ms"] <= TARGETS["p99_missing_ms"] and ok)))
                if cpu is not None:
                    rows.append((f"mechanism CPU per call, {name}, {label}", f"{cpu * 1000:.0f} us",
                                 f"polkitd {r['server_cpu_ms_per_call'].get('polkitd', 0) * 1000:.0f} us",
                                 f"<= {TARGETS['mech_cpu_missing_us']:.0f} us",
                                 verdict(cpu * 1000 <= TARGETS["mech_cpu_missing_us"])))
            else:
                rows.append((f"latency p50/p99, {name}, {label}",
                             f"{fmt_ms(r['p50_ms'])} / {fmt_ms(r['p99_ms'])}{err}", note, "", "-"))
        if real:
            rows += _over_polkit(lat, "cleanup_missing", "over_polkit_missing_ms", label)
    return rows


def _throughput_rows(res):
    rows = []
    tp = res.get("throughput")
    if tp:
        for what, name in (("cleanup", "Cleanup of a small leftover"), ("polkit", "CheckAuthorization direct"),
                           ("cleanup_missing", "Cleanup of a missing target")):
            if what not in tp:
                continue
            v = tp[what]["calls_per_s_mean"]
            errs = sum(r["errors"] for r in tp["runs"][what])
            rows.append((f"throughput, {tp['clients']} clients, {name}",
                         ("-" if v is None else f"{v:.0f} calls/s") + (f" [{errs} errors]" if errs else ""),
                         "", "", "-"))
        for key, name, target in (("ratio", "small leftover", "throughput_ratio"),
                                  ("ratio_missing", "missing target", "throughput_missing_ratio")):
            if key not in tp and key == "ratio_missing":
                continue
            ratio = tp.get(key)
            rows.append((f"throughput ratio Cleanup ({name}) / direct polkit", "-" if ratio is None else f"{ratio:.2f}x",
                         "", f">= {TARGETS[target]}x", verdict(None if ratio is None else ratio >= TARGETS[target])))
    return rows


def _cli_rows(res):
    c = res.get("cli")
    if not c:
        return []
    rows = []
    quiet = "" if c.get("quiet") else " (NOT quiet)"
    errs = sum(c[w]["errors"] for w in ("python", "version", "cleanup"))
    err = f" [{errs} errors, {c['leftovers_left']} leftovers left]" if errs or c["leftovers_left"] else ""
    for what, name in (("python", "python3 -I -S -c pass"), ("version", "locald-shim --version"),
                       ("cleanup", "locald-shim admin cleanup --no-interactive (small leftover)")):
        r = c[what]
        rows.append((f"command line: {name}, median of {c['runs']}", fmt_ms(r["wall_ms_median"]),
                     f"peak RSS {(r['maxrss_kib_max'] or 0) / 1024:.1f} MiB{quiet}", "", "-"))
    over = c.get("cleanup_over_python_ms")
    rows.append(("command line: admin cleanup minus python3 -I -S -c pass", fmt_ms(over) + err, "",
                 f"<= {TARGETS['cli_over_python_ms']:g} ms",
                 verdict(over is not None and over <= TARGETS["cli_over_python_ms"] and not err)))
    peak = c["cleanup"]["maxrss_kib_max"]
    rows.append(("command line: admin cleanup peak RSS", "-" if peak is None else f"{peak * 1024 / 1e6:.1f} MB", "",
                 f"<= {TARGETS['cli_peak_mb']:g} MB", verdict(peak is not None and peak * 1024 / 1e6 <= TARGETS["cli_peak_mb"])))
    return rows


def _coldstart_rows(res):
    rows = []
    for label, cs in res.get("cold_start", {}).items():
        if label == "reference_ms":
            for what, st in cs.items():
                rows.append((f"reference: {what}", fmt_ms(st["median"]) if st else "-", "", "", "-"))
            continue
        st = cs.get("to_reply_ms")
        nm = cs.get("to_name_ms")
        rows.append((f"cold start to first reply, {label} (median of {st['n'] if st else 0})",
                     fmt_ms(st["median"]) if st else "failed",
                     f"name after {fmt_ms(nm['median'])}" if nm else "", f"<= {TARGETS['cold_start_ms']:.0f} ms",
                     verdict(None if not st else st["median"] <= TARGETS["cold_start_ms"])))
    return rows


def _rss_rows(res):
    rows = []
    for label, r in res.get("rss", {}).items():
        target, ok = "", None
        if label.startswith("fresh"):
            target = f"<= {TARGETS['idle_rss_mb']:.0f} MB"
            ok = r["VmRSS_MB"] is not None and r["VmRSS_MB"] <= TARGETS["idle_rss_mb"]
        rows.append((f"idle RSS, {label}", "-" if r["VmRSS_MB"] is None else f"{r['VmRSS_MB']:.1f} MB",
                     f"peak {r['VmHWM_kB'] / 1024:.1f} MB" if r.get("VmHWM_kB") else "", target, verdict(ok)))
    return rows


def _attack_rows(res):
    rows = []
    a = res.get("attack")
    if a:
        rows.append(("under attack: mechanism peak RSS above idle", f"{a['peak_mib'] - a['idle_mib']:.1f} MiB",
                     f"idle {a['idle_mib']:.1f} MiB, peak {a['peak_mib']:.1f} MiB",
                     f"<= {TARGETS['attack_peak_mib']:.0f} MiB",
                     verdict(a["peak_mib"] - a["idle_mib"] <= TARGETS["attack_peak_mib"])))
        rows.append(("under attack: RSS above idle 10 s after", f"{a['after_mib'] - a['idle_mib']:.1f} MiB", "",
                     f"<= {TARGETS['attack_after_mib']:.0f} MiB",
                     verdict(a["after_mib"] - a["idle_mib"] <= TARGETS["attack_after_mib"])))
        rows.append(("under attack: another user's small call", fmt_ms(a["victim_ms"]["median"]),
                     f"quiet {fmt_ms(a['victim_quiet_ms']['median'])}, {len(a['victim_errors'])} errors", "no error",
                     verdict(not a["victim_errors"])))
    return rows


def _quiet_note(windows):
    """The background of the windows a figure comes from: others' busiest window, quiet or not."""
    busy = [w["others_busy_cores"] for w in windows if w and w.get("others_busy_cores") is not None]
    if not busy:
        return ""
    quiet = all(b <= QUIET_OTHERS_CORES for b in busy)
    return f"others <= {max(busy):.2f} cores ({'quiet' if quiet else 'NOT quiet'})"


def _inuse_rows(res):
    rows = []
    iu = res.get("inuse")
    if not iu:
        return rows
    extra = f"{iu['extra_sleeps']:,} idle root processes + {iu['extra_namespaces']} namespaces"
    seq = iu.get("sequential", {})
    for label in ("without", "with"):
        for what, name in (("cleanup", "Cleanup of a small leftover"), ("polkit", "CheckAuthorization direct")):
            w = seq.get(label, {}).get(what)
            if not w:
                continue
            err = f" [{w['errors']} errors]" if w["errors"] else ""
            mech = w["server_cpu_ms_per_call"].get("mechanism")
            note = f"mechanism {mech * 1000:.0f} us/call; " if what == "cleanup" and mech is not None else ""
            rows.append((f"in-use: p50/p99, {name}, {label} extra processes",
                         f"{fmt_ms(w['p50_ms'])} / {fmt_ms(w['p99_ms'])}{err}", note + _quiet_note([w]), "", "-"))
    both = [seq.get(lb, {}).get("cleanup") for lb in ("without", "with")]
    if seq.get("p50_added_ms") is not None:
        v = seq["p50_added_ms"]
        rows.append((f"in-use: Cleanup p50 with {extra} - without", fmt_ms(v), _quiet_note(both),
                     f"<= {TARGETS['inuse_p50_added_ms']:g} ms", verdict(v <= TARGETS["inuse_p50_added_ms"])))
    if seq.get("mech_cpu_us_per_extra_process") is not None:
        v = seq["mech_cpu_us_per_extra_process"]
        rows.append((f"in-use: mechanism CPU per extra process, per request ({iu['extra_processes']:,})",
                     f"{v:.2f} us", _quiet_note(both), f"<= {TARGETS['inuse_cpu_us_per_process']:g} us",
                     verdict(v <= TARGETS["inuse_cpu_us_per_process"])))
    tp = iu.get("throughput_extras")
    if tp:
        for what, name in (("cleanup", "Cleanup"), ("polkit", "CheckAuthorization direct")):
            rates = [w["calls_per_s"] for w in tp[what]]
            errs = sum(w["errors"] for w in tp[what])
            rows.append((f"in-use: {iu['clients']} clients with the extra processes, {name}",
                         (f"{statistics.mean(rates):.0f} calls/s" if rates else "-")
                         + (f" [{errs} errors]" if errs else ""),
                         " ".join(f"{r:.0f}" for r in rates), "", "-"))
        ratio = tp.get("ratio")
        note = _quiet_note(tp["cleanup"] + tp["polkit"])
        if tp.get("ratio_without_extras") is not None:
            note += f"; without extras {tp['ratio_without_extras']:.2f}x"
        rows.append((f"in-use: {iu['clients']} clients with the extra processes: Cleanup / direct polkit",
                     "-" if ratio is None else f"{ratio:.2f}x", note,
                     f">= {TARGETS['inuse_throughput_ratio']}x",
                     verdict(None if ratio is None else ratio >= TARGETS["inuse_throughput_ratio"])))
    ou = iu.get("other_user")
    if ou:
        for label in ("without", "with"):
            rates = [w["calls_per_s"] for w in ou[label]]
            errs = sum(w["errors"] for w in ou[label])
            rows.append((f"in-use: {iu['clients']} clients, Cleanup, {label} {iu['other_sleeps']:,} sleeps of "
                         f"{ou['user']}", (f"{statistics.mean(rates):.0f} calls/s" if rates else "-")
                         + (f" [{errs} errors]" if errs else ""), " ".join(f"{r:.0f}" for r in rates), "", "-"))
        ratio = ou.get("ratio")
        rows.append((f"in-use: throughput with another user's {iu['other_sleeps']:,} sleeps / without",
                     "-" if ratio is None else f"{ratio:.2f}x", _quiet_note(ou["with"] + ou["without"]),
                     f">= {TARGETS['inuse_other_user_ratio']}",
                     verdict(None if ratio is None else ratio >= TARGETS["inuse_other_user_ratio"])))
    if iu.get("profile"):
        rows.append(("in-use: the scan's system calls, per process (host)", f"{iu['profile']['total']:.1f} us",
                     procprofile.describe(iu["profile"]), "", "-"))
    lo = iu.get("leftovers")
    if lo:
        rows.append(("in-use: leftovers created (not timed)", f"{lo['created']:,} in {lo['create_seconds']:.1f} s",
                     f"{len(lo['problems'])} windows ran out or mismatched" if lo["problems"] else "none ran out",
                     "none ran out", verdict(not lo["problems"])))
    return rows


def _installed_rows(res):
    rows = []
    ins = res.get("installed")
    if not ins:
        return rows
    if ins.get("skipped"):
        return [("in-use, installed unit", "skipped", ins["skipped"], "", "-")]
    ws = ins["windows"]
    quiet = all(w["quiet"] for w in ws)
    bg = f"background <= {max(w['background_busy_cores'] for w in ws):.2f} cores ({'quiet' if quiet else 'NOT quiet'})"
    for label in ("without", "with"):
        if label not in ins.get("shim_p50_ms", {}):
            continue
        cpu = ins.get("mech_cpu_ms_per_call", {}).get(label)
        rows.append((f"in-use, installed unit: locald-shim cleanup p50, {label} {ins['extra']:,} extra processes",
                     fmt_ms(ins["shim_p50_ms"][label]),
                     f"pkcheck p50 {fmt_ms(ins['pkcheck_p50_ms'][label])}"
                     + ("" if cpu is None else f"; mechanism {cpu:.2f} ms/call"), "", "-"))
    if ins.get("added_ms") is not None:
        v = ins["added_ms"]
        note = bg + (f"; {ins['mech_cpu_us_per_extra_process']:.1f} us CPU per extra process"
                     if ins.get("mech_cpu_us_per_extra_process") is not None else "")
        if ins.get("errors"):
            note += f"; {ins['errors']} errors"
        rows.append((f"in-use, installed unit: per call with {ins['extra']:,} extra processes - without",
                     fmt_ms(v), note, f"<= {TARGETS['installed_added_ms']:g} ms",
                     verdict(v <= TARGETS["installed_added_ms"] and not ins.get("errors"))))
    if ins.get("profile"):
        rows.append(("in-use, installed unit: the scan's system calls, per process (machine)",
                     f"{ins['profile']['total']:.1f} us", procprofile.describe(ins["profile"]), "", "-"))
    return rows


def _ab_value(v, unit):
    if v is None:
        return "-"
    if unit == "ms":
        return fmt_ms(v)
    if unit == "us":
        return f"{v:.0f} us"
    if unit == "KiB":
        return f"{v / 1024:.1f} MiB"
    return f"{v:g} {unit}"


def _ab_side(side):
    if side["source"] == "working tree":
        changed = len(side["changed_files"])
        return f"working tree ({side['head'][:7]}{f' + {changed} changed files' if changed else ''})"
    return f"{side['rev']} ({side['commit'][:7]})"


def _baseline_rows(res):
    """The A/B against another commit (--baseline): per figure baseline ->
    working medians, the ratio, quiet or not, no worse or not."""
    ab = res.get("baseline")
    if not ab:
        return []
    sides = ab["sides"]
    differ = ab["files_differing"]
    rows = [(f"A/B: {_ab_side(sides['baseline'])} -> {_ab_side(sides['working'])}",
             f"{ab['rounds_per_side']} round{'s' if ab['rounds_per_side'] != 1 else ''} per side",
             "identical code" if ab["identical_code"] else
             f"{len(differ)} files differ: {', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''}",
             f"<= {ab['no_worse_ratio']}x baseline", ab.get("verdict", "incomplete"))]
    for f in ab.get("figures", []):
        b, w = f["baseline"]["median"], f["working"]["median"]
        note = "-" if f["ratio"] is None else f"{f['ratio']:.3f}x"
        if f.get("pair_ratio_median") is not None:
            note += f" (per pair {f['pair_ratio_median']:.2f}x)"
        if f["others_max_cores"] is not None:
            note += f"; others <= {f['others_max_cores']:.2f} cores ({'quiet' if f['quiet'] else 'NOT quiet'})"
        if f.get("host_processes") and f["key"].startswith("leftover"):
            lo, hi = f["host_processes"]
            note += f"; {lo}-{hi} processes on the host" if lo != hi else f"; {lo} processes on the host"
        if f["errors"]:
            note += f"; {f['errors']} errors"
        rows.append((f"A/B [{f['stack']}] {f['figure']}", f"{_ab_value(b, f['unit'])} -> {_ab_value(w, f['unit'])}",
                     note, f"<= {ab['no_worse_ratio']}x", f["verdict"]))
    return rows


SECTION_ROWS = (_baseline_rows, _deletion_rows, _latency_rows, _throughput_rows, _cli_rows, _coldstart_rows,
                _rss_rows,
                _inuse_rows, _installed_rows, _attack_rows)


def table(res):
    """The table's lines: (figure, value, vs rm -rf / note, target, verdict) per row, columns aligned."""
    rows = [row for section in SECTION_ROWS for row in section(res)]
    head = ("figure", "value (median (min-max))", "vs rm -rf / note", "target", "met?")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(head, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return lines


def heading(res):
    """The line above the table: when, on what machine, under what load, how long."""
    m = res["machine"]
    return (f"locald-admin benchmark, {m['date']}: {m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, "
            f"Python {m['python']}, polkitd {m['polkitd']}, dbus-daemon {m['dbus_daemon']}, "
            f"load {m['loadavg_start'][0]:.2f} -> {m.get('loadavg_end', [0])[0]:.2f}, background "
            f"{m.get('background_busy_cores_start') or 0:.2f}/{m.get('background_busy_cores_end') or 0:.2f} cores busy, "
            f"{res.get('wall_seconds', 0):.0f} s")
