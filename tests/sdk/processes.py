#!/usr/bin/env python3
"""berth through the Docker SDK for Python (Debian's python3-docker), not the CLI: create,
start, exec (with and without a tty, demultiplexed), files in and out (put_archive,
get_archive), logs streamed, pause and unpause, update, wait and remove, each checked as a user of the SDK would. Run by
tests/tests/docker.rs with DOCKER_HOST set to berthd's socket; prints one line per check
and exits non-zero at the first failure."""

import io
import os
import sys
import tarfile
import time

import docker


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def main():
    client = docker.DockerClient(base_url=os.environ["DOCKER_HOST"], version="1.41", timeout=600)
    name = f"sdk-{os.getpid()}"
    since = int(time.time()) - 1
    c = client.containers.run(
        "busybox",
        ["sh", "-c", "echo started; while true; do echo tick; sleep 0.5; done"],
        detach=True,
        name=name,
        environment={"FROM_RUN": "yes"},
    )
    try:
        c.reload()
        check(c.status == "running", "containers.run(detach=True) runs it")

        # exec without a tty, demultiplexed: stdout and stderr apart, the exit code.
        r = c.exec_run(["sh", "-c", "echo out; echo err >&2; exit 5"], demux=True)
        check(r.exit_code == 5, f"exec_run exit code 5 (got {r.exit_code})")
        out, err = r.output
        check(out == b"out\n" and err == b"err\n", f"demuxed streams ({r.output!r})")

        # The container's environment, and the exec's own over it.
        r = c.exec_run(["sh", "-c", "echo $FROM_RUN $EXTRA"], environment={"EXTRA": "x"})
        check(r.output == b"yes x\n", f"exec env ({r.output!r})")

        # With a tty: one stream, a terminal.
        r = c.exec_run(["sh", "-c", "tty; exit 2"], tty=True)
        check(r.exit_code == 2, f"exec_run tty exit code ({r.exit_code})")
        check(r.output.startswith(b"/dev/pts/"), f"exec with a tty has one ({r.output!r})")

        # A program that is not there: Docker's 127, as the CLI would report.
        r = c.exec_run(["/no/such/program"])
        check(r.exit_code == 127, f"missing program exits 127 ({r.exit_code}: {r.output!r})")

        # The low-level API: create, inspect before and after start.
        e = client.api.exec_create(c.id, ["sh", "-c", "exit 3"])
        info = client.api.exec_inspect(e["Id"])
        check(info["Running"] is False and info["ExitCode"] is None, "exec_inspect before start")
        client.api.exec_start(e["Id"])
        info = client.api.exec_inspect(e["Id"])
        check(info["ExitCode"] == 3 and info["ContainerID"] == c.id, "exec_inspect after start")
        c.reload()
        check(e["Id"] in (c.attrs.get("ExecIDs") or []), "the container lists its execs")

        # Files in and out: put_archive extracts a tar into the container's filesystem (in
        # its VM, seen by its processes at once); get_archive returns a tar of a path and the
        # path's stat in a header, as dockerd does.
        data = b"hello from the sdk\n"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            member = tarfile.TarInfo("greeting.txt")
            member.size, member.mode, member.mtime = len(data), 0o640, 1_700_000_000
            t.addfile(member, io.BytesIO(data))
            sub = tarfile.TarInfo("sub")
            sub.type, sub.mode = tarfile.DIRTYPE, 0o755
            t.addfile(sub)
        check(c.put_archive("/tmp", buf.getvalue()) is True, "put_archive")
        r = c.exec_run(["sh", "-c", "cat /tmp/greeting.txt; stat -c %a /tmp/greeting.txt; test -d /tmp/sub && echo dir"])
        check(r.output == data + b"640\ndir\n", f"put_archive's files in the guest ({r.output!r})")
        c.exec_run(["sh", "-c", "echo made inside > /tmp/sub/inner"])
        bits, stat = c.get_archive("/tmp/greeting.txt")
        with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as t:
            got = t.extractfile("greeting.txt").read()
            mtime = t.getmember("greeting.txt").mtime
        check(got == data and mtime == 1_700_000_000, f"get_archive of a file ({got!r}, {mtime})")
        check(
            stat["name"] == "greeting.txt" and stat["size"] == len(data) and stat["mode"] == 0o640,
            f"get_archive's stat header ({stat})",
        )
        bits, stat = c.get_archive("/tmp/sub")
        with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as t:
            names = sorted(t.getnames())
            inner = t.extractfile("sub/inner").read()
        check(names == ["sub", "sub/inner"] and inner == b"made inside\n", f"get_archive of a directory ({names})")
        check(stat["name"] == "sub" and stat["mode"] & 0x80000000, f"a directory's stat ({stat})")
        for what, call in [
            ("get_archive", lambda: c.get_archive("/no/such/path")),
            ("put_archive", lambda: c.put_archive("/no/such/dir", buf.getvalue())),
        ]:
            try:
                call()
                check(False, f"{what} of a missing path fails")
            except docker.errors.NotFound as err:
                check("could not find the file" in str(err).lower(), f"{what} of a missing path: 404 ({err})")

        # Logs streamed as they come.
        stream = c.logs(stream=True, follow=True)
        lines = []
        for chunk in stream:
            lines.append(chunk)
            if len(lines) >= 3:
                break
        stream.close()
        check(any(b"tick" in l for l in lines), f"logs(stream=True) ({lines[:3]!r})")

        # Attach: the output as it comes.
        attached = c.attach(stdout=True, stderr=True, stream=True, logs=False)
        first = next(iter(attached))
        attached.close()
        check(b"tick" in first, f"attach(stream=True) ({first!r})")

        # Pause: no output while paused, exec refused, the state says so.
        c.pause()
        c.reload()
        check(c.status == "paused" and c.attrs["State"]["Paused"], "pause")
        before = c.logs().count(b"tick")
        time.sleep(3)
        check(c.logs().count(b"tick") == before, "no output while paused")
        try:
            c.exec_run(["true"])
            check(False, "exec on a paused container is refused")
        except docker.errors.APIError as err:
            check(err.status_code == 409 and "paused" in str(err), f"exec refused while paused ({err})")
        check(
            [x.id for x in client.containers.list(filters={"status": "paused"})] == [c.id],
            "list(filters={'status': 'paused'})",
        )
        c.unpause()
        deadline = time.time() + 120
        while c.logs().count(b"tick") == before and time.time() < deadline:
            time.sleep(0.5)
        c.reload()
        check(c.status == "running" and c.logs().count(b"tick") > before, "unpause")

        # update: the restart policy; the VM's size is refused by name.
        c.update(restart_policy={"Name": "on-failure", "MaximumRetryCount": 4})
        c.reload()
        rp = c.attrs["HostConfig"]["RestartPolicy"]
        check(rp == {"Name": "on-failure", "MaximumRetryCount": 4}, f"update restart policy ({rp})")
        try:
            c.update(mem_limit="512m")
            check(False, "update of the memory is refused")
        except docker.errors.APIError as err:
            check("Memory" in str(err), f"update of the memory refused by name ({err})")

        c.kill()
        status = c.wait(timeout=120)
        check(status["StatusCode"] == 137, f"wait after kill ({status})")
    finally:
        c.remove(force=True)
    # Filtered by name: other tests' containers come and go meanwhile, and the SDK's list()
    # inspects each one it listed.
    check(not client.containers.list(all=True, filters={"name": name}), "remove")

    # What happened, as events: dockerd's actions, in order.
    until = int(time.time()) + 1
    time.sleep(1.1)
    actions = [
        e["Action"]
        for e in client.events(since=since, until=until, decode=True, filters={"container": name})
    ]
    base = [a.split(":")[0] for a in actions if a != "attach"]
    for want in ["create", "start", "exec_create", "exec_start", "exec_die", "extract-to-dir",
                 "archive-path", "pause", "unpause", "update", "kill", "die", "destroy"]:
        check(want in base, f"event {want} ({actions})")
    check(base[0] == "create" and base[-1] == "destroy", f"events in order ({actions})")


if __name__ == "__main__":
    main()
