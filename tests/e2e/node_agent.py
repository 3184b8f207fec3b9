"""A node agent for the end-to-end tests: the Job controller, the Deployment controller and
the kubelet of a one-machine "cluster" whose API server is the emulator (tests/emulator/).
Test infrastructure, in the spirit of kwok: it exists because our machines have no cluster.

What it plays, against the emulator's REST API (polled every POLL seconds):
- Job controller (batch/v1, Indexed Jobs as the operator writes them): one pod per index
  (`<job>-<index>-<suffix>`, hostname `<job>-<index>`, the completion-index label and
  annotation, an owner reference to the Job); `suspend` deletes the active pods and a resume
  creates them again; `podFailurePolicy` FailJob rules on exit codes; `backoffLimit`;
  status.active/ready/succeeded/failed/completedIndexes/startTime/completionTime and the
  Complete / Failed / Suspended conditions. A failed Job's remaining pods are deleted.
- Deployment controller (apps/v1), without the ReplicaSet layer: `replicas` pods owned by
  the Deployment, replaced when the template changes; status.replicas/readyReplicas/
  availableReplicas/updatedReplicas and the Available condition.
- kubelet: each pod's container runs as a local process in the pod's network namespace
  (tests/e2e/podnet.py): the image's `command[0]` mapped to a local binary (`swift` -> the
  build's target/debug/swift), `args` as written, env from `value`, downward-API `fieldRef`s
  (annotations, labels, name, namespace, podIP), `secretKeyRef` and `envFrom` Secrets. The
  container's /dev/termination-log is a per-pod file (KUBESWIFT_TERMINATION_LOG), read into
  `state.terminated.message` on exit (FallbackToLogsOnError: the log tail when the process
  failed without one). Readiness probes (httpGet) are run. Pods carry a finalizer of the
  agent's, so a deleted pod's process is stopped (SIGTERM, then SIGKILL after the grace
  period) before the pod object goes, as the kubelet does.

Not played: scheduling and resources (every pod starts at once), Service virtual IPs (tests
call pod IPs), image pulls, volumes, liveness restarts, container restarts of Jobs' pods.

Per pod, under the state folder: `<namespace>_<pod>/` holds `log` (stdout+stderr), `pid`
and the termination-log file; tests kill a pod's process through `pid`.

Run: python node_agent.py --server URL --state DIR --bin swift=/path/to/swift
"""

import argparse
import base64
import hashlib
import json
import os
import pathlib
import random
import signal
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import podnet  # noqa: E402

POLL = 0.25
FINALIZER = "kubeswift.io/e2e-kubelet"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
JOB_NAME_KEY = "batch.kubernetes.io/job-name"
TEMPLATE_HASH = "pod-template-hash"


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def log(msg, **fields):
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"{now()} node-agent: {msg} {extra}".rstrip(), file=sys.stderr, flush=True)


class Api:
    """Just enough of a Kubernetes REST client, on urllib."""

    def __init__(self, server):
        self.server = server.rstrip("/")

    def call(self, method, path, body=None, content_type="application/json"):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise RuntimeError(f"{method} {path}: {e.code} {e.read()[:300]!r}") from e

    def list(self, path):
        return (self.call("GET", path) or {}).get("items", [])

    def merge(self, path, patch):
        return self.call("PATCH", path, patch, "application/merge-patch+json")


def job_path(ns, name=""):
    return f"/apis/batch/v1/namespaces/{ns}/jobs" + (f"/{name}" if name else "")


def deploy_path(ns, name=""):
    return f"/apis/apps/v1/namespaces/{ns}/deployments" + (f"/{name}" if name else "")


def pod_path(ns, name=""):
    return f"/api/v1/namespaces/{ns}/pods" + (f"/{name}" if name else "")


def meta(obj):
    return obj.get("metadata") or {}


def suffix():
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(5))


def owner_ref(obj):
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta(obj)["name"],
            "uid": meta(obj)["uid"], "controller": True, "blockOwnerDeletion": True}


def owned_by(pod, obj):
    return any(o.get("uid") == meta(obj)["uid"] for o in meta(pod).get("ownerReferences") or [])


def compress_indexes(indexes):
    """Kubernetes' completedIndexes format: "0-2,5"."""
    out, run = [], []
    for i in sorted(indexes):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def condition(type_, status, reason="", message=""):
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastProbeTime": now(), "lastTransitionTime": now()}


