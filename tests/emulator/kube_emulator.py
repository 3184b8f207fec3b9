"""A stateful Kubernetes API emulator for tests, on 127.0.0.1.

kmock (PyPI) provides the HTTP server, request parsing (group/version/plural/namespace/name/
subresource), API discovery of the built-in resources and Status error bodies. This shim adds
what kube-runtime's watcher, the kubeswift operator and kubectl need from a real apiserver:

- resourceVersion (one global counter), uid, creationTimestamp and generation stamping;
- NotFound / AlreadyExists / Conflict reasons with the right codes;
- create (POST), get, list with label and field selectors, replace (PUT, optimistic
  concurrency on resourceVersion), JSON merge / JSON patch / strategic merge (as merge) and
  server-side apply (create-or-merge), and the status subresource (spec writes ignore status,
  status writes ignore the rest);
- watches from a resourceVersion, with label selectors, ending at timeoutSeconds;
- deletion with finalizers, and owner-reference garbage collection (background and
  foreground: a foreground-deleted owner stays, with a deletionTimestamp, until its
  dependents are gone);
- CustomResourceDefinitions: creating one registers its resource for discovery and CRUD;
- `kubectl get` tables (Accept: as=Table) for resources with additionalPrinterColumns, as the
  apiserver's CRD table convertor builds them (simple `.a.b.c` JSON paths, dates as ages).

What it does not do: admission (no OpenAPI or CEL validation, no defaulting), field
ownership in server-side apply, a scheduler, a kubelet or a Job controller. Tests play the
missing controllers by writing Job and Pod status.

Run: python kube_emulator.py [--host 127.0.0.1] --port 0 --port-file PATH
     (prints the URL, writes the port)
"""

import argparse
import asyncio
import copy
import datetime
import json
import re
import uuid

import aiohttp.web
import jsonpatch
import kmock


def now_rfc3339():
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code, reason, message, details=None):
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
        "details": details or {},
    }


class ApiError(Exception):
    def __init__(self, code, reason, message):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_merge(target, applied):
    """Server-side apply without field ownership: maps merge, lists and scalars replace."""
    if not isinstance(applied, dict) or not isinstance(target, dict):
        return copy.deepcopy(applied)
    result = copy.deepcopy(target)
    for key, value in applied.items():
        result[key] = apply_merge(result.get(key), value)
    return result


def json_path(obj, path):
    """A printer column's `.a.b.c` path; None (an empty cell) where a step is missing."""
    for step in [s for s in path.split(".") if s]:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(step)
    return obj


