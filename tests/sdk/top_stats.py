#!/usr/bin/python3
"""docker top and docker stats through Debian's Docker SDK for Python (python3-docker).

Usage: DOCKER_HOST=unix://SOCKET top_stats.py RUNNING STOPPED

RUNNING runs `sh -c 'sleep 1000 & while true; do sleep 1; done'`; STOPPED has exited.
Prints one line per check and exits 1 on the first that fails (an AssertionError).
"""

import sys

import docker


def main():
    running_name, stopped_name = sys.argv[1], sys.argv[2]
    client = docker.from_env(timeout=120)
    running = client.containers.get(running_name)
    stopped = client.containers.get(stopped_name)

    top = running.top()
    assert top["Titles"] == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"], top
    cmds = [p[-1] for p in top["Processes"]]
    assert "sleep 1000" in cmds, top
    assert any(c.startswith("sh -c sleep 1000 &") for c in cmds), top
    print("top: ok,", len(top["Processes"]), "processes")

    top = running.top(ps_args="aux")
    assert top["Titles"][0] == "USER" and top["Titles"][-1] == "COMMAND", top
    print("top aux: ok")

    one = running.stats(stream=False)
    cpu, pre = one["cpu_stats"], one["precpu_stats"]
    assert cpu["online_cpus"] >= 1, one
    # Two samples a second apart, as dockerd takes them.
    assert cpu["system_cpu_usage"] > pre["system_cpu_usage"] > 0, one
    mem = one["memory_stats"]
    assert 0 < mem["usage"] < mem["limit"] == 256 << 20, mem
    assert one["pids_stats"]["current"] >= 2, one
    assert one["berth"]["vmm"]["private_memory_bytes"] > 0, one
    print("stats: ok, usage", mem["usage"], "of", mem["limit"])

    samples = []
    stream = running.stats(decode=True, stream=True)
    for sample in stream:
        samples.append(sample)
        if len(samples) == 2:
            break
    stream.close()
    assert len(samples) == 2, samples
    first, second = samples
    # Each sample's precpu_stats is the one before it.
    assert (second["precpu_stats"]["cpu_usage"]["total_usage"]
            == first["cpu_stats"]["cpu_usage"]["total_usage"]), samples
    assert second["preread"] == first["read"], samples
    print("stats stream: ok, 2 samples")

    try:
        stopped.top()
        raise AssertionError("top of a stopped container answered")
    except docker.errors.APIError as e:
        assert e.status_code == 409 and "is not running" in str(e), e
    empty = stopped.stats(stream=False)
    assert empty["memory_stats"] == {} and empty["read"].startswith("0001-01-01"), empty
    print("stopped: ok")


if __name__ == "__main__":
    main()