def set_condition(conditions, new):
    for i, c in enumerate(conditions):
        if c["type"] == new["type"]:
            if c["status"] == new["status"] and c.get("reason") == new.get("reason"):
                return conditions
            conditions[i] = new
            return conditions
    conditions.append(new)
    return conditions


def has_condition(obj, type_):
    return any(c["type"] == type_ and c["status"] == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


class Container:
    """One pod's process (the container)."""

    def __init__(self, proc, folder, netns, ip):
        self.proc, self.folder, self.netns, self.ip = proc, folder, netns, ip
        self.ready = False
        self.stopping_since = None
        self.last_probe = 0.0


class Agent:
    def __init__(self, api, state, binaries, net):
        self.api, self.state, self.binaries, self.net = api, pathlib.Path(state), binaries, net
        self.containers = {}  # (ns, pod) -> Container
        self.reported = {}  # (ns, pod) -> the last status written

    # ---- the kubelet ------------------------------------------------------------------------

    def env_for(self, pod, container, ip, folder):
        ns = meta(pod)["namespace"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder / "home"),
               "TMPDIR": str(folder / "tmp"),
               "HOSTNAME": pod["spec"].get("hostname") or meta(pod)["name"],
               "KUBESWIFT_TERMINATION_LOG": str(folder / "termination-log")}
        for key in ("SWIFT_LOG", "RUST_LOG", "RUST_BACKTRACE"):
            if key in os.environ:
                env[key] = os.environ[key]
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef")
            if ref:
                env.update(self.secret(ns, ref["name"], ref.get("optional", False)) or {})
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            value_from = item.get("valueFrom") or {}
            if "fieldRef" in value_from:
                value = self.field(pod, value_from["fieldRef"]["fieldPath"], ip)
            elif "secretKeyRef" in value_from:
                ref = value_from["secretKeyRef"]
                data = self.secret(ns, ref["name"], ref.get("optional", False)) or {}
                value = data.get(ref["key"])
                if value is None and not ref.get("optional"):
                    raise RuntimeError(f"secret {ref['name']} has no key {ref['key']}")
            else:
                raise RuntimeError(f"env {item['name']}: unsupported valueFrom {value_from}")
            if value is not None:
                env[item["name"]] = value
        return env

    def secret(self, ns, name, optional):
        obj = self.api.call("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")
        if obj is None:
            if optional:
                return None
            raise RuntimeError(f"secret {ns}/{name} not found")
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        data.update(obj.get("stringData") or {})
        return data

    @staticmethod
    def field(pod, path, ip):
        m = meta(pod)
        if path == "metadata.name":
            return m["name"]
        if path == "metadata.namespace":
            return m["namespace"]
        if path == "status.podIP":
            return ip
        for kind in ("annotations", "labels"):
            prefix = f"metadata.{kind}['"
            if path.startswith(prefix) and path.endswith("']"):
                return (m.get(kind) or {}).get(path[len(prefix):-2], "")
        raise RuntimeError(f"unsupported fieldRef {path}")

    def start(self, pod):
        ns, name = meta(pod)["namespace"], meta(pod)["name"]
        spec = pod["spec"]
        container = spec["containers"][0]
        folder = self.state / f"{ns}_{name}"
        for sub in ("home", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        names = podnet.dns_names(spec.get("hostname"), spec.get("subdomain"), ns)
        netns, ip = self.net.add(names)
        try:
            env = self.env_for(pod, container, ip, folder)
            command = list(container.get("command") or [])
            if not command:
                raise RuntimeError("the container has no command (image entrypoints are not emulated)")
            command[0] = self.binaries.get(command[0], command[0])
            argv = self.net.exec_prefix(netns) + command + list(container.get("args") or [])
            out = open(folder / "log", "ab")
            proc = subprocess.Popen(argv, env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            out.close()
        except Exception as e:  # a pod that cannot start fails, as CreateContainerConfigError would
            self.net.remove(netns)
            log("pod cannot start", pod=f"{ns}/{name}", error=e)
            self.write_pod_status(pod, self.failed_status(pod, 128, "StartError", str(e)))
            return
        (folder / "pid").write_text(str(proc.pid))
        self.containers[(ns, name)] = Container(proc, folder, netns, ip)
        log("pod started", pod=f"{ns}/{name}", ip=ip, pid=proc.pid)

    def stop(self, key, grace):
        c = self.containers.get(key)
        if c is None:
            return True
        if c.proc.poll() is None:
            if c.stopping_since is None:
                c.stopping_since = time.monotonic()
                os.killpg(c.proc.pid, signal.SIGTERM)
            elif time.monotonic() - c.stopping_since > grace:
                os.killpg(c.proc.pid, signal.SIGKILL)
            return False
        self.kill(key)  # anything the main process left behind
        return True

    def kill(self, key):
        """Stops a container without a grace period (its pod object is already gone)."""
        c = self.containers.pop(key, None)
        if c is None:
            return
        try:
            os.killpg(c.proc.pid, signal.SIGKILL)  # the main process and all it started
        except ProcessLookupError:
            pass
        c.proc.wait()
        self.net.remove(c.netns)

    def failed_status(self, pod, code, reason, message):
        return {"phase": "Failed", "conditions": [condition("Ready", "False", "PodFailed")],
                "containerStatuses": [{
                    "name": pod["spec"]["containers"][0]["name"], "ready": False, "restartCount": 0,
                    "image": pod["spec"]["containers"][0].get("image", ""),
                    "state": {"terminated": {"exitCode": code, "reason": reason, "message": message,
                                             "finishedAt": now()}}}]}

    def observe(self, pod, c):
        """The pod status for a container's process: running (ready or not) or terminated."""
        container = pod["spec"]["containers"][0]
        code = c.proc.poll()
        base = {"podIP": c.ip, "podIPs": [{"ip": c.ip}], "hostIP": podnet.GATEWAY,
                "startTime": (pod.get("status") or {}).get("startTime") or now()}
        if code is None:
            self.probe(pod, c)
            running = {"name": container["name"], "ready": c.ready, "restartCount": 0,
                       "image": container.get("image", ""), "started": True,
                       "state": {"running": {"startedAt": base["startTime"]}}}
            return {**base, "phase": "Running",
                    "conditions": [condition("Ready", "True" if c.ready else "False")],
                    "containerStatuses": [running]}
        if code < 0:  # killed by a signal: the exit status a shell (and the kubelet) report
            code = 128 - code
        message = ""
        term = c.folder / "termination-log"
        if term.exists():
            message = term.read_bytes()[:4096].decode(errors="replace")
        if not message and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            tail = (c.folder / "log").read_bytes()[-2048:] if (c.folder / "log").exists() else b""
            message = tail.decode(errors="replace")
        status = self.failed_status(pod, code, "Completed" if code == 0 else "Error", message)
        status.update(base)
        if code == 0:
            status["phase"] = "Succeeded"
            status["conditions"] = [condition("Ready", "False", "PodCompleted")]
        return status

    def probe(self, pod, c):
        container = pod["spec"]["containers"][0]
        probe = container.get("readinessProbe")
        if not probe:
            c.ready = True
            return
        if time.monotonic() - c.last_probe < 1.0:
            return
        c.last_probe = time.monotonic()
        http = probe.get("httpGet") or {}
        port = http.get("port")
        if isinstance(port, str):
            port = next((p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port), None)
        try:
            with urllib.request.urlopen(f"http://{c.ip}:{port}{http.get('path', '/')}", timeout=1) as r:
                c.ready = 200 <= r.status < 400
        except (OSError, urllib.error.URLError):
            c.ready = False

    def write_pod_status(self, pod, status):
        key = (meta(pod)["namespace"], meta(pod)["name"])
        comparable = json.dumps({k: v for k, v in status.items() if k != "conditions"}, sort_keys=True) + \
            json.dumps([(c["type"], c["status"]) for c in status.get("conditions", [])])
        if self.reported.get(key) == comparable:
            return
        self.reported[key] = comparable
        self.api.merge(pod_path(*key) + "/status", {"status": status})

    def sync_pods(self, pods):
        seen = set()
        for pod in pods:
            key = (meta(pod)["namespace"], meta(pod)["name"])
            seen.add(key)
            if FINALIZER not in (meta(pod).get("finalizers") or []):
                continue  # not ours (no node runs it)
            if meta(pod).get("deletionTimestamp"):
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                if self.stop(key, grace):
                    finalizers = [f for f in meta(pod).get("finalizers") or [] if f != FINALIZER]
                    self.api.merge(pod_path(*key), {"metadata": {"finalizers": finalizers}})
                    self.reported.pop(key, None)
                    log("pod stopped", pod=f"{key[0]}/{key[1]}")
                continue
            phase = (pod.get("status") or {}).get("phase")
            if key not in self.containers:
                if phase in ("Succeeded", "Failed"):
                    continue
                self.start(pod)
                continue
            c = self.containers[key]
            status = self.observe(pod, c)
            self.write_pod_status(pod, status)
            if status["phase"] in ("Succeeded", "Failed"):
                code = status["containerStatuses"][0]["state"]["terminated"]["exitCode"]
                log("pod finished", pod=f"{key[0]}/{key[1]}", phase=status["phase"], exit_code=code)
                # A container ends with its main process: whatever it started goes too (the
                # kernel tears down the container's PID namespace).
                try:
                    os.killpg(c.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.net.remove(c.netns)
                del self.containers[key]
        for key in list(self.containers):
            if key not in seen:  # the object went without our finalizer running: stop at once
                self.kill(key)

    def create_pod(self, owner, template, name, hostname=None, labels=None, annotations=None):
        ns = meta(owner)["namespace"]
        pod_meta = {"name": name, "namespace": ns,
                    "labels": {**(meta(template).get("labels") or {}), **(labels or {})},
                    "annotations": {**(meta(template).get("annotations") or {}), **(annotations or {})},
                    "ownerReferences": [owner_ref(owner)], "finalizers": [FINALIZER]}
        spec = json.loads(json.dumps(template["spec"]))
        if hostname:
            spec["hostname"] = hostname
        spec["nodeName"] = "e2e-node"
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec,
               "status": {"phase": "Pending"}}
        self.api.call("POST", pod_path(ns), pod)
        log("pod created", pod=f"{ns}/{name}")

    def delete_pod(self, pod):
        self.api.call("DELETE", pod_path(meta(pod)["namespace"], meta(pod)["name"]))

    # ---- the Job controller -----------------------------------------------------------------

    def sync_job(self, job, pods):
        ns, name = meta(job)["namespace"], meta(job)["name"]
        spec, status = job["spec"], dict(job.get("status") or {})
        mine = [p for p in pods if owned_by(p, job)]
        live = [p for p in mine if not meta(p).get("deletionTimestamp")
                and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        finished = has_condition(job, "Complete") or has_condition(job, "Failed")
        if meta(job).get("deletionTimestamp"):
            return
        conditions = list(status.get("conditions") or [])
        completions = spec.get("completions", 1)
        done = {int(meta(p)["annotations"][INDEX_KEY]) for p in mine
                if (p.get("status") or {}).get("phase") == "Succeeded"}
        failed_pods = [p for p in mine if (p.get("status") or {}).get("phase") == "Failed"]
        if not finished:
            verdict = self.job_failure(job, failed_pods)
            if verdict:
                for p in live:
                    self.delete_pod(p)
                conditions = set_condition(conditions, condition("FailureTarget", "True", *verdict))
                conditions = set_condition(conditions, condition("Failed", "True", *verdict))
                log("job failed", job=f"{ns}/{name}", reason=verdict[0], message=verdict[1])
                live = []
            elif len(done) >= completions:
                conditions = set_condition(conditions, condition("SuccessCriteriaMet", "True", "CompletionsReached"))
                conditions = set_condition(conditions, condition("Complete", "True", "CompletionsReached"))
                status["completionTime"] = now()
                log("job complete", job=f"{ns}/{name}")
            elif spec.get("suspend"):
                for p in live:
                    self.delete_pod(p)
                live = []
                conditions = set_condition(conditions, condition("Suspended", "True", "JobSuspended", "Job suspended"))
            else:
                if any(c["type"] == "Suspended" and c["status"] == "True" for c in conditions):
                    conditions = set_condition(conditions, condition("Suspended", "False", "JobResumed", "Job resumed"))
                status.setdefault("startTime", now())
                running = {int(meta(p)["annotations"][INDEX_KEY]) for p in mine
                           if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")}
                budget = spec.get("parallelism", completions) - len(live)
                for index in range(completions):
                    if budget <= 0:
                        break
                    if index in done or index in running:
                        continue
                    self.create_pod(job, spec["template"], f"{name}-{index}-{suffix()}",
                                    hostname=f"{name}-{index}",
                                    labels={INDEX_KEY: str(index), JOB_NAME_KEY: name, "job-name": name,
                                            "controller-uid": meta(job)["uid"]},
                                    annotations={INDEX_KEY: str(index)})
                    budget -= 1
        ready = sum(1 for p in live if any(
            c["type"] == "Ready" and c["status"] == "True" for c in (p.get("status") or {}).get("conditions") or []))
        new = {**status, "active": len(live), "ready": ready, "succeeded": len(done),
               "failed": len(failed_pods), "conditions": conditions}
        if done:
            new["completedIndexes"] = compress_indexes(done)
        if new != (job.get("status") or {}):
            self.api.merge(job_path(ns, name) + "/status", {"status": new})

    @staticmethod
    def job_failure(job, failed_pods):
        """(reason, message) when the Job has failed, as the Job controller decides it."""
        spec = job["spec"]
        for pod in failed_pods:
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            for index, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
                on = rule.get("onExitCodes")
                if rule.get("action") != "FailJob" or not on:
                    continue
                for s in statuses:
                    if on.get("containerName") not in (None, s["name"]):
                        continue
                    code = ((s.get("state") or {}).get("terminated") or {}).get("exitCode")
                    hit = code in on["values"] if on["operator"] == "In" else code not in on["values"]
                    if code is not None and hit:
                        return ("PodFailurePolicy",
                                f"Container {s['name']} for pod {meta(pod)['namespace']}/{meta(pod)['name']} "
                                f"failed with exit code {code} matching FailJob rule at index {index}")
        if len(failed_pods) > spec.get("backoffLimit", 6):
            return ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        return None

    # ---- the Deployment controller ----------------------------------------------------------

    def sync_deployment(self, deploy, pods):
        ns, name = meta(deploy)["namespace"], meta(deploy)["name"]
        if meta(deploy).get("deletionTimestamp"):
            return
        spec = deploy["spec"]
        template = spec["template"]
        template_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        mine = [p for p in pods if owned_by(p, deploy) and not meta(p).get("deletionTimestamp")]
        current = [p for p in mine if (meta(p).get("labels") or {}).get(TEMPLATE_HASH) == template_hash]
        for p in mine:
            if p not in current:
                self.delete_pod(p)
        # restartPolicy Always: a finished server pod is replaced (a restart, simply).
        for p in current:
            if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                self.delete_pod(p)
        current = [p for p in current if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        want = spec.get("replicas", 1)
        for p in current[want:]:
            self.delete_pod(p)
        current = current[:want]
        for _ in range(want - len(current)):
            self.create_pod(deploy, template, f"{name}-{template_hash[:6]}-{suffix()}",
                            labels={TEMPLATE_HASH: template_hash})
        ready = sum(1 for p in current if any(
            c["type"] == "Ready" and c["status"] == "True" for c in (p.get("status") or {}).get("conditions") or []))
        old = deploy.get("status") or {}
        conditions = set_condition(list(old.get("conditions") or []), condition(
            "Available", "True" if ready >= want else "False",
            "MinimumReplicasAvailable" if ready >= want else "MinimumReplicasUnavailable"))
        new = {**old, "observedGeneration": meta(deploy).get("generation", 1), "replicas": len(current),
               "updatedReplicas": len(current), "readyReplicas": ready, "availableReplicas": ready,
               "unavailableReplicas": max(want - ready, 0), "conditions": conditions}
        if new != old:
            self.api.merge(deploy_path(ns, name) + "/status", {"status": new})

    # ---- the loop ---------------------------------------------------------------------------

    def tick(self):
        # One read of the pods per tick: pods created by this tick start on the next one.
        pods = self.api.list("/api/v1/pods")
        for job in self.api.list("/apis/batch/v1/jobs"):
            self.sync_job(job, pods)
        for deploy in self.api.list("/apis/apps/v1/deployments"):
            self.sync_deployment(deploy, pods)
        self.sync_pods(pods)

    def shutdown(self):
        for key in list(self.containers):
            self.kill(key)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True, help="the API server (emulator) URL")
    parser.add_argument("--state", required=True, help="folder for the pods' logs and files")
    parser.add_argument("--bin", action="append", default=[],
                        help="NAME=PATH: the local binary that a container command NAME runs")
    args = parser.parse_args()
    binaries = dict(b.split("=", 1) for b in args.bin)
    net = podnet.PodNetwork()
    agent = Agent(Api(args.server), args.state, binaries, net)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    log("running", server=args.server)
    try:
        while not stop:
            try:
                agent.tick()
            except (RuntimeError, OSError, urllib.error.URLError) as e:
                log("tick failed", error=e)
            time.sleep(POLL)
    finally:
        agent.shutdown()
        log("stopped")


if __name__ == "__main__":
    main()
