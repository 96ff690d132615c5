"""The targets the figures are judged against, and what makes a round quiet."""

TARGETS = {
    # Cleanup / rm -rf, median of the rounds, per tree (issue 12)
    "delete_ratio": {"a": 0.60, "c": 0.95, "d": 0.8, "e": 0.65, "f": 1.0},  # (a) 0.60: issue 25
    "delete_a_round": 0.7,  # ... and at least QUIET_ROUNDS_NEEDED quiet rounds of (a), each <= 0.7 x
    "delete_peak_mib": 64.0,  # the mechanism's peak RSS during the delete of (f), above its size before
    # issue 25: the small root-owned leftover (bench/leftovers.py), real polkitd
    "over_polkit_ms": 0.8,  # p50 of Cleanup minus p50 of CheckAuthorization direct
    "throughput_ratio": 0.85,  # 32 clients: >= 0.85 x direct polkit
    "cli_over_python_ms": 25.0,  # locald-shim admin cleanup - python3 -I -S -c pass, median
    "cli_peak_mb": 15.0,  # its peak RSS (MB: 10^6 bytes)
    # the missing target (the secondary line), real polkitd
    "over_polkit_missing_ms": 0.35,
    "mech_cpu_missing_us": 350.0,  # mechanism CPU per call
    "p50_missing_ms": 1.5,
    "p99_missing_ms": 5.0,
    "throughput_missing_ratio": 0.9,
    "cold_start_ms": 300.0,
    "idle_rss_mb": 30.0,
    "attack_peak_mib": 64.0,  # peak RSS <= idle + 64 MiB under attack
    "attack_after_mib": 5.0,  # <= idle + 5 MiB ten seconds after
    # issue 21, the in-use check (section inuse: private bus, real polkitd, small root-owned leftovers)
    "inuse_p50_added_ms": 6.0,  # p50 with 2,000 idle root processes + 20 namespaces - p50 without
    "inuse_cpu_us_per_process": 3.0,  # mechanism CPU per extra process, per request
    "inuse_throughput_ratio": 0.6,  # 32 clients with the extra processes: Cleanup / direct polkit
    "inuse_other_user_ratio": 0.5,  # 32 clients' throughput with another user's 20,000 sleeps / without
    "installed_added_ms": 4.0,  # installed unit (section installed): per call with 1,000 extra processes - without
}
QUIET_OTHERS_S = 0.05  # a quiet run: other processes used at most this much CPU meanwhile
QUIET_ROUNDS_NEEDED = 5
QUIET_OTHERS_CORES = 0.05  # a quiet window (load protocol): other processes kept at most this many cores busy