def age(timestamp):
    """An RFC 3339 time as kubectl shows ages: 12s, 5m, 3h, 2d."""
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    seconds = int((datetime.datetime.now(tz=datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def parse_label_selector(text):
    """Equality-based and set-based label selectors: a=b, a!=b, a, !a, a in (x,y), a notin (x)."""
    terms = []
    for part in re.findall(r"[^,(]+(?:\([^)]*\))?", text or ""):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^(\S+)\s+(in|notin)\s+\((.*)\)$", part)
        if m:
            values = {v.strip() for v in m.group(3).split(",") if v.strip()}
            terms.append((m.group(1), m.group(2), values))
        elif "!=" in part:
            k, v = part.split("!=", 1)
            terms.append((k.strip(), "!=", v.strip()))
        elif "==" in part:
            k, v = part.split("==", 1)
            terms.append((k.strip(), "=", v.strip()))
        elif "=" in part:
            k, v = part.split("=", 1)
            terms.append((k.strip(), "=", v.strip()))
        elif part.startswith("!"):
            terms.append((part[1:].strip(), "!exists", None))
        else:
            terms.append((part, "exists", None))
    return terms


def labels_match(obj, terms):
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for key, op, value in terms:
        have = labels.get(key)
        if op == "=" and have != value:
            return False
        if op == "!=" and have == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!exists" and key in labels:
            return False
        if op == "in" and have not in value:
            return False
        if op == "notin" and have in value:
            return False
    return True


def fields_match(obj, selector):
    for part in filter(None, (selector or "").split(",")):
        negate = "!=" in part
        key, value = re.split(r"!?==?", part, maxsplit=1)
        node = obj
        for p in key.strip().split("."):
            node = node.get(p) if isinstance(node, dict) else None
        if (str(node) == value.strip()) == negate:
            return False
    return True


class Resource:
    def __init__(self, group, version, plural, kind, namespaced=True, has_status=True):
        self.group, self.version, self.plural, self.kind = group, version, plural, kind
        self.namespaced, self.has_status = namespaced, has_status

    @property
    def api_version(self):
        return f"{self.group}/{self.version}" if self.group else self.version


# Built-ins the operator and the tests use; everything else comes from CRDs.
BUILTINS = [
    Resource("", "v1", "pods", "Pod"),
    Resource("", "v1", "services", "Service"),
    Resource("", "v1", "secrets", "Secret", has_status=False),
    Resource("", "v1", "configmaps", "ConfigMap", has_status=False),
    Resource("", "v1", "namespaces", "Namespace", namespaced=False),
    Resource("", "v1", "events", "Event", has_status=False),
    Resource("batch", "v1", "jobs", "Job"),
    Resource("apps", "v1", "deployments", "Deployment"),
    Resource("events.k8s.io", "v1", "events", "Event", has_status=False),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", has_status=False),
    Resource("scheduling.volcano.sh", "v1beta1", "podgroups", "PodGroup"),
    Resource("scheduling.x-k8s.io", "v1alpha1", "podgroups", "PodGroup"),
    Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions",
             "CustomResourceDefinition", namespaced=False),
]


class Emulator(kmock.KubernetesScaffold):
    """kmock's scaffold (server, parsing, discovery) with a stateful store in front."""

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self.registry = {}
        self.store = {}  # (group, plural) -> {(namespace, name): obj}
        self.printer_columns = {}  # (group, plural) -> a CRD version's additionalPrinterColumns
        self.history = []  # (rv, (group, plural), type, obj)
        self.rv = 0
        self.changed = asyncio.Condition()
        for r in BUILTINS:
            self.register(r)

    def register(self, r, short_names=()):
        self.registry[(r.group, r.version, r.plural)] = r
        self.store.setdefault((r.group, r.plural), {})
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        sub = ["status"] if r.has_status else []
        key = f"{r.group}/{r.version}/{r.plural}" if r.group else f"v1/{r.plural}"
        self.resources[key] = kmock.ResourceInfo(
            kind=r.kind, namespaced=r.namespaced, verbs=verbs, subresources=sub,
            singular=r.kind.lower(), shortnames=list(short_names))

    # ---- the store ------------------------------------------------------------------------

    def bump(self):
        self.rv += 1
        return str(self.rv)

    async def emit(self, r, type_, obj):
        self.history.append((self.rv, (r.group, r.plural), type_, copy.deepcopy(obj)))
        async with self.changed:
            self.changed.notify_all()

    def table(self, r):
        return self.store[(r.group, r.plural)]

    def get(self, r, ns, name):
        obj = self.table(r).get((ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{r.plural}.{r.group} "{name}" not found'.replace(". ", " "))
        return obj

    async def create(self, r, ns, body):
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if r.namespaced:
            meta["namespace"] = ns or meta.get("namespace") or "default"
        key = (meta.get("namespace") if r.namespaced else None, name)
        if key in self.table(r):
            raise ApiError(409, "AlreadyExists", f'{r.plural} "{name}" already exists')
        body["apiVersion"], body["kind"] = r.api_version, r.kind
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        meta.pop("deletionTimestamp", None)
        meta["resourceVersion"] = self.bump()
        self.table(r)[key] = body
        if r.plural == "customresourcedefinitions":
            self.register_crd(body)
        await self.emit(r, "ADDED", body)
        return body

    def register_crd(self, crd):
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        for v in spec.get("versions", []):
            if v.get("additionalPrinterColumns"):
                self.printer_columns[(spec.get("group"), names.get("plural"))] = v["additionalPrinterColumns"]
            self.register(
                Resource(spec.get("group"), v.get("name"), names.get("plural"), names.get("kind"),
                         namespaced=spec.get("scope") == "Namespaced",
                         has_status="status" in (v.get("subresources") or {})),
                short_names=names.get("shortNames") or [])

    async def update(self, r, ns, name, new, subresource, expected_rv=None):
        """Stores `new` as the object's next state (status/spec split as the apiserver does)."""
        old = self.get(r, ns, name)
        if expected_rv and expected_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict",
                           f'Operation cannot be fulfilled on {r.plural} "{name}": '
                           "the object has been modified; please apply your changes to the latest version")
        new = copy.deepcopy(new)
        if subresource == "status":
            merged = copy.deepcopy(old)
            merged["status"] = new.get("status")
            if merged["status"] is None:
                merged.pop("status")
            new = merged
        else:
            if r.has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            keep = ("uid", "creationTimestamp", "generation", "namespace", "name", "deletionTimestamp")
            new.setdefault("metadata", {})
            for k in keep:
                if k in old["metadata"]:
                    new["metadata"][k] = old["metadata"][k]
        new["apiVersion"], new["kind"] = r.api_version, r.kind
        strip = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}
        bare = lambda o: {**o, "metadata": {k: v for k, v in o["metadata"].items()
                                            if k not in ("resourceVersion", "managedFields")}}
        if bare(new) == bare(old):
            return old  # a no-op write changes nothing, as in a real apiserver
        if strip(new) != strip(old):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = self.bump()
        self.table(r)[(ns, name)] = new
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self.remove(r, ns, name)
            return new
        await self.emit(r, "MODIFIED", new)
        return new

    async def remove(self, r, ns, name):
        obj = self.table(r).pop((ns, name), None)
        if obj is None:
            return
        obj["metadata"]["resourceVersion"] = self.bump()
        await self.emit(r, "DELETED", obj)
        await self.collect_dependents(obj["metadata"]["uid"])

    def dependents(self, uid):
        for (group, plural), objs in self.store.items():
            for (ns, name), obj in list(objs.items()):
                owners = obj.get("metadata", {}).get("ownerReferences") or []
                if any(o.get("uid") == uid for o in owners):
                    r = next(x for x in self.registry.values() if (x.group, x.plural) == (group, plural))
                    yield r, ns, name

    async def collect_dependents(self, uid):
        for r, ns, name in list(self.dependents(uid)):
            await self.delete(r, ns, name, "Background")

    async def delete(self, r, ns, name, propagation):
        obj = self.get(r, ns, name)
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return obj
        if meta.get("finalizers") or (propagation == "Foreground" and any(self.dependents(meta["uid"]))):
            meta["deletionTimestamp"] = now_rfc3339()
            meta["resourceVersion"] = self.bump()
            await self.emit(r, "MODIFIED", obj)
            if propagation == "Foreground" and not meta.get("finalizers"):
                # The garbage collector deletes the dependents first, then the owner.
                asyncio.get_running_loop().create_task(self.finish_foreground(r, ns, name, meta["uid"]))
            return obj
        await self.remove(r, ns, name)
        return obj

    async def finish_foreground(self, r, ns, name, uid):
        await asyncio.sleep(0.3)
        await self.collect_dependents(uid)
        await asyncio.sleep(0.2)
        # Dependents with finalizers (a kubelet stopping a pod) go when those are removed.
        while any(self.dependents(uid)):
            await asyncio.sleep(0.2)
        if (ns, name) in self.table(r) and self.table(r)[(ns, name)]["metadata"]["uid"] == uid:
            await self.remove(r, ns, name)

    # ---- HTTP -----------------------------------------------------------------------------

    async def _handle(self, request):
        raw = request._raw_request
        path = raw.path
        if path.startswith("/openapi"):
            return aiohttp.web.json_response(status_body(404, "NotFound", "no OpenAPI here"), status=404)
        if path.split("?")[0].rstrip("/") == "/api/v1":
            return aiohttp.web.json_response(self.core_discovery())
        p = kmock._internal.parsing.parse_path(path)
        r = self.registry.get((p.group, p.version, p.plural)) if p.group is not None else None
        if r is None or p.plural is None:
            return await super()._handle(request)
        try:
            return await self.serve(request, raw, r, p)
        except ApiError as e:
            return aiohttp.web.json_response(status_body(e.code, e.reason, e.message), status=e.code)

    def core_discovery(self):
        """The core group's resource list. kmock's says groupVersion "/v1", which kubectl cannot
        map (Secrets, Pods: "no matches for kind"); the apiserver says "v1"."""
        resources = []
        for r in self.registry.values():
            if r.group:
                continue
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            resources.append({"name": r.plural, "singularName": r.kind.lower(), "kind": r.kind,
                              "namespaced": r.namespaced, "verbs": verbs})
            if r.has_status:
                resources.append({"name": f"{r.plural}/status", "singularName": "", "kind": r.kind,
                                  "namespaced": r.namespaced, "verbs": ["get", "patch", "update"]})
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": resources}

    def body(self, request):
        if request.data is not None and not isinstance(request.data, (bytes, str)):
            return copy.deepcopy(request.data)
        text = request.text or ""
        if not text.strip():
            return {}
        try:
            return json.loads(text)
        except ValueError:
            import yaml  # server-side apply may send YAML
            return yaml.safe_load(text)

    async def serve(self, request, raw, r, p):
        method, q = raw.method, raw.query
        ns = p.namespace if r.namespaced else None
        if method == "GET" and q.get("watch") in ("true", "1"):
            return await self.watch(raw, r, p, q)
        if method == "GET" and p.name is None:
            items = [o for (ons, _), o in sorted(self.table(r).items())
                     if (ns is None or ons == ns)
                     and labels_match(o, parse_label_selector(q.get("labelSelector")))
                     and fields_match(o, q.get("fieldSelector"))]
            if self.wants_table(raw, r):
                return aiohttp.web.json_response(self.to_table(r, items))
            return aiohttp.web.json_response({
                "apiVersion": r.api_version, "kind": r.kind + "List",
                "metadata": {"resourceVersion": str(self.rv)}, "items": items})
        if method == "GET":
            if self.wants_table(raw, r):
                return aiohttp.web.json_response(self.to_table(r, [self.get(r, ns, p.name)]))
            return aiohttp.web.json_response(self.get(r, ns, p.name))
        if method == "POST":
            return aiohttp.web.json_response(await self.create(r, ns, self.body(request)), status=201)
        if method == "PUT":
            body = self.body(request)
            expected = (body.get("metadata") or {}).get("resourceVersion")
            return aiohttp.web.json_response(await self.update(r, ns, p.name, body, p.subresource, expected))
        if method == "PATCH":
            return await self.patch(request, raw, r, ns, p)
        if method == "DELETE":
            options = self.body(request) if request.text else {}
            propagation = q.get("propagationPolicy") or options.get("propagationPolicy") or "Background"
            return aiohttp.web.json_response(await self.delete(r, ns, p.name, propagation))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    def wants_table(self, raw, r):
        return "as=Table" in (raw.headers.get("Accept") or "") and (r.group, r.plural) in self.printer_columns

    def to_table(self, r, items):
        """A meta.k8s.io/v1 Table: Name, then the printer columns (what `kubectl get` shows)."""
        columns = self.printer_columns[(r.group, r.plural)]
        rows = []
        for obj in items:
            cells = [obj["metadata"]["name"]]
            for c in columns:
                value = json_path(obj, c.get("jsonPath", ""))
                if c.get("type") == "date" and isinstance(value, str):
                    value = age(value)
                cells.append(value)
            rows.append({"cells": cells, "object": {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"]}})
        return {
            "kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(self.rv)},
            "columnDefinitions": [{"name": "Name", "type": "string", "format": "name"}]
            + [{"name": c["name"], "type": c.get("type", "string"),
                "description": c.get("description", ""), "priority": c.get("priority", 0)}
               for c in columns],
            "rows": rows,
        }

    async def patch(self, request, raw, r, ns, p):
        ctype = (raw.headers.get("Content-Type") or "").split(";")[0].strip()
        body = self.body(request)
        if ctype == "application/apply-patch+yaml":
            if (ns, p.name) not in self.table(r):
                if p.subresource:
                    raise ApiError(404, "NotFound", f'{r.plural} "{p.name}" not found')
                body.setdefault("metadata", {})["name"] = p.name
                return aiohttp.web.json_response(await self.create(r, ns, body), status=201)
            new = apply_merge(self.get(r, ns, p.name), body)
        elif ctype == "application/json-patch+json":
            new = jsonpatch.apply_patch(self.get(r, ns, p.name), body)
        else:  # merge-patch and strategic-merge-patch (lists replace: fine for our writers)
            new = merge_patch(self.get(r, ns, p.name), body)
        return aiohttp.web.json_response(await self.update(r, ns, p.name, new, p.subresource))

    async def watch(self, raw, r, p, q):
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        ns = p.namespace if r.namespaced else None
        terms = parse_label_selector(q.get("labelSelector"))
        since = int(q.get("resourceVersion") or 0)
        timeout = float(q.get("timeoutSeconds") or 290)
        deadline = asyncio.get_running_loop().time() + timeout
        if since == 0:
            # A watch without a version starts with the current state, as ADDED events.
            for (ons, _), obj in sorted(self.table(r).items()):
                if (ns is None or ons == ns) and labels_match(obj, terms):
                    await response.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            since = self.rv
        sent = since
        try:
            while True:
                for rv, key, type_, obj in self.history:
                    if rv <= sent or key != (r.group, r.plural):
                        continue
                    sent = rv
                    if ns is not None and obj["metadata"].get("namespace") != ns:
                        continue
                    if not labels_match(obj, terms) or not fields_match(obj, q.get("fieldSelector")):
                        continue
                    await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")
                sent = max(sent, self.rv)
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                async with self.changed:
                    try:
                        await asyncio.wait_for(self.changed.wait(), timeout=min(left, 5))
                    except TimeoutError:
                        pass
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        await response.write_eof()
        return response


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (the end-to-end tests use their pod network's gateway)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="stop when standard input closes (the test process that started us died)")
    args = parser.parse_args()
    async with Emulator() as handler, kmock.Server(handler, host=args.host, port=args.port) as server:
        url = f"http://{args.host}:{server.port}"
        if args.port_file:
            with open(args.port_file + ".tmp", "w") as f:
                f.write(str(server.port))
            import os
            os.replace(args.port_file + ".tmp", args.port_file)
        print(url, flush=True)
        if args.exit_on_stdin_eof:
            import sys
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, sys.stdin.read)
        else:
            await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
