"""A pod network on one machine, for the end-to-end tests: each pod gets a network namespace,
an IP on a private bridge and an /etc/hosts, as a CNI plugin and the kubelet give it.

- The bridge (`BRIDGE`, 10.213.0.1/24) stands in for the cluster network. The API emulator
  and the S3 server of the end-to-end run listen on the gateway address, which only this
  machine's namespaces can reach.
- A pod's namespace `ksw-<n>` has `eth0` (10.213.0.<n>), its loopback and a default route
  through the gateway; its processes run under `ip netns exec`, which bind-mounts
  /etc/netns/ksw-<n>/hosts over /etc/hosts.
- Every pod's hosts file lists every pod's DNS names (`<hostname>.<subdomain>`, with the
  `.<namespace>.svc[.cluster.local]` suffixes), as cluster DNS would answer them for a
  headless Service. The files are rewritten in place (same inode) so names of pods that
  start later resolve in processes already running: the runtime retries its rendezvous
  lookup until --ddp_timeout, as it does under real DNS.

Needs root and iproute2 (`ip`). Everything is removed by `teardown`, and `teardown` of a
previous run's leftovers happens at `setup`.
"""

import os
import pathlib
import subprocess
import threading

BRIDGE = "ksw-e2e0"
PREFIX = "10.213.0"
GATEWAY = f"{PREFIX}.1"
NETNS_PREFIX = "ksw-"
VETH_PREFIX = "kswv"
NETNS_ETC = pathlib.Path("/etc/netns")


def ip(*args, check=True):
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def available():
    """Why the pod network cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, a bridge, /etc/netns)"
    try:
        ip("-V")
    except (OSError, RuntimeError) as e:
        return f"needs iproute2's `ip`: {e}"
    # Root is not always enough (a container without CAP_NET_ADMIN): try one namespace.
    probe = f"{NETNS_PREFIX}probe"
    try:
        ip("netns", "add", probe)
    except RuntimeError as e:
        return f"cannot create a network namespace: {e}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


class PodNetwork:
    def __init__(self):
        self.lock = threading.Lock()
        self.free = list(range(2, 250))
        self.pods = {}  # netns -> {"ip", "names"}

    def setup(self):
        self.teardown()
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")

    def teardown(self):
        # The host ends of the veth pairs first: a deleted namespace's devices go away
        # asynchronously in the kernel, and a quick next run would find them still there.
        for line in ip("-o", "link", "show", check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(VETH_PREFIX):
                ip("link", "del", name, check=False)
        for name in ip("netns", "list", check=False).stdout.split():
            if name.startswith(NETNS_PREFIX):
                ip("netns", "del", name, check=False)
        for folder in NETNS_ETC.glob(f"{NETNS_PREFIX}*"):
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
        ip("link", "del", BRIDGE, check=False)
        self.pods.clear()

    def add(self, names):
        """A new pod namespace; `names` are the DNS names its address answers to.
        Returns (netns, ip)."""
        with self.lock:
            n = self.free.pop(0)
            netns, address = f"{NETNS_PREFIX}{n}", f"{PREFIX}.{n}"
            host_side = f"{VETH_PREFIX}{n}"
            ip("netns", "add", netns)
            ip("link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", netns)
            ip("link", "set", host_side, "master", BRIDGE)
            ip("link", "set", host_side, "up")
            ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", netns, "link", "set", "eth0", "up")
            ip("-n", netns, "link", "set", "lo", "up")
            ip("-n", netns, "route", "add", "default", "via", GATEWAY)
            (NETNS_ETC / netns).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / netns / "hosts").touch()
            self.pods[netns] = {"ip": address, "names": list(names)}
            self.write_hosts()
            return netns, address

    def remove(self, netns):
        with self.lock:
            pod = self.pods.pop(netns, None)
            if pod is None:
                return
            ip("link", "del", f"{VETH_PREFIX}{netns[len(NETNS_PREFIX):]}", check=False)
            ip("netns", "del", netns, check=False)
            folder = NETNS_ETC / netns
            if folder.exists():
                for f in folder.iterdir():
                    f.unlink()
                folder.rmdir()
            self.free.append(int(netns[len(NETNS_PREFIX):]))
            self.write_hosts()

    def write_hosts(self):
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        # Newest first: a restarted pod's name must resolve to the new pod, not to the old one
        # still terminating (the resolver takes the first matching line).
        for pod in reversed(list(self.pods.values())):
            if pod["names"]:
                lines.append(pod["ip"] + "\t" + " ".join(pod["names"]))
        text = "\n".join(lines) + "\n"
        for netns in self.pods:
            path = NETNS_ETC / netns / "hosts"
            # In place (r+, truncate): the bind mount of a running pod keeps the inode.
            with open(path, "r+") as f:
                f.seek(0)
                f.write(text)
                f.truncate()

    def exec_prefix(self, netns):
        """The argv prefix that runs a command inside the pod's namespace."""
        return ["ip", "netns", "exec", netns]


def dns_names(hostname, subdomain, namespace):
    """What cluster DNS answers for a pod of a headless Service, short and qualified."""
    if not hostname:
        return []
    names = [hostname]
    if subdomain:
        base = f"{hostname}.{subdomain}"
        names += [base, f"{base}.{namespace}", f"{base}.{namespace}.svc",
                  f"{base}.{namespace}.svc.cluster.local"]
    return names
